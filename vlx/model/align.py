"""Align a LLaVA projector to the LLM's token embeddings before stage 1, from the street world's glyph labels.

    stats = align_projector(model, processor, steps=300)         # trains model's projector in place
    save_projector(model, "projector.safetensors")               # -> vlx train-base --projector-init FILE

The smol tower classifies every patch of a street scene into the glyph it shows (`vlx.model.tower`).
Stage 1 must then teach the projector to hand those readings to the LLM in a form it can copy, from
a few hundred captions. This step gives it a head start without a single LLM forward pass: each
patch that holds a glyph is regressed onto the LLM's input embedding of that glyph's one-character
token (`G`, `o`, `l`, ...; a space inside a text onto the space token), so a text row of the image
reaches the LLM much as the same text spelled out character by character would. A patch without
text is pulled, more weakly, towards the embedding of the word for the kind of shop it lies on
(` bakery`, ` bank`, the mean of the word's tokens where it takes several) or, off any shop, towards
the space token: the LLM receives each storefront as its signs set in a field of its category's
word, which says what the shop is, where one shop ends and the next begins, and that a facade
without a shop holds no business. Those words come from the tower's category reading, so they are
as right as the tower is (its held-out per-patch category accuracy is in its `metrics.json`).

With `field_marker` > 0, each text patch's target also carries its field: the glyph's token
embedding plus `field_marker` times the LLM's embedding of the field's word (` name`, ` number`,
` street`, ` phone`, ` website`, ` hours`, ` kind` for the awning's category word), so the LLM can
tell a shop's name from the awning word, the opening hours or the street plate above it by a
direction its attention reads, while the nearest character token stays the glyph.

With `shop_marker` > 0, a text patch's target adds `shop_marker` times the LLM's word for the kind
of storefront the text is on (` bakery`, ` bank`): two shops side by side then hand the LLM their
names in different shades, so that the words of one name can be gathered by what they have in
common rather than by where the raster order of the patches puts them (row by row, the two signs
interleave).

With `separator`, the text-free cells on either side of the seam between two storefronts side by
side are regressed onto the token `|` instead: each row of image tokens then reads like
`Twin  || Red`, so that where one shop's signs end and the next one's begin is a token the LLM has
seen separate things, not a change of shade it must learn to notice.

With `storefront_marker` > 0, every cell of a storefront after the leftmost, text or not, adds
`storefront_marker` times the LLM's embedding of its ordinal (` second`; `ORDINAL_WORDS`): the
tower's storefront head is trained to know it, so the LLM can tell the cells of the first and the
second answer apart by what they carry rather than by where a raster row of image tokens runs from
one sign into the next, and a facade with a second storefront from one without by whether any
cell says so. The leftmost storefront is left unmarked: marked ` first`, a single shop's cells
read as the first of several to the LLM, which then wrote a second, invented storefront for 86%
of single-shop test scenes (against 32% without markers).

With `absent_marker` > 0, every cell of a storefront also adds `absent_marker` times the LLM's word for
what it goes without (` unnumbered` for no house-number plate, ` nowhere` for a facade without a street
plaque; `ABSENT_WORDS`), as a tower trained with its absent head (`TowerConfig.absent_weight`) reads it.
A plate that is not there leaves no cell to mark, so without it the LLM could tell a plate-less shop only
by the absence of number-marked cells, and the fine-tuned model wrote a number for nearly every one.

Images and labels come from `vlx.model.tower.draw_batch` on a stream of its own (no tower
pre-training batch and no demo image is drawn twice); they need a tower whose patch grid is the
street world's `GRID` x `GRID`. Only the projector's weights change.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from vlx.data.street import CATEGORY_LIST, FIELDS, GLYPHS, GRID, MAX_STOREFRONTS, boundaries
from vlx.progress import Progress

log = logging.getLogger(__name__)

ALIGN_STREAM = 2
"""`draw_batch` stream of the alignment images (0: tower pre-training, 1: tower evaluation)."""


def glyph_token_ids(tokenizer) -> torch.Tensor:
    """-> (len(GLYPHS) + 1,) token ids: index 0 the space token, index i the token of glyph i."""
    ids = []
    for char in " " + GLYPHS:
        tokens = tokenizer.encode(char, add_special_tokens=False)
        if len(tokens) != 1:
            raise ValueError(f"the tokenizer splits {char!r} into {len(tokens)} tokens; projector alignment needs one "
                             f"token per character (byte-level BPE and SentencePiece vocabularies have them)")
        ids.append(tokens[0])
    return torch.tensor(ids)


def category_embeddings(tokenizer, embeddings: torch.Tensor) -> torch.Tensor:
    """-> (len(CATEGORY_LIST), hidden): each shop category's word (`hair_salon` -> " hair salon") as the
    LLM embeds it, the mean over its tokens (one token for most words in SmolLM2's vocabulary)."""
    rows = []
    for category in CATEGORY_LIST:
        ids = tokenizer.encode(" " + category.replace("_", " "), add_special_tokens=False)
        rows.append(embeddings[ids].mean(0))
    return torch.stack(rows)


SEPARATOR = "|"
"""The token the seam between two storefronts is aligned to (`separator`)."""
ORDINAL_WORDS = ("second",)
"""The words whose embeddings mark the storefronts after the leftmost (`storefront_marker`)."""
ABSENT_WORDS = ("unnumbered", "nowhere")
"""The words whose embeddings mark a storefront without a house-number plate and a facade without a
street plaque (`absent_marker`)."""
FIELD_WORDS = {"name": "name", "category": "kind", "house_number": "number", "street": "street", "phone": "phone",
               "website": "website", "hours": "hours"}
"""The word whose embedding marks each text field (`field_marker`); `category` is the awning's word."""


def field_embeddings(tokenizer, embeddings: torch.Tensor) -> torch.Tensor:
    """-> (1 + len(FIELDS), hidden): row 0 zeros (no field), row i the LLM's embedding of field i's
    word (`FIELD_WORDS`, the mean over its tokens), scaled to a typical glyph token's norm."""
    rows = [embeddings[tokenizer.encode(" " + FIELD_WORDS[f], add_special_tokens=False)].mean(0) for f in FIELDS]
    rows = torch.stack(rows)
    return torch.cat([torch.zeros_like(rows[:1]), rows])


def ordinal_embeddings(tokenizer, embeddings: torch.Tensor) -> torch.Tensor:
    """-> (MAX_STOREFRONTS, hidden): row 0 zeros (no storefront, or the leftmost), row k the LLM's
    embedding of `ORDINAL_WORDS[k - 1]` (the mean over its tokens), storefront k + 1's marker."""
    if len(ORDINAL_WORDS) != MAX_STOREFRONTS - 1:
        raise ValueError(f"ORDINAL_WORDS has {len(ORDINAL_WORDS)} words for {MAX_STOREFRONTS - 1} storefronts after the first")
    rows = torch.stack([embeddings[tokenizer.encode(" " + w, add_special_tokens=False)].mean(0) for w in ORDINAL_WORDS])
    return torch.cat([torch.zeros_like(rows[:1]), rows])


def absent_embeddings(tokenizer, embeddings: torch.Tensor) -> torch.Tensor:
    """-> (2, hidden): the LLM's embeddings of the words for no plate and no plaque (`ABSENT_WORDS`,
    each the mean over its tokens)."""
    return torch.stack([embeddings[tokenizer.encode(" " + w, add_special_tokens=False)].mean(0) for w in ABSENT_WORDS])


class Layout:
    """How `align_projector`'s targets are indexed: each cell's target is one index into a table of
    text targets, `((state * n_shops + shop) * n_fields + field) * n_chars + char`, then of the other
    targets (the category words, then the separator), `n_text + state * n_other + k`, where a storefront
    cell's state is `front + n_fronts * absent`. Without a marker its factor is 1 and its part 0."""

    def __init__(self, n_chars: int, n_fields: int = 1, n_shops: int = 1, n_fronts: int = 1, separator: bool = False,
                 n_absent: int = 1):
        self.n_chars, self.n_fields, self.n_shops, self.n_fronts = n_chars, n_fields, n_shops, n_fronts
        self.n_absent, self.n_states = n_absent, n_fronts * n_absent
        self.n_text = n_chars * n_fields * n_shops * self.n_states
        self.n_other = len(CATEGORY_LIST) + int(separator)

    def parts(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """-> (content, field, shop, state) of target indices; content indexes characters then the others."""
        text = index < self.n_text
        other = (index - self.n_text).clamp_min(0)
        content = torch.where(text, index % self.n_chars, self.n_chars + other % self.n_other)
        field = torch.where(text, (index // self.n_chars) % self.n_fields, 0)
        shop = torch.where(text, (index // (self.n_chars * self.n_fields)) % self.n_shops, 0)
        front = torch.where(text, index // (self.n_chars * self.n_fields * self.n_shops), other // self.n_other)
        return content, field, shop, front


def _features(model, pixels: torch.Tensor) -> torch.Tensor:
    """Frozen tower features at LLaVA's feature layer, CLS dropped: (B, GRID*GRID, vision hidden)."""
    layer = model.config.vision_feature_layer
    with torch.no_grad():
        hidden = model.model.vision_tower(pixel_values=pixels, output_hidden_states=True).hidden_states
    return hidden[layer][:, 1:]


def align_projector(model, processor, *, steps: int = 600, images: int = 512, batch_patches: int = 4096,
                    learning_rate: float = 3e-3, background_weight: float = 0.2, field_marker: float = 0.0,
                    shop_marker: float = 0.0, separator: bool = False, storefront_marker: float = 0.0,
                    absent_marker: float = 0.0, seed: int = 0, progress: bool = True) -> dict:
    """Regress projected text patches onto their glyphs' token embeddings; returns loss statistics.

    The frozen tower runs once over `images` street scenes (about 15 s for 512 on 2 cores); the
    projector then takes `steps` steps on `batch_patches` random text patches of those features each.
    The loss is the squared error relative to a typical embedding's squared norm, plus the
    cross-entropy of picking the right target among all glyph tokens and category words by dot
    product (the squared error alone leaves nearby glyphs confusable).
    """
    from vlx.model.tower import TowerConfig

    vision = model.config.vision_config
    if vision.image_size // vision.patch_size != GRID:
        raise ValueError(f"projector alignment needs a tower with a {GRID} x {GRID} patch grid (the street world's); "
                         f"this one has {vision.image_size // vision.patch_size} x {vision.image_size // vision.patch_size}")
    tower_cfg = TowerConfig(image_size=vision.image_size, patch_size=vision.patch_size, seed=seed)
    token_ids = glyph_token_ids(processor.tokenizer)
    projector = model.model.multi_modal_projector
    dtype = next(projector.parameters()).dtype
    device = next(model.parameters()).device
    table = model.get_input_embeddings().weight.detach()
    # Targets (`Layout`): character c (0 the space, 1..len(GLYPHS) the glyphs) in a text field, on a
    # shop category and a storefront (each 0 without its marker), then one word per shop category.
    chars = table[token_ids]
    words = category_embeddings(processor.tokenizer, table)

    def marks(rows: torch.Tensor, on: bool) -> torch.Tensor:
        """Row 0 "none" (zeros) then `rows` at a typical character's norm; only row 0 when off."""
        rows = rows * (chars.norm(dim=-1).mean() / rows.norm(dim=-1).mean().clamp_min(1e-6))
        return torch.cat([torch.zeros_like(chars[:1])] + ([rows] if on else []))

    markers = marks(field_embeddings(processor.tokenizer, table)[1:], bool(field_marker))
    shops = marks(words, bool(shop_marker))
    fronts = marks(ordinal_embeddings(processor.tokenizer, table)[1:], bool(storefront_marker))
    if absent_marker:  # state `plate + 2 * plaque` of what a storefront goes without: nothing, plate, plaque, both
        none, plate, plaque = marks(absent_embeddings(processor.tokenizer, table), True)
        absents = torch.stack([none, plate, plaque, plate + plaque])
    else:
        absents = torch.zeros_like(chars[:1])
    layout = Layout(len(token_ids), len(markers), len(shops), len(fronts), separator, n_absent=len(absents))
    # A storefront cell's state, `front + n_fronts * absent`: its ordinal's and its absent state's markers.
    states = (storefront_marker * fronts[None] + absent_marker * absents[:, None]).flatten(0, 1)
    seam_ids = processor.tokenizer.encode(SEPARATOR, add_special_tokens=False)
    others = torch.cat([words] + ([table[seam_ids].mean(0, keepdim=True)] if separator else []))
    texts_table = (chars[None, None, None] + field_marker * markers[None, None, :, None]
                   + shop_marker * shops[None, :, None, None] + states[:, None, None, None])
    others_table = others[None] + states[:, None]
    embeddings = torch.cat([texts_table.flatten(0, 3), others_table.flatten(0, 1)]).to(device, dtype)
    # What the cross-entropy ranks: characters against category words (and the separator); the field
    # and shop markers each among their own kind, the storefront states among theirs (see the loop).
    base = torch.cat([chars, others]).to(device, dtype)
    fronts = (fronts[None] + absents[:, None]).flatten(0, 1)
    markers, shops, fronts = (x.to(device, dtype) for x in (markers, shops, fronts))
    scale = chars.pow(2).sum(-1).mean().to(device, dtype)  # squared norm of a typical token

    # Features of every patch, once: (P, vision hidden) and its target's index into `embeddings`.
    bar = Progress("projector alignment: tower features", images, every=30.0 if progress else float("inf"))
    feats, targets, texts = [], [], []
    for start in range(0, images, 32):
        n = min(32, images - start)
        pixels, labels = _batch(tower_cfg, processor, start // 32, n)
        target, text = patch_targets(labels, layout)
        feats.append(_features(model, pixels.to(device, dtype)).flatten(0, 1))
        targets.append(target.flatten())
        texts.append(text.flatten())
        bar.advance(n)
    bar.done()
    feats, targets, texts = torch.cat(feats), torch.cat(targets).to(device), torch.cat(texts).to(device)
    # Every patch has a target: its glyph's token (a space between words), its shop's word, or a
    # space. Patches outside any text weigh `background_weight`: what they carry of the scene beyond
    # the shop's kind stays in the residual.
    weight = torch.where(texts, 1.0, background_weight).to(device)

    params = list(projector.parameters())
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    gen = torch.Generator().manual_seed(seed)
    bar = Progress("projector alignment", steps, every=30.0 if progress else float("inf"))
    losses = []
    for step in range(steps):
        pick = torch.randint(len(feats), (min(batch_patches, len(feats)),), generator=gen).to(device)
        projected = projector(feats[pick])  # (batch_patches, LLM hidden)
        target, w = targets[pick], weight[pick]
        mse = ((projected - embeddings[target]).pow(2).sum(-1) * w).sum() / w.sum() / scale
        # The cross-entropy of picking the right target by dot product, factorised: a text target is a
        # character plus a field, a shop and a storefront marker, and among the targets that share its
        # markers they add the same to every score, so its softmax is over characters alone (here
        # against the category words too); its field, shop and storefront are each picked likewise.
        def ce_of(logits, labels, mask):
            each = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
            return (each * w * mask).sum() / (w * mask).sum().clamp_min(1e-6)

        content, field, shop, front = layout.parts(target)
        ce = ce_of(projected @ base.T, content, torch.ones_like(w))
        marked = ((target < layout.n_text) & (target > 0)).float()  # text cells (0: a space off any text)
        if layout.n_fields > 1:
            ce = ce + ce_of(projected @ markers.T, field, marked)
        if layout.n_shops > 1:
            ce = ce + ce_of(projected @ shops.T, shop, marked)
        if layout.n_states > 1:  # every cell: off a storefront, the zero row
            ce = ce + ce_of(projected @ fronts.T, front, torch.ones_like(w))
        loss = mse + ce
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(mse.item(), 4))
        bar.update(step + 1, f"relative error {mse.item():.3f} glyph loss {ce.item():.3f}")
    bar.done(f"relative error {losses[0]:.3f} -> {losses[-1]:.3f}")
    held_out = held_out_accuracy(model, processor, tower_cfg, embeddings, layout)
    return {"steps": steps, "images": images, "field_marker": field_marker, "shop_marker": shop_marker,
            "separator": separator, "storefront_marker": storefront_marker, "absent_marker": absent_marker,
            "text_patches": int(texts.sum()),
            "first_loss": losses[0],
            "last_loss": losses[-1], "loss": losses, **held_out}


def patch_targets(labels: np.ndarray, layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """Each cell's target index into `align_projector`'s table (`Layout`), and whether it weighs fully -> two (B, GRID*GRID).

    A glyph, or a space between the words of a text, targets its character (in its field, on its
    shop's category and its storefront, for the markers `layout` has); a text-free cell on a
    storefront its category's word, elsewhere the space; a text-free cell at the seam of two
    storefronts (with a separator) the separator. Text and seam cells weigh fully, the rest
    `background_weight`.
    """
    glyph, field, shop, front = (torch.from_numpy(labels[:, k]).flatten(1).long() for k in range(4))
    L = layout
    front = (front - 1).clamp_min(0) if L.n_fronts > 1 else torch.zeros_like(front)  # the leftmost unmarked
    if L.n_absent > 1:  # the storefront's state: its ordinal and what it goes without
        front = front + L.n_fronts * (torch.from_numpy(labels[:, 4]).flatten(1).long() - 1).clamp_min(0)
    text = (glyph > 0) | (field > 0)
    marked = glyph + (field * L.n_chars if L.n_fields > 1 else 0) + (shop * L.n_fields * L.n_chars if L.n_shops > 1 else 0)
    marked = marked + front * (L.n_chars * L.n_fields * L.n_shops)
    other = L.n_text + front * L.n_other
    target = torch.where(text, marked, torch.where(shop > 0, other + shop - 1, 0))
    if L.n_other > len(CATEGORY_LIST):
        seam = torch.from_numpy(boundaries(labels[:, 3])).flatten(1) & ~text
        target = torch.where(seam, other + len(CATEGORY_LIST), target)
        text = text | seam  # full weight: the seam is what tells two shops apart
    return target, text


def _batch(tower_cfg, processor, step: int, n: int, stream: int = ALIGN_STREAM, sheets: bool = True):
    """Alignment images as the LLaVA processor prepares them, with their labels."""
    from vlx.model.tower import draw_batch

    images, labels, _ = draw_batch(tower_cfg, stream, step, n, sheets=sheets)
    pixels = processor.image_processor([Image.fromarray(a) for a in images], return_tensors="pt")["pixel_values"]
    return pixels, labels


@torch.no_grad()
def held_out_accuracy(model, processor, tower_cfg, embeddings: torch.Tensor, layout: Layout, n: int = 32) -> dict:
    """What the LLM receives, on held-out scenes: the share of glyph patches whose projected vector is
    nearest (cosine, among every target of `align_projector`) to its own glyph's token (in any field),
    of those nearest to their own field's marker too (with field markers) and their storefront's
    category (with shop markers), of shop patches without text nearest to their shop category's
    word, with `separator` of seam cells nearest to `|`, and with storefront markers of storefront
    cells nearest to a target of their own storefront (`_two`: on facades with two). The targets are
    `patch_targets`', as in training."""
    pixels, labels = _batch(tower_cfg, processor, 0, n, stream=ALIGN_STREAM + 1, sheets=False)
    projector = model.model.multi_modal_projector
    device = next(model.parameters()).device
    projected = projector(_features(model, pixels.to(device, dtype=next(projector.parameters()).dtype))).float().cpu()
    nearest = (torch.nn.functional.normalize(projected, dim=-1)
               @ torch.nn.functional.normalize(embeddings.float().cpu(), dim=-1).T).argmax(-1)
    target, _ = patch_targets(labels, layout)
    glyph, field, _, front = (torch.from_numpy(labels[:, k]).flatten(1).long() for k in range(4))
    got, want = layout.parts(nearest), layout.parts(target)
    is_text = (nearest < layout.n_text) & (glyph > 0)

    def share(right: torch.Tensor, cells: torch.Tensor) -> float:
        return round(right[cells].float().mean().item(), 4)

    free = (glyph == 0) & (field == 0) & (target >= layout.n_text)  # text-free cells with a word or `|` to land on
    seam = (want[0] == layout.n_chars + len(CATEGORY_LIST)) & free
    stats = {"held_out_glyph_accuracy": share(is_text & (got[0] == glyph), glyph > 0),
             "held_out_category_accuracy": share(got[0] == want[0], free & ~seam)}
    if layout.n_other > len(CATEGORY_LIST):
        stats["held_out_separator_accuracy"] = share(got[0] == want[0], seam)
    if layout.n_shops > 1:
        stats["held_out_shop_marker_accuracy"] = share(is_text & (got[2] == want[2]), glyph > 0)
    if layout.n_fields > 1:
        stats["held_out_field_accuracy"] = share(is_text & (got[1] == field), glyph > 0)
    if layout.n_fronts > 1:
        two = (front.max(-1, keepdim=True).values == 2) & (front > 0)
        ordinal = got[3] % layout.n_fronts == want[3] % layout.n_fronts
        stats["held_out_storefront_accuracy"] = share(ordinal, front > 0)
        stats["held_out_storefront_accuracy_two"] = share(ordinal, two)
    if layout.n_absent > 1:
        absent = got[3] // layout.n_fronts == want[3] // layout.n_fronts
        no_plate = torch.from_numpy(np.isin(labels[:, 4], (2, 4))).flatten(1)
        stats["held_out_absent_accuracy"] = share(absent, front > 0)
        stats["held_out_absent_accuracy_no_plate"] = share(absent, no_plate)
    return stats


def save_projector(model, path: str | Path) -> Path:
    """The projector's weights as safetensors (the keys of `multi_modal_projector.state_dict()`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.model.multi_modal_projector.state_dict().items()}
    save_file(state, str(path))
    return path


def load_projector(model, path: str | Path) -> None:
    """Load `save_projector`'s file into `model`'s projector; shapes must match (LLaVA's --pretrain_mm_mlp_adapter)."""
    state = load_file(str(path))
    projector = model.model.multi_modal_projector
    expected = projector.state_dict()
    wrong = [k for k in expected if k not in state or state[k].shape != expected[k].shape]
    if wrong or set(state) - set(expected):
        raise ValueError(f"--projector-init {path}: its weights do not fit this model's projector (keys or shapes "
                         f"differ at {', '.join(wrong or sorted(set(state) - set(expected)))}); give the file written "
                         f"for the same vision tower, LLM and --projector")
    projector.load_state_dict(state)
