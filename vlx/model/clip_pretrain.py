"""Pre-train the `smol` preset's CLIP vision tower on synthetic image/caption pairs.

    from vlx.model import smol
    smol.vision_dir()   # runs `pretrain` once (a few minutes on 2 CPU cores) and caches the tower

No pretrained CLIP can be had offline, so the tower is trained here from scratch, CoCa-style: CLIP's
contrastive objective (`image_text_contrastive_loss`, the loss of `transformers.CLIPModel`, against
captions encoded as bags of words) plus a captioning objective, a small character-level decoder
that reads the tower's patch tokens and writes what the image says. The data are
`vlx.data.synth`'s street scenes (the decoder writes `category | name | house number` per shop,
`transcript`) and shape scenes (their stage-1 caption), drawn with seeds of their own so that no
pre-training image is one of the demo's evaluation images. Only the vision tower is kept: during
the LLaVA stages it is frozen and its second-to-last layer feeds the projector, as in LLaVA-1.5,
so that is the layer the decoder reads.

Why captioning: contrastive pre-training alone (bag-of-words captions, 120 steps of 64) left the
tower at chance on street scenes (top-1 caption retrieval 2.4% among 85, business names 0%,
zero-shot category 2%), while the LLM can only read from the tower what the tower encodes.
Writing the text character by character forces the tower to encode it. `metrics.json` of the
cache entry reports how much of held-out street scenes the decoder reads back
(`poi_read_category`, `poi_read_name`, `poi_read_house_number`) beside the retrieval numbers.

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

FORMAT_VERSION = 3
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
    contrastive_weight: float = 1.0
    """Weight of CLIP's contrastive loss (0: captioning alone, as CapPa)."""
    caption_weight: float = 2.0
    """Weight of the captioning loss against the contrastive one (CoCa's 2:1); 0 trains CLIP's
    contrastive loss alone."""
    decoder_layers: int = 2
    """Depth of the character-level caption decoder (discarded after pre-training)."""
    max_caption_chars: int = 128
    """Caption length the decoder is trained on (longer captions are cut)."""
    render_size: int = 224
    """Side the synthetic scenes are drawn at before resizing to `image_size` (the demo's size)."""
    n_poi: int = 3000
    """Street scenes in the training pool (each about 10 ms to draw at 224 px)."""
    n_shapes: int = 750
    """Shape scenes in the training pool."""
    n_signs: int = 0
    """Close-up shop signs (a business name and a house number) in the training pool, cheap to draw
    (about 5 ms). Off by default: with the contrastive loss alone at 120 steps, 2400 of them dragged
    the training loss (3.5 vs 2.0) and held-out shape retrieval (4% vs 15%) down."""
    min_zoom: float = 1.0
    """Augmentation: each training image is a random square crop of this fraction of the side or
    more, resized back (zoom in and shift; never flipped, which would mirror text). 1.0: off, the
    setting measured best within the budget."""
    steps: int = 360
    """About 5 minutes on 2 CPU cores, the share of the demo's 20-minute budget the tower gets.
    Held-out category reading grew with steps in trials (batch 32, street scenes only, no
    contrastive term: 0.17 at 200, 0.36 at 300, 0.43 at 400); batch 16 at 2e-3 for 800 steps
    was no better (0.36)."""
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.05
    weight_decay: float = 0.1
    precision: str = "auto"
    """`auto` (bf16 autocast where the hardware has it, `vlx.device`), `bf16` or `fp32`."""
    n_eval: int = 60
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


FEATURE_LAYER = -2
"""The tower layer LLaVA-1.5's projector reads (`vision_feature_layer`), so the one captioning trains."""
CHARS = "".join(chr(c) for c in range(32, 127))
PAD, BOS, EOS, UNK_CHAR = 0, 1, 2, 3
"""Character ids of the caption decoder; printable ASCII follows from id 4."""


def encode_chars(texts: list[str], length: int) -> torch.Tensor:
    """-> (B, length) ids: BOS, the characters (cut to fit), EOS, then PAD."""
    out = torch.full((len(texts), length), PAD, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [BOS] + [CHARS.find(c) + 4 if c in CHARS else UNK_CHAR for c in text][: length - 2] + [EOS]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def decode_chars(ids: list[int]) -> str:
    text = []
    for i in ids:
        if i == EOS:
            break
        if i >= 4:
            text.append(CHARS[i - 4])
    return "".join(text)


class CaptionDecoder(nn.Module):
    """CoCa's captioning half at small scale: a causal transformer over characters that reads the
    tower's patch tokens through cross-attention. Characters, not words, so that the tower has to
    encode what is written letter by letter; discarded after pre-training."""

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        width = cfg.hidden_size
        self.embed = nn.Embedding(len(CHARS) + 4, width)
        self.pos = nn.Parameter(torch.randn(cfg.max_caption_chars, width) * 0.02)
        layer = nn.TransformerDecoderLayer(width, cfg.num_heads, 4 * width, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.layers = nn.TransformerDecoder(layer, cfg.decoder_layers)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, len(CHARS) + 4)

    def forward(self, memory: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B, T, H) patch tokens, (B, L) ids -> (B, L, vocab) next-character logits."""
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        mask = nn.Transformer.generate_square_subsequent_mask(ids.shape[1], device=ids.device)
        # The patch tokens go in as the projector will see them: a LayerNorm here (tried) halved
        # held-out category reading after 400 steps (0.12 vs 0.28).
        return self.head(self.norm(self.layers(x, memory, tgt_mask=mask, tgt_is_causal=True)))

    @torch.no_grad()
    def greedy(self, memory: torch.Tensor, max_chars: int) -> list[str]:
        ids = torch.full((memory.shape[0], 1), BOS, dtype=torch.long, device=memory.device)
        for _ in range(max_chars - 1):
            nxt = self(memory, ids)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
            if (ids == EOS).any(1).all():
                break
        return [decode_chars(row[1:].tolist()) for row in ids]


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
        self.caption_weight, self.contrastive_weight = cfg.caption_weight, cfg.contrastive_weight
        self.decoder = CaptionDecoder(cfg) if cfg.caption_weight > 0 else None

    def image_features(self, pixels: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised image embeddings (B, P); `pooled`: the tower's pooled output, when already run."""
        if pooled is None:
            pooled = self.vision(pixel_values=pixels).pooler_output
        return nn.functional.normalize(self.visual_projection(pooled), dim=-1)

    def text_features(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        emb = self.text_projection(self.text(ids, offsets))  # (B, P)
        return nn.functional.normalize(emb, dim=-1)

    def patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """The tokens the LLaVA projector will read: layer `FEATURE_LAYER`, CLS included."""
        return self.vision(pixel_values=pixels, output_hidden_states=True).hidden_states[FEATURE_LAYER]

    def forward(self, pixels, ids, offsets, chars=None) -> tuple[torch.Tensor, dict[str, float]]:
        """-> (loss, its parts): contrastive, plus `caption_weight` x next-character loss when `chars` are given."""
        out = self.vision(pixel_values=pixels, output_hidden_states=True)
        logits_per_text = self.logit_scale.exp() * self.text_features(ids, offsets) @ self.image_features(
            pixels, pooled=out.pooler_output).T
        contrastive = image_text_contrastive_loss(logits_per_text.float())
        if self.decoder is None or chars is None:
            return contrastive, {"contrastive": contrastive.item()}
        logits = self.decoder(out.hidden_states[FEATURE_LAYER], chars[:, :-1])
        caption = nn.functional.cross_entropy(logits.float().flatten(0, 1), chars[:, 1:].flatten(), ignore_index=PAD)
        return (self.contrastive_weight * contrastive + self.caption_weight * caption,
                {"contrastive": contrastive.item(), "caption": caption.item()})


# --- data ------------------------------------------------------------------------------------


def _category_words(category: str) -> str:
    return category.replace("_", " ")


NO_SHOPS = "none"


def transcript(target: dict) -> str:
    """What the caption decoder writes for a street scene: `category | name | house number` per
    shop, left to right (`-` for no number), or `none`; the label first, so it is read from the image
    alone.

    >>> transcript({"pois": [{"name": "Golden Fox", "category": "bakery", "address": {"house_number": None}}]})
    'bakery | Golden Fox | -'
    """
    shops = [f'{p["category"]} | {p["name"]} | {p["address"]["house_number"] or "-"}' for p in target["pois"]]
    return " ; ".join(shops) or NO_SHOPS


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


def synth_pairs(n_poi: int, n_shapes: int, seed: int, image_size: int, progress=None, render_size: int = 336,
                workers: int = 1):
    """-> (uint8 images (N, 3, S, S), caption variants per image, kind per image, transcript per image),
    drawn by `vlx.data.synth`. The transcript is what the caption decoder learns to write: `transcript`
    of a street scene, the caption of a shape scene."""
    from vlx.data import synth

    images, captions, kinds, transcripts = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="vlx-clip-data-") as tmp:
        if n_poi:
            splits = synth.synth_poi(Path(tmp, "poi"), n_poi, seed=seed, splits=(1.0, 0.0, 0.0), progress=progress,
                                     image_size=render_size, workers=workers)
            for line in splits["train"].read_text().splitlines():
                row = json.loads(line)
                with Image.open(Path(tmp, "poi", row["image"])) as img:
                    images.append(_square(img, image_size))
                captions.append(poi_captions(row["target"]))
                transcripts.append(transcript(row["target"]))
                kinds.append("poi")
        if n_shapes:
            rows = json.loads(synth.synth_captions(Path(tmp, "shapes"), n_shapes, seed=seed, progress=progress,
                                                   image_size=render_size, workers=workers).read_text())
            for row in rows:
                with Image.open(Path(tmp, "shapes", row["image"])) as img:
                    images.append(_square(img, image_size))
                captions.append([row["conversations"][1]["value"]])
                transcripts.append(row["conversations"][1]["value"])
                kinds.append("shapes")
    return np.stack(images), captions, kinds, transcripts


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


def read_shops(text: str) -> list[tuple[str, str, str | None]]:
    """(category, name, house number) of each shop in a `transcript`, in order; a garbled shop keeps
    the parts that can be told apart.

    >>> read_shops("bakery | Golden Fox | 42b ; hair_salon | Ada Cuts | -")
    [('bakery', 'Golden Fox', '42b'), ('hair_salon', 'Ada Cuts', None)]
    """
    if text.strip() == NO_SHOPS:
        return []
    shops = []
    for shop in text.split(" ; "):
        parts = [x.strip() for x in shop.split(" | ")] + ["", "", ""]
        shops.append((parts[0], parts[1], None if parts[2] in ("-", "") else parts[2]))
    return shops


@torch.no_grad()
def reading(model: DualEncoder, images: np.ndarray, captions: list[str], max_chars: int) -> dict[str, float]:
    """What the tower lets the caption decoder read off held-out street scenes: the share of shops
    whose category, name and house number come out right (aligned in order), and of whole captions."""
    model.eval()
    said = []
    for i in range(0, len(images), 50):
        said += model.decoder.greedy(model.patch_tokens(_normalise(images[i:i + 50])), max_chars)
    hits = {"category": 0, "name": 0, "house_number": 0}
    shops = 0
    for text, gold in zip(said, captions):
        got = read_shops(text)
        for k, truth in enumerate(read_shops(gold)):
            shops += 1
            pred = got[k] if k < len(got) else (None, None, None)
            for j, key in enumerate(hits):
                hits[key] += pred[j] == truth[j]
    out = {f"poi_read_{k}": round(v / max(shops, 1), 4) for k, v in hits.items()}
    out["poi_read_caption"] = round(sum(a == b[: max_chars - 2] for a, b in zip(said, captions)) / len(captions), 4)
    out["poi_read_shops"] = shops
    return out


def evaluate(model: DualEncoder, held_out, vocab: dict[str, int], max_chars: int = 128) -> dict[str, float]:
    """Zero-shot retrieval on held-out pairs (full POI captions, business names alone, shape captions)
    and zero-shot category of single-business street scenes."""
    images, captions, kinds, transcripts = held_out
    poi = [i for i, k in enumerate(kinds) if k == "poi" and transcripts[i] != NO_SHOPS]
    shapes = [i for i, k in enumerate(kinds) if k == "shapes"]
    out = {}
    for name, idx, variant in (("poi", poi, 0), ("poi_name", poi, 1), ("shapes", shapes, 0)):
        if len(idx) < 2:
            continue
        scores = retrieval(model, images[idx], [captions[i][variant] for i in idx], vocab)
        out.update({f"{name}_{k}": round(v, 4) for k, v in scores.items()})
        out[f"{name}_n"] = len(idx)
    shops = {i: read_shops(transcripts[i]) for i in poi}
    single = [i for i in poi if len(shops[i]) == 1]
    if single:
        cats = [shops[i][0][0] for i in single]
        out["poi_category_zero_shot"] = round(zero_shot_category(model, images[single], cats, vocab), 4)
        out["poi_category_majority"] = round(max(cats.count(c) for c in set(cats)) / len(cats), 4)
        out["poi_category_n"] = len(single)
    if model.decoder is not None and poi:
        out.update(reading(model, images[poi], [transcripts[i] for i in poi], max_chars))
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
        task = bar.add_task("smol-clip: drawing pairs", total=cfg.n_poi + cfg.n_shapes + cfg.n_signs + 2 * cfg.n_eval,
                            info="")
        tick = lambda: bar.advance(task)  # noqa: E731
        images, captions, _, transcripts = synth_pairs(cfg.n_poi, cfg.n_shapes, cfg.data_seed, cfg.image_size, tick,
                                          render_size=cfg.render_size, workers=2)
        if cfg.n_signs:
            signs, sign_captions, _ = sign_pairs(cfg.n_signs, cfg.data_seed, cfg.image_size, tick)
            images, captions = np.concatenate([images, np.stack(signs)]), captions + sign_captions
            transcripts += [c[0] for c in sign_captions]
        held_out = synth_pairs(cfg.n_eval, cfg.n_eval, cfg.eval_seed, cfg.image_size, tick, render_size=cfg.render_size)
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

        bar.update(task, description="smol-clip: pre-training", completed=0, total=cfg.steps)
        losses, parts = [], []
        model.train()
        for step in range(cfg.steps):
            idx = torch.randperm(len(images), generator=gen)[: cfg.batch_size]
            texts = [captions[i][int(torch.randint(len(captions[i]), (1,), generator=gen))] for i in idx.tolist()]
            pixels = _normalise(images[idx.numpy()])  # (B, 3, S, S)
            if cfg.min_zoom < 1:
                pixels = _zoom(pixels, cfg.min_zoom, gen)
            pixels = pixels.to(device)
            ids, offsets = bag(texts, vocab)
            chars = encode_chars([transcripts[i] for i in idx.tolist()], cfg.max_caption_chars).to(device)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss, part = model(pixels, ids.to(device), offsets.to(device), chars)
            parts.append({k: round(v, 4) for k, v in part.items()})
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
        scores = evaluate(model, held_out, vocab, cfg.max_caption_chars)

    model.vision.save_pretrained(out)
    size = {"height": cfg.image_size, "width": cfg.image_size}
    CLIPImageProcessor(size={"shortest_edge": cfg.image_size}, crop_size=size, image_mean=list(OPENAI_CLIP_MEAN),
                       image_std=list(OPENAI_CLIP_STD), do_center_crop=True, resample=3).save_pretrained(out)
    metrics = {"retrieval": scores, "loss": losses, "loss_parts": parts, "chance": round(1 / cfg.n_eval, 4),
               "seconds": {"data": round(t_data, 1), "train": round(t_train, 1)},
               "precision": "bf16" if amp is not None else "fp32", "config": dataclasses.asdict(cfg)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return {k: metrics[k] for k in ("retrieval", "chance", "seconds", "precision")}
