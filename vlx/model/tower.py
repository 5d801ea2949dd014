"""Pre-train the `smol` preset's CLIP vision tower to read street scenes, with dense per-patch labels.

    vlx pretrain-tower --out tower/ [--steps 3000] [--seed 0]   # resumable: run it again to go on

No pretrained CLIP can be had offline, so the smol tower is trained here, from scratch, on the
street world of `vlx.data.street`. Its renderer knows where every glyph is: each 14 px patch of a
224 px scene carries four labels, the glyph whose centre falls in it (or none), the field its text
belongs to (name, category word, house number, street, phone, website, hours), the category of
the storefront it lies on and which storefront from the left that is (first, second). The last
one is what the tower's features otherwise lose: trained on the first three alone, a probe on its
features told the left storefront of two from the right in 60-72% of cells, so nothing the LLM
received said which sign line belongs to which shop. A fifth label (`TowerConfig.absent_weight`) says what the storefront goes without, a house-number plate or the street plaque, on every one of
its cells: the one thing about a sign that no cell of it shows. Linear heads classify every patch token of the layer LLaVA-1.5's
projector reads (`FEATURE_LAYER`, the second-to-last) into those labels, and a second set of heads
does the same on the last layer, so that no layer of the saved tower is left untrained. Reading then
is per-patch classification, which a small ViT learns in minutes; contrastive and captioning
objectives (this module's predecessor) spend hundreds of steps on alignment before any character
is right and had the tower at 0% of business names after the demo's budget.

Every batch is drawn afresh (3 ms a scene) from generators seeded by `(seed, step, index)`: the
data never repeat, a run is deterministic, and a resumed run sees the batches the uninterrupted
one would have. A quarter of the images are text-dense sheets of random signs (`sign_sheet`),
many labelled glyphs per image; a quarter of the scenes are drawn at 336 px and resized to 224, as
the processor does with larger images. Held-out scenes come from another seed.

The `CLIPVisionModel` is kept (`config.json`, `model.safetensors`, `preprocessor_config.json`), with
the feature-layer heads (`heads.safetensors`, to read scenes with later) and `metrics.json`: the tower's own transcript of held-out scenes (`read_grid` over its
predicted labels) scored per field, its character accuracy, and its category accuracy per shop.
That reading is the ceiling for everything the LLM later extracts from the tower's features.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, get_cosine_schedule_with_warmup
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from vlx.data.street import (ABSENT_CLASSES, CATEGORY_LIST, FIELDS, GLYPHS, GRID, MAX_STOREFRONTS, read_grid, sign_sheet,
                              street_scene)
from vlx.device import device as pick_device, resolve_precision
from vlx.progress import Progress

log = logging.getLogger(__name__)

FORMAT_VERSION = 6
"""Bump when the data, labels or loop change: the cache key changes with it."""
FEATURE_LAYER = -2
"""The tower layer LLaVA-1.5's projector reads (`vision_feature_layer`): the one the main heads train."""
CHECKPOINT = "checkpoint.pt"
HEADS_FILE = "heads.safetensors"
STREAM = 7_919_001
"""First word of every pre-training generator's seed (`draw_batch`), so that no tower batch shares a
generator with the data sets `vlx.data.synth` writes (seeded `(seed, kind, index)`)."""


@dataclass(frozen=True)
class TowerConfig:
    image_size: int = 224
    """Input pixels per side; with 14 px patches, the street world's 16 x 16 grid (256 image tokens)."""
    patch_size: int = 14
    hidden_size: int = 256
    """Vision width (ViT-L: 1024)."""
    num_layers: int = 5
    """Vision depth (ViT-L: 24); LLaVA reads the second-to-last layer."""
    num_heads: int = 4
    steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.03
    weight_decay: float = 0.05
    sheet_share: float = 0.25
    """Share of each batch that is text-dense sign sheets rather than street scenes."""
    large_share: float = 0.25
    """Share of street scenes drawn at 1.5x the input size and resized down (bicubic)."""
    field_weight: float = 0.5
    shop_weight: float = 0.5
    storefront_weight: float = 0.5
    """Weight of the head that tells a storefront's cells which one from the left it is."""
    absent_weight: float = 0.5
    """Weight of the head that tells a storefront's cells what it goes without: a house-number plate,
    the street plaque (`street.ABSENT_CLASSES`); 0: no such head. A plate that is not there leaves no
    cell of its own: a linear probe on the features of a tower trained without this head found
    plate-less storefronts in 2% of their cells, so only a trained head puts "no plate" where the
    projector can hand it to the LLM."""
    last_layer_weight: float = 0.5
    """Weight of the heads on the last layer (LLaVA does not read it; they keep it trained)."""
    precision: str = "auto"
    """`auto` (bf16 autocast where the hardware has it, `vlx.device`), `bf16` or `fp32`."""
    n_eval: int = 200
    """Held-out street scenes scored at the end."""
    save_every: int = 100
    """Steps between resumable checkpoints."""
    seed: int = 0

    def __post_init__(self):
        if self.image_size != GRID * self.patch_size:
            raise ValueError(f"image_size={self.image_size} must be {GRID} x patch_size={self.patch_size}: one patch "
                             f"per cell of the street world's grid")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision={self.precision!r}: use auto, bf16 or fp32")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be at least 1")

    def digest(self) -> str:
        keep = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("save_every", "n_eval")}
        if not self.absent_weight:  # towers without the head keep the cache keys they had before it existed
            del keep["absent_weight"]
        blob = json.dumps({"format": FORMAT_VERSION, **keep}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def vision_config(cfg: TowerConfig) -> CLIPVisionConfig:
    return CLIPVisionConfig(image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=cfg.hidden_size,
                            intermediate_size=4 * cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                            num_attention_heads=cfg.num_heads)


def image_processor(cfg: TowerConfig) -> CLIPImageProcessor:
    size = {"height": cfg.image_size, "width": cfg.image_size}
    return CLIPImageProcessor(size={"shortest_edge": cfg.image_size}, crop_size=size, image_mean=list(OPENAI_CLIP_MEAN),
                              image_std=list(OPENAI_CLIP_STD), do_center_crop=True, resample=3)


class Heads(nn.Module):
    """Per-patch classifiers: glyph (len(GLYPHS) + 1), field (len(FIELDS) + 1), shop (categories + 1),
    storefront (MAX_STOREFRONTS + 1: none, first from the left, second) and, with `absent`, what the
    storefront goes without (`ABSENT_CLASSES`)."""

    def __init__(self, hidden: int, absent: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.glyph = nn.Linear(hidden, len(GLYPHS) + 1)
        self.field = nn.Linear(hidden, len(FIELDS) + 1)
        self.shop = nn.Linear(hidden, len(CATEGORY_LIST) + 1)
        self.storefront = nn.Linear(hidden, MAX_STOREFRONTS + 1)
        self.absent = nn.Linear(hidden, ABSENT_CLASSES) if absent else None

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.norm(tokens)  # (B, GRID*GRID, hidden), CLS dropped
        out = (self.glyph(x), self.field(x), self.shop(x), self.storefront(x))
        return out + (self.absent(x),) if self.absent is not None else out


class ReadingTower(nn.Module):
    """A `CLIPVisionModel` with per-patch heads on its feature layer and its last layer."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg
        self.vision = CLIPVisionModel(vision_config(cfg))
        self.heads = Heads(cfg.hidden_size, absent=bool(cfg.absent_weight))
        self.last_heads = Heads(cfg.hidden_size, absent=bool(cfg.absent_weight))

    def forward(self, pixels: torch.Tensor):
        hidden = self.vision(pixel_values=pixels, output_hidden_states=True).hidden_states
        # hidden_states: embeddings + one per layer, each (B, 1 + GRID*GRID, hidden); [:, 1:] drops CLS as LLaVA does
        return self.heads(hidden[FEATURE_LAYER][:, 1:]), self.last_heads(hidden[-1][:, 1:])


def _normalise(images: np.ndarray) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float, CLIP-normalised (what the image processor does)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def draw_batch(cfg: TowerConfig, stream: int, step: int, n: int, sheets: bool = True
               ) -> tuple[np.ndarray, np.ndarray, list]:
    """Batch `step` of a stream: (n, S, S, 3) uint8 images, (n, len(LABELS), GRID, GRID) labels, the scenes' POIs."""
    images, labels, pois = [], [], []
    for k in range(n):
        rng = np.random.default_rng([STREAM, stream, cfg.seed, step, k])
        if sheets and rng.random() < cfg.sheet_share:
            img, lab = sign_sheet(rng, cfg.image_size)
            target: list = []
        else:
            large = rng.random() < cfg.large_share
            size = cfg.image_size * 3 // 2 if large else cfg.image_size
            img, target, lab = street_scene(rng, size)
            if large:
                img = img.resize((cfg.image_size, cfg.image_size), Image.Resampling.BICUBIC)
        images.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
        labels.append(lab)
        pois.append(target)
    return np.stack(images), np.stack(labels).astype(np.int64), pois


def _loss(cfg: TowerConfig, out, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    ce = nn.functional.cross_entropy
    flat = labels.flatten(2)  # (B, len(LABELS), GRID*GRID)
    total, parts = 0.0, {}
    for name, heads, weight in (("feature", out[0], 1.0), ("last", out[1], cfg.last_layer_weight)):
        glyph, field, shop, front, *absent = (h.float().flatten(0, 1) for h in heads)
        g, f, s = ce(glyph, flat[:, 0].flatten()), ce(field, flat[:, 1].flatten()), ce(shop, flat[:, 2].flatten())
        k = ce(front, flat[:, 3].flatten())
        total = total + weight * (g + cfg.field_weight * f + cfg.shop_weight * s + cfg.storefront_weight * k)
        if absent:
            total = total + weight * cfg.absent_weight * ce(absent[0], flat[:, 4].flatten())
        parts[f"{name}_glyph"] = round(g.item(), 4)
    return total, parts


@torch.no_grad()
def predict(vision: CLIPVisionModel, heads: Heads, pixels: torch.Tensor, batch: int = 32) -> np.ndarray:
    """-> (B, 4, GRID, GRID) predicted glyph, field, shop and storefront ids from the feature layer
    (B, 5, ...: and the absent plane's value, for heads that have it)."""
    out = []
    for i in range(0, len(pixels), batch):
        hidden = vision(pixel_values=pixels[i:i + batch], output_hidden_states=True).hidden_states[FEATURE_LAYER][:, 1:]
        logits = heads(hidden.float())
        out.append(torch.stack([x.argmax(-1) for x in logits], 1).view(-1, len(logits), GRID, GRID))
    return torch.cat(out).numpy()


def score(predicted: np.ndarray, labels: np.ndarray) -> dict:
    """How well predicted label grids read held-out scenes.

    - `char_accuracy`: cells that hold a glyph and whose glyph was predicted right; `char_accuracy_<field>`
      the same per field (`signs_and_numbers`: every field's glyphs);
    - `exact_<field>`: texts of the field (as `read_grid` reads the ground truth) that the tower's own
      transcript (`read_grid` over its predictions) contains exactly;
    - `shop_category`: storefronts whose cells' majority predicted category is theirs;
    - `storefront_cells`: cells on a storefront told which one from the left it is (`storefront_two`:
      the same on facades with two);
    - `false_glyphs`: cells without a glyph where the tower saw one;
    - with the absent head (`predicted` of 5 planes): `absent_plate` and `absent_plaque`, storefronts
      whose cells' majority predicted value tells right whether they have a plate and a plaque
      (`absent_plate_missing`: the same over storefronts without a plate).
    """
    glyph_gt, field_gt, shop_gt = labels[:, 0], labels[:, 1], labels[:, 2]
    has = glyph_gt > 0
    right = predicted[:, 0] == glyph_gt
    out = {"char_accuracy": float(right[has].mean()),
           "false_glyphs": float((predicted[:, 0][~has] > 0).mean()),
           "signs_and_numbers": float(right[has & (field_gt > 0)].mean())}
    for i, name in enumerate(FIELDS):
        mask = has & (field_gt == i + 1)
        if mask.any():
            out[f"char_accuracy_{name}"] = float(right[mask].mean())
    hits = {name: [0, 0] for name in FIELDS}
    for p, y in zip(predicted, labels):
        truth, seen = read_grid(y[0], y[1]), read_grid(p[0], p[1])
        for name in FIELDS:
            pool = list(seen[name])
            for text in truth[name]:
                hits[name][1] += 1
                if text in pool:
                    pool.remove(text)
                    hits[name][0] += 1
    out.update({f"exact_{name}": round(h / n, 4) for name, (h, n) in hits.items() if n})
    shops = right_shops = 0
    for p, y in zip(predicted[:, 2], shop_gt):
        for category in np.unique(y[y > 0]):
            cells = p[y == category]
            shops += 1
            right_shops += int(np.bincount(cells, minlength=len(CATEGORY_LIST) + 1).argmax() == category)
    out["shop_category"] = right_shops / max(1, shops)
    front_gt = labels[:, 3]
    on, two = front_gt > 0, (front_gt.reshape(len(front_gt), -1).max(-1) == 2)[:, None, None] & (front_gt > 0)
    out["storefront_cells"] = float((predicted[:, 3] == front_gt)[on].mean())
    if two.any():
        out["storefront_two"] = float((predicted[:, 3] == front_gt)[two].mean())
    if predicted.shape[1] > 4:
        plate, plaque, missing = [], [], []
        for p, y, front in zip(predicted[:, 4], labels[:, 4], front_gt):
            for k in np.unique(front[front > 0]):
                want = int(y[front == k][0]) - 1
                got = int(np.bincount(p[front == k], minlength=ABSENT_CLASSES)[1:].argmax())
                plate.append(got % 2 == want % 2)
                plaque.append(got // 2 == want // 2)
                if want % 2:
                    missing.append(got % 2 == 1)
        out["absent_plate"], out["absent_plaque"] = float(np.mean(plate)), float(np.mean(plaque))
        if missing:
            out["absent_plate_missing"] = float(np.mean(missing))
    return {k: round(v, 4) for k, v in out.items()}


def _save_checkpoint(path: Path, model: ReadingTower, opt, sched, step: int, history: list) -> None:
    """Write the resumable state under a temporary name and rename it: a kill never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step,
                "history": history, "config": dataclasses.asdict(model.cfg)}, tmp)
    os.replace(tmp, path)


def pretrain(cfg: TowerConfig, out: str | Path, *, work: str | Path | None = None, progress: bool = True) -> dict:
    """Train the reading tower; write `CLIPVisionModel` + image processor + `metrics.json` to `out` -> metrics.

    `work` holds the resumable checkpoint (default `out/../.<out name>.work`): running the same
    configuration again continues from the last checkpoint, and reaches the same weights as an
    uninterrupted run up to the nondeterminism of the CPU kernels' reductions. `out` is written last.
    """
    out = Path(out)
    work = Path(work) if work else out.parent / f".{out.name}.work"
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device(pick_device())
    amp = torch.bfloat16 if resolve_precision(cfg.precision) == "bf16" else None
    torch.manual_seed(cfg.seed)
    model = ReadingTower(cfg).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.learning_rate, betas=(0.9, 0.98))
    sched = get_cosine_schedule_with_warmup(opt, math.ceil(cfg.warmup_ratio * cfg.steps), cfg.steps)
    start, history = 0, []
    ckpt = work / CHECKPOINT
    if ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        try:  # a checkpoint from before the absent head existed was written without one
            same = TowerConfig(**{"absent_weight": 0.0, **state.get("config", {})}) == cfg
        except TypeError:
            same = False
        if not same:
            raise ValueError(f"{ckpt} was written by another tower configuration; delete {work} to start afresh, "
                             f"or run with the configuration it records")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start, history = int(state["step"]), list(state["history"])
        log.info("resuming the tower from step %d (%s)", start, ckpt)
    t0 = time.perf_counter()
    base = history[-1]["seconds"] if history else 0.0
    bar = Progress("tower: pre-training", cfg.steps, start=start, every=30.0 if progress else float("inf"))
    model.train()
    for step in range(start, cfg.steps):
        images, labels, _ = draw_batch(cfg, 0, step, cfg.batch_size)
        pixels, labels = _normalise(images).to(device), torch.from_numpy(labels).to(device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, parts = _loss(cfg, model(pixels), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        history.append({"step": step + 1, "loss": round(loss.item(), 4), **parts,
                        "seconds": round(base + time.perf_counter() - t0, 1)})
        recent = [h["feature_glyph"] for h in history[-20:]]
        bar.update(step + 1, f"loss {loss.item():.3f} glyph {sum(recent) / len(recent):.3f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            _save_checkpoint(ckpt, model, opt, sched, step + 1, history)
    seconds = bar.done()
    model = model.cpu().float().eval()
    metrics = evaluate(model, cfg)
    out.mkdir(parents=True, exist_ok=True)
    model.vision.save_pretrained(out)
    image_processor(cfg).save_pretrained(out)
    # The feature-layer heads (90 KB): the tower's own transcript of any scene, later, without retraining.
    save_file({k: v.contiguous() for k, v in model.heads.state_dict().items()}, str(out / HEADS_FILE))
    record = {"reading": metrics, "config": dataclasses.asdict(cfg), "config_digest": cfg.digest(),
              "precision": "bf16" if amp is not None else "fp32", "train_seconds_this_run": round(seconds, 1),
              "train_seconds": history[-1]["seconds"] if history else 0.0,
              "loss": [h for h in history if h["step"] % 50 == 0 or h["step"] == cfg.steps]}
    (out / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("tower written to %s in %.0f s: %s", out, time.perf_counter() - t0, metrics)
    return metrics


def evaluate(model: ReadingTower, cfg: TowerConfig, n: int | None = None) -> dict:
    """Score the tower's feature-layer heads on `n` held-out street scenes (another seed)."""
    n = n or cfg.n_eval
    images, labels, _ = draw_batch(cfg, 1, 0, n, sheets=False)
    predicted = predict(model.vision, model.heads, _normalise(images))
    return score(predicted, labels)
