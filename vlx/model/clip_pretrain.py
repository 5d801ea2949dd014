"""Pre-train the `smol` preset's CLIP vision tower on synthetic image/caption pairs.

    from vlx.model import smol
    smol.vision_dir()   # runs `pretrain` once (a few minutes on 2 CPU cores) and caches the tower

No pretrained CLIP can be had offline, so the tower is trained here from scratch with CLIP's own
contrastive objective (`transformers.CLIPModel(return_loss=True)`): a small `CLIPVisionModel` and a
small character-level `CLIPTextModel` learn jointly to match images with their captions. The data
are `vlx.data.synth`'s shape scenes (colours, shapes, positions, counts, a rendered word) and street
scenes (business name, category cues, house number, street sign, phone), drawn with seeds of their
own so that no pre-training image is one of the demo's evaluation images.

Characters, not word pieces, feed the text tower: to tell "Golden Fox Bakery" from "Golden Fox
Bookshop" in a batch, the image tower has to see the letters on the sign, which is the skill the
POI extraction needs. Only the vision tower is kept: during the LLaVA stages it is frozen and
its second-to-last layer feeds the projector, as in LLaVA-1.5.

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
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPVisionModel,
    get_cosine_schedule_with_warmup,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from vlx.device import device as pick_device, resolve_precision

FORMAT_VERSION = 1
"""Bump when the data, tokenizer or loop change: the cache key changes with it."""

# EOS is not 2: CLIPTextModel treats eos_token_id == 2 as a legacy config and pools at the largest id.
PAD, BOS, UNK, EOS = 0, 1, 2, 3
_CHARS = [chr(c) for c in range(32, 127)]
_CHAR_ID = {c: i + 4 for i, c in enumerate(_CHARS)}
VOCAB_SIZE = len(_CHARS) + 4

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
    text_layers: int = 3
    text_max_length: int = 96
    """Characters per caption, BOS and EOS included; longer captions are cut."""
    projection_dim: int = 256
    n_poi: int = 600
    """Street scenes in the training pool (each about 70 ms to draw)."""
    n_shapes: int = 1200
    """Shape scenes in the training pool."""
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
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision={self.precision!r}: use auto, bf16 or fp32")
        if self.n_poi + self.n_shapes < self.batch_size:
            raise ValueError(f"n_poi + n_shapes ({self.n_poi + self.n_shapes}) must be at least batch_size "
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


def clip_config(cfg: PretrainConfig) -> CLIPConfig:
    return CLIPConfig(
        text_config=dict(vocab_size=VOCAB_SIZE, hidden_size=cfg.text_hidden_size,
                         intermediate_size=4 * cfg.text_hidden_size, num_hidden_layers=cfg.text_layers,
                         num_attention_heads=max(1, cfg.text_hidden_size // 64),
                         max_position_embeddings=cfg.text_max_length,
                         pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS),
        vision_config=dict(image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=cfg.hidden_size,
                           intermediate_size=4 * cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                           num_attention_heads=cfg.num_heads, projection_dim=cfg.projection_dim),
        projection_dim=cfg.projection_dim,
    )


def tokenize(texts: list[str], max_length: int) -> torch.Tensor:
    """Characters -> ids `[BOS, c1, ..., EOS, PAD...]` of shape (len(texts), max_length)."""
    ids = torch.full((len(texts), max_length), PAD, dtype=torch.long)
    for row, text in enumerate(texts):
        chars = [_CHAR_ID.get(c, UNK) for c in text[: max_length - 2]]
        ids[row, : len(chars) + 2] = torch.tensor([BOS, *chars, EOS])
    return ids


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


def _normalise(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).float().div_(255.0)
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# --- evaluation ------------------------------------------------------------------------------


@torch.no_grad()
def retrieval(model: CLIPModel, images: np.ndarray, texts: list[str], cfg: PretrainConfig) -> dict[str, float]:
    """Top-1 image->text and text->image accuracy of matched pairs (row i of each belongs together)."""
    model.eval()
    img = torch.cat([model.get_image_features(pixel_values=_normalise(images[i:i + 64])).pooler_output
                     for i in range(0, len(images), 64)])
    txt = torch.cat([model.get_text_features(input_ids=tokenize(texts[i:i + 64], cfg.text_max_length)).pooler_output
                     for i in range(0, len(texts), 64)])
    sim = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    truth = torch.arange(len(texts))
    return {"image_to_text": (sim.argmax(1) == truth).float().mean().item(),
            "text_to_image": (sim.argmax(0) == truth).float().mean().item()}


def evaluate(model: CLIPModel, cfg: PretrainConfig, held_out) -> dict[str, float]:
    """Zero-shot retrieval on held-out pairs: full POI captions, business names alone, shape captions."""
    images, captions, kinds = held_out
    poi = [i for i, k in enumerate(kinds) if k == "poi" and captions[i][0] != poi_captions({"pois": []})[0]]
    shapes = [i for i, k in enumerate(kinds) if k == "shapes"]
    out = {}
    for name, idx, variant in (("poi", poi, 0), ("poi_name", poi, 1), ("shapes", shapes, 0)):
        if len(idx) < 2:
            continue
        scores = retrieval(model, images[idx], [captions[i][variant] for i in idx], cfg)
        out.update({f"{name}_{k}": round(v, 4) for k, v in scores.items()})
        out[f"{name}_n"] = len(idx)
    return out


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
        task = bar.add_task("smol-clip: drawing pairs", total=cfg.n_poi + cfg.n_shapes + 2 * cfg.n_eval, info="")
        tick = lambda: bar.advance(task)  # noqa: E731
        images, captions, _ = synth_pairs(cfg.n_poi, cfg.n_shapes, cfg.data_seed, cfg.image_size, tick)
        held_out = synth_pairs(cfg.n_eval, cfg.n_eval, cfg.eval_seed, cfg.image_size, tick)
        t_data = time.perf_counter() - t0
        log.info("smol-clip: %d training and %d held-out pairs drawn in %.0f s", len(images), len(held_out[0]), t_data)

        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        model = CLIPModel(clip_config(cfg)).to(device)
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
            pixels = _normalise(images[idx.numpy()]).to(device)  # (B, 3, S, S)
            ids = tokenize(texts, cfg.text_max_length).to(device)  # (B, T)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = model(input_ids=ids, pixel_values=pixels, return_loss=True).loss
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
        scores = evaluate(model, cfg, held_out)

    tower = CLIPVisionModel(model.config.vision_config)
    tower.load_state_dict(model.vision_model.state_dict())
    tower.save_pretrained(out)
    size = {"height": cfg.image_size, "width": cfg.image_size}
    CLIPImageProcessor(size={"shortest_edge": cfg.image_size}, crop_size=size, image_mean=list(OPENAI_CLIP_MEAN),
                       image_std=list(OPENAI_CLIP_STD), do_center_crop=True, resample=3).save_pretrained(out)
    metrics = {"retrieval": scores, "loss": losses, "chance": round(1 / cfg.n_eval, 4),
               "seconds": {"data": round(t_data, 1), "train": round(t_train, 1)},
               "precision": "bf16" if amp is not None else "fp32", "config": dataclasses.asdict(cfg)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return {k: metrics[k] for k in ("retrieval", "chance", "seconds", "precision")}
