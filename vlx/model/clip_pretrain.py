"""Pre-train the `smol` preset's CLIP vision tower on synthetic image/caption pairs.

    from vlx.model import smol
    smol.vision_dir()   # runs `pretrain` once (a few minutes on 2 CPU cores) and caches the tower

No pretrained CLIP can be had offline, so the tower is trained here from scratch with CLIP's
contrastive objective (`image_text_contrastive_loss`, the loss of `transformers.CLIPModel`): a small
`CLIPVisionModel` learns to match images with their captions, encoded as bags of words. The data
are `vlx.data.synth`'s shape scenes (colours, shapes, positions, counts, a rendered word) and street
scenes (business name, category cues, house number, street sign), drawn with seeds of their own so
that no pre-training image is one of the demo's evaluation images.

Captions stress what extraction reads: business names (to tell "Golden Fox Bakery" from "Golden
Fox Bookshop" in a batch, the tower has to see the letters on the sign), categories and house
numbers digit by digit. Only the vision tower is kept: during the LLaVA stages it is frozen and
its second-to-last layer feeds the projector, as in LLaVA-1.5.

What the default configuration reaches (held-out pairs, `metrics.json` of the cache entry; about
8 minutes on a busy 2-core CPU, 3-4 on an idle one): shape captions retrieved top-1 among 100 in
15% (image->text) and 22% (text->image) of cases, chance 1%. Street scenes stay at chance: top-1
among 85 full captions 2%, by business name alone 0-2%, zero-shot category 2% (majority class
15%). Reading names and telling categories apart is therefore left to the LLaVA stages, which
learn it from the frozen tower's patch features; a longer schedule (more `steps`, `n_poi`,
`n_signs`) is the lever when time allows.

Images are padded to a square with the CLIP mean colour and resized with bicubic filtering: the
preprocessing `LlavaImageProcessor(do_pad=True)` applies downstream, so the tower is trained on the
pixels it will see.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, get_cosine_schedule_with_warmup
from transformers.models.clip.modeling_clip import image_text_contrastive_loss
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from vlx.device import device as pick_device, resolve_precision

FORMAT_VERSION = 2
"""Bump when the data, tokenizer or loop change: the cache key changes with it."""

UNK = 0
"""Word id of words outside the training captions' vocabulary."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    image_size: int = 168
    """Input pixels per side: 168 / 14 = 12 x 12 = 144 image tokens in the LLM (ViT-L/14-336: 576)."""
    patch_size: int = 14
    hidden_size: int = 256
    """Vision width (ViT-L: 1024)."""
    num_layers: int = 4
    """Vision depth (ViT-L: 24); LLaVA reads the second-to-last layer."""
    num_heads: int = 4
    text_hidden_size: int = 256
    """Width of the caption encoder's word embeddings."""
    projection_dim: int = 256
    n_poi: int = 600
    """Street scenes in the training pool (each about 70 ms to draw)."""
    n_shapes: int = 1200
    """Shape scenes in the training pool."""
    n_signs: int = 0
    """Close-up shop signs (a business name and a house number) in the training pool, cheap to draw
    (about 5 ms). Off by default: at 120 steps, 2400 of them dragged the training loss (3.5 vs 2.0)
    and held-out shape retrieval (4% vs 15%) down; reading needs a longer schedule than the budget."""
    min_zoom: float = 1.0
    """Augmentation: each training image is a random square crop of this fraction of the side or
    more, resized back (zoom in and shift; never flipped, which would mirror text). 1.0: off, the
    setting measured best within the budget."""
    steps: int = 120
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.1
    weight_decay: float = 0.1
    precision: str = "auto"
    """`auto` (bf16 autocast where the hardware has it, `vlx.device`), `bf16` or `fp32`."""
    n_eval: int = 100
    """Held-out pairs per retrieval test (chance is 1 / n_eval)."""
    seed: int = 0

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        if not 0 < self.min_zoom <= 1:
            raise ValueError(f"min_zoom={self.min_zoom}: must be in (0, 1]")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision={self.precision!r}: use auto, bf16 or fp32")
        if self.n_poi + self.n_shapes + self.n_signs < self.batch_size:
            raise ValueError(f"n_poi + n_shapes + n_signs ({self.n_poi + self.n_shapes + self.n_signs}) must be at "
                             f"least batch_size "
                             f"({self.batch_size}): a contrastive batch needs distinct pairs")

    def digest(self) -> str:
        blob = json.dumps({"format": FORMAT_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def data_seed(self) -> int:
        # Far from the small seeds demos and tests use for their own synthetic sets.
        return 1_000_003 + 2 * self.seed

    @property
    def eval_seed(self) -> int:
        return 1_000_003 + 2 * self.seed + 1


def vision_config(cfg: PretrainConfig) -> CLIPVisionConfig:
    return CLIPVisionConfig(image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=cfg.hidden_size,
                            intermediate_size=4 * cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                            num_attention_heads=cfg.num_heads, projection_dim=cfg.projection_dim)


def words(text: str) -> list[str]:
    """Lower-case words; a number becomes its length and one token per digit and place.

    `"No. 42b"` -> `["no", "#2", "0:4", "1:2", "b"]`: a house number the pool never showed still
    has known tokens, and the tower is asked to read each digit, not to memorise numbers.
    """
    out = []
    for token in re.findall(r"[a-z]+|[0-9]+", text.lower()):
        if token.isdigit():
            out += [f"#{len(token)}", *(f"{i}:{d}" for i, d in enumerate(token))]
        else:
            out.append(token)
    return out


def build_vocab(captions: list[list[str]]) -> dict[str, int]:
    """Every word of the training captions, sorted (so the ids do not depend on pool order)."""
    seen = sorted({w for variants in captions for text in variants for w in words(text)})
    return {w: i + 1 for i, w in enumerate(seen)}


def bag(texts: list[str], vocab: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (word ids, offsets) for `nn.EmbeddingBag`: one bag per text."""
    ids, offsets = [], []
    for text in texts:
        offsets.append(len(ids))
        ids += [vocab.get(w, UNK) for w in words(text)] or [UNK]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


class DualEncoder(nn.Module):
    """CLIP's two towers and loss, with a bag-of-words caption encoder.

    The image side is a standard `CLIPVisionModel` (pooled CLS -> `visual_projection`), the part
    that is kept. The caption side is a mean of word embeddings: with a few thousand pairs and a few
    minutes of CPU, a text transformer trained from scratch learned too slowly to give the image
    tower a useful target (retrieval at chance after 120 steps), while word bags make each caption
    a distinct target from the first step. Loss: `image_text_contrastive_loss`, as `CLIPModel`.
    """

    def __init__(self, cfg: PretrainConfig, vocab_size: int):
        super().__init__()
        self.vision = CLIPVisionModel(vision_config(cfg))
        self.visual_projection = nn.Linear(cfg.hidden_size, cfg.projection_dim, bias=False)
        self.text = nn.EmbeddingBag(vocab_size, cfg.text_hidden_size, mode="mean")
        self.text_projection = nn.Linear(cfg.text_hidden_size, cfg.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        emb = self.visual_projection(self.vision(pixel_values=pixels).pooler_output)  # (B, P)
        return nn.functional.normalize(emb, dim=-1)

    def text_features(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        emb = self.text_projection(self.text(ids, offsets))  # (B, P)
        return nn.functional.normalize(emb, dim=-1)

    def forward(self, pixels, ids, offsets) -> torch.Tensor:
        logits_per_text = self.logit_scale.exp() * self.text_features(ids, offsets) @ self.image_features(pixels).T
        return image_text_contrastive_loss(logits_per_text.float())


# --- data ------------------------------------------------------------------------------------


def _category_words(category: str) -> str:
    return category.replace("_", " ")


def poi_captions(target: dict) -> list[str]:
    """Caption variants for one street scene's `StreetScene` target; one is drawn per use.

    The variants stress what extraction reads: the full description, the business name alone, the
    name with its house number, and the category with the house number.
    """
    pois = target["pois"]
    if not pois:
        return ["a residential street with no shops", "houses on a street, no storefront"]

    def describe(p: dict, name: bool = True, number: bool = True, category: bool = True) -> str:
        parts = []
        if category:
            parts.append(f"a {_category_words(p['category'])}")
        if name:
            parts.append(f'"{p["name"]}"' if category else p["name"])
        if number and p["address"]["house_number"]:
            parts.append(f"no. {p['address']['house_number']}")
        return " ".join(parts)

    street = pois[0]["address"]["street"]
    full = " and ".join(describe(p) for p in pois) + (f" on {street}" if street else "")
    variants = [full, " and ".join(p["name"] for p in pois), " and ".join(describe(p, category=False) for p in pois)]
    if any(p["address"]["house_number"] for p in pois):
        variants.append(" and ".join(describe(p, name=False) for p in pois))
    return variants


def _square(img: Image.Image, size: int) -> np.ndarray:
    """LLaVA-1.5's `pad` preprocessing up to normalisation -> uint8 (3, size, size)."""
    img = img.convert("RGB")
    w, h = img.size
    if w != h:
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), tuple(int(m * 255) for m in OPENAI_CLIP_MEAN))
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        img = canvas
    img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


def synth_pairs(n_poi: int, n_shapes: int, seed: int, image_size: int, progress=None):
    """-> (uint8 images (N, 3, S, S), caption variants per image, kind per image), drawn by `vlx.data.synth`."""
    from vlx.data import synth

    images, captions, kinds = [], [], []
    with tempfile.TemporaryDirectory(prefix="vlx-clip-data-") as tmp:
        if n_poi:
            splits = synth.synth_poi(Path(tmp, "poi"), n_poi, seed=seed, splits=(1.0, 0.0, 0.0), progress=progress)
            for line in splits["train"].read_text().splitlines():
                row = json.loads(line)
                with Image.open(Path(tmp, "poi", row["image"])) as img:
                    images.append(_square(img, image_size))
                captions.append(poi_captions(row["target"]))
                kinds.append("poi")
        if n_shapes:
            rows = json.loads(synth.synth_captions(Path(tmp, "shapes"), n_shapes, seed=seed, progress=progress)
                              .read_text())
            for row in rows:
                with Image.open(Path(tmp, "shapes", row["image"])) as img:
                    images.append(_square(img, image_size))
                captions.append([row["conversations"][1]["value"]])
                kinds.append("shapes")
    return np.stack(images), captions, kinds


def _zoom(pixels: torch.Tensor, min_zoom: float, gen: torch.Generator) -> torch.Tensor:
    """Random crop-and-resize of each image in (B, 3, S, S): side `min_zoom`..1 of the original."""
    b = pixels.shape[0]
    scale = min_zoom + (1 - min_zoom) * torch.rand(b, generator=gen)
    shift = (1 - scale) * (2 * torch.rand(2, b, generator=gen) - 1)  # keeps the crop inside the image
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale, scale
    theta[:, 0, 2], theta[:, 1, 2] = shift[0], shift[1]
    grid = nn.functional.affine_grid(theta, list(pixels.shape), align_corners=False)
    return nn.functional.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)


def sign_pairs(n: int, seed: int, image_size: int, progress=None):
    """Close-up shop signs in `vlx.data.synth`'s lexicon and colours -> (images, caption variants, kinds).

    Drawn at 336 px (synth's size) and resized like the street scenes, so text sizes match theirs.
    """
    from PIL import ImageDraw, ImageFont

    from vlx.data import synth

    S = 336
    images, captions = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, 7, i])
        pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
        word = pick(synth.CATEGORIES[pick(list(synth.CATEGORIES))][0])
        adj, noun, person = pick(synth.ADJECTIVES), pick(synth.NOUNS), pick(synth.PEOPLE)
        name = pick([f"{adj} {noun}", f"{adj} {noun} {word}", f"{person}'s {word}", f"The {noun} {word}",
                     f"{noun} & {pick(synth.NOUNS)}", f"{word} {person}"])
        name = name.upper() if rng.random() < 0.2 else name
        number = str(int(rng.integers(1, 400)))
        img = Image.new("RGB", (S, S), tuple(int(c) for c in pick(synth.WALL_COLOURS)))
        draw = ImageDraw.Draw(img)
        sign = tuple(int(c) for c in pick(synth.SIGN_COLOURS))
        ink = (20, 20, 20) if sum(sign) > 380 else (245, 245, 240)
        size = int(rng.integers(16, 44))
        font = ImageFont.load_default(size=size)
        while size > 12 and draw.textlength(name, font=font) > S * 0.9:
            size -= 2
            font = ImageFont.load_default(size=size)
        w = draw.textlength(name, font=font)
        x = rng.uniform(S * 0.04, max(S * 0.05, S * 0.96 - w))
        y = rng.uniform(S * 0.05, S * 0.6)
        draw.rectangle((x - 8, y - 6, x + w + 8, y + size * 1.3), fill=sign)
        draw.text((x, y), name, font=font, fill=ink)
        num_font = ImageFont.load_default(size=int(rng.integers(14, 30)))
        nx, ny = rng.uniform(S * 0.05, S * 0.8), rng.uniform(S * 0.75, S * 0.88)
        draw.rectangle((nx - 4, ny - 3, nx + draw.textlength(number, font=num_font) + 4, ny + num_font.size * 1.2),
                       fill=(30, 70, 150))
        draw.text((nx, ny), number, font=num_font, fill=(245, 245, 245))
        images.append(_square(img, image_size))
        captions.append([f"{name} no. {number}", name, f"no. {number}"])
        if progress:
            progress()
    return images, captions, ["sign"] * n


def _normalise(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).float().div_(255.0)
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# --- evaluation ------------------------------------------------------------------------------


@torch.no_grad()
def retrieval(model: DualEncoder, images: np.ndarray, texts: list[str], vocab: dict[str, int]) -> dict[str, float]:
    """Top-1 image->text and text->image accuracy of matched pairs (row i of each belongs together)."""
    model.eval()
    img = torch.cat([model.image_features(_normalise(images[i:i + 64])) for i in range(0, len(images), 64)])
    txt = model.text_features(*bag(texts, vocab))
    sim = img @ txt.T  # (N images, N texts)
    truth = torch.arange(len(texts))
    return {"image_to_text": (sim.argmax(1) == truth).float().mean().item(),
            "text_to_image": (sim.argmax(0) == truth).float().mean().item()}


@torch.no_grad()
def zero_shot_category(model: DualEncoder, images: np.ndarray, categories: list[str], vocab: dict[str, int]) -> float:
    """Accuracy of picking each street scene's category among all twelve, by the text "a <category>"."""
    from vlx.data import synth

    names = list(synth.CATEGORIES)
    txt = model.text_features(*bag([f"a {_category_words(c)}" for c in names], vocab))
    img = model.image_features(_normalise(images))
    pred = (img @ txt.T).argmax(1)  # (N,)
    return (pred == torch.tensor([names.index(c) for c in categories])).float().mean().item()


def evaluate(model: DualEncoder, held_out, vocab: dict[str, int]) -> dict[str, float]:
    """Zero-shot retrieval on held-out pairs (full POI captions, business names alone, shape captions)
    and zero-shot category of single-business street scenes."""
    images, captions, kinds = held_out
    poi = [i for i, k in enumerate(kinds) if k == "poi" and captions[i][0] != poi_captions({"pois": []})[0]]
    shapes = [i for i, k in enumerate(kinds) if k == "shapes"]
    out = {}
    for name, idx, variant in (("poi", poi, 0), ("poi_name", poi, 1), ("shapes", shapes, 0)):
        if len(idx) < 2:
            continue
        scores = retrieval(model, images[idx], [captions[i][variant] for i in idx], vocab)
        out.update({f"{name}_{k}": round(v, 4) for k, v in scores.items()})
        out[f"{name}_n"] = len(idx)
    single = [i for i in poi if " and " not in captions[i][1]]
    if single:
        cats = [_caption_category(captions[i][0]) for i in single]
        out["poi_category_zero_shot"] = round(zero_shot_category(model, images[single], cats, vocab), 4)
        out["poi_category_majority"] = round(max(cats.count(c) for c in set(cats)) / len(cats), 4)
        out["poi_category_n"] = len(single)
    return out


def _caption_category(full_caption: str) -> str:
    """The category of a one-business caption from `poi_captions` ('a hair salon "..."' -> hair_salon)."""
    return full_caption[2:].split(' "')[0].replace(" ", "_")


# --- the loop --------------------------------------------------------------------------------


def pretrain(cfg: PretrainConfig, out: str | Path, *, progress: bool = True) -> dict:
    """Train CLIP on synthetic pairs; write the vision tower and its image processor to `out` -> metrics.

    `out` receives a `CLIPVisionModel` (config.json + model.safetensors), a `CLIPImageProcessor`
    config and `metrics.json` (loss curve, zero-shot retrieval on held-out pairs, timings).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    out = Path(out)
    device = torch.device(pick_device())
    amp = torch.bfloat16 if resolve_precision(cfg.precision) == "bf16" else None
    t0 = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("smol-clip: drawing pairs", total=cfg.n_poi + cfg.n_shapes + cfg.n_signs + 2 * cfg.n_eval,
                            info="")
        tick = lambda: bar.advance(task)  # noqa: E731
        images, captions, _ = synth_pairs(cfg.n_poi, cfg.n_shapes, cfg.data_seed, cfg.image_size, tick)
        if cfg.n_signs:
            signs, sign_captions, _ = sign_pairs(cfg.n_signs, cfg.data_seed, cfg.image_size, tick)
            images, captions = np.concatenate([images, np.stack(signs)]), captions + sign_captions
        held_out = synth_pairs(cfg.n_eval, cfg.n_eval, cfg.eval_seed, cfg.image_size, tick)
        t_data = time.perf_counter() - t0
        log.info("smol-clip: %d training and %d held-out pairs drawn in %.0f s", len(images), len(held_out[0]), t_data)

        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        vocab = build_vocab(captions)
        model = DualEncoder(cfg, len(vocab) + 1).to(device)
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
        rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}], lr=cfg.learning_rate, betas=(0.9, 0.98))
        sched = get_cosine_schedule_with_warmup(opt, math.ceil(cfg.warmup_ratio * cfg.steps), cfg.steps)

        bar.update(task, description="smol-clip: contrastive pre-training", completed=0, total=cfg.steps)
        losses = []
        model.train()
        for step in range(cfg.steps):
            idx = torch.randperm(len(images), generator=gen)[: cfg.batch_size]
            texts = [captions[i][int(torch.randint(len(captions[i]), (1,), generator=gen))] for i in idx.tolist()]
            pixels = _normalise(images[idx.numpy()])  # (B, 3, S, S)
            if cfg.min_zoom < 1:
                pixels = _zoom(pixels, cfg.min_zoom, gen)
            pixels = pixels.to(device)
            ids, offsets = bag(texts, vocab)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = model(pixels, ids.to(device), offsets.to(device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():  # CLIP clamps the learned temperature at 100
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(round(loss.item(), 4))
            bar.update(task, advance=1, info=f"loss {sum(losses[-10:]) / len(losses[-10:]):.3f}")
            if (step + 1) % 20 == 0 or step + 1 == cfg.steps:
                log.info("smol-clip step %d/%d loss %.4f (%.0f s)", step + 1, cfg.steps, losses[-1],
                         time.perf_counter() - t0)
        t_train = time.perf_counter() - t0 - t_data
        model = model.cpu().float()
        scores = evaluate(model, held_out, vocab)

    model.vision.save_pretrained(out)
    size = {"height": cfg.image_size, "width": cfg.image_size}
    CLIPImageProcessor(size={"shortest_edge": cfg.image_size}, crop_size=size, image_mean=list(OPENAI_CLIP_MEAN),
                       image_std=list(OPENAI_CLIP_STD), do_center_crop=True, resample=3).save_pretrained(out)
    metrics = {"retrieval": scores, "loss": losses, "chance": round(1 / cfg.n_eval, 4),
               "seconds": {"data": round(t_data, 1), "train": round(t_train, 1)},
               "precision": "bf16" if amp is not None else "fp32", "config": dataclasses.asdict(cfg)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return {k: metrics[k] for k in ("retrieval", "chance", "seconds", "precision")}
