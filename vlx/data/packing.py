"""Padding-free packing: a micro-batch's samples laid end to end, with no cross-sample attention.

    collator = PackingCollator(pad_token_id, one_row=packs_into_one_row(model))

Each sample keeps its own `position_ids` (0, 1, 2, ... restarting at every sample) and no
`attention_mask` is passed. transformers 5 reads the restarts as sequence boundaries
(`masking_utils.find_packed_sequence_indices`): SDPA, eager and flex attention get a block-diagonal
causal mask, flash attention gets varlen `cu_seqlens` (`modeling_flash_attention_utils`). Rotary
positions restart with the ids, and the first label of every sample is ignored, so no token is
predicted across a boundary: the loss and gradients equal the padded batch's (same supervised
tokens, same mean), while no compute is spent on padding.

Rows: flash attention detects packing only in a batch of one row and then skips every masked score
(varlen kernels), so the whole micro-batch becomes one row. SDPA and eager materialise a
(rows, 1, L, L) mask and compute every score in it, masked or not, so one long row would cost more
attention than the padded batch. There samples are packed first-fit-decreasing into rows no longer
than the micro-batch's longest sample: the padded batch's width, in fewer rows, so packing never
costs more than padding and saves whatever short samples can share a row. The few pad tokens that
even rows out form their own short segment and carry no labels.

Logits only where they are needed: most positions of a LLaVA sample (image tokens, system prompt,
questions) carry no label, yet a causal LM projects every position onto the vocabulary (49k x 576
for SmolLM2: about a fifth of its training FLOPs, plus a float32 log-softmax over each row). The
collator also passes `logits_to_keep`, the positions whose next token is supervised, and
`supervised_loss` (the Trainer's `compute_loss_func`) takes the cross-entropy there: the same sum
over the same tokens, divided by the same count, without the rest of the vocabulary projection.

Images stay in step with their `<image>` tokens: pixel values (or cached tower features) are stacked
in the order their samples appear in the packed rows, which is the order the model scatters them in.

Qwen-family models (multimodal RoPE) take `rope_index`: each sample's three mRoPE position rows
(temporal, height, width) computed on the sample alone by the model's own `get_rope_index`, under a
fourth, plain text row 0, 1, 2, ... that restarts per sample; transformers reads the sequence
boundaries from that text row (a `(4, rows, L)` tensor). Restarting 1-D ids would place every
sample's image tokens at text positions and leak attention across samples; the processor's own
image inputs (`pixel_values` patches, `image_grid_thw`) and per-token `mm_token_type_ids` follow
the packed order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlx.config import ConfigError
from vlx.data.templates import IGNORE_INDEX
from vlx.data.dataset import concat_padded

PACKING_ATTENTION = {
    "flash_attention_2": "one row",
    "flash_attention_3": "one row",
    "sdpa": "rows",
    "eager": "rows",
    "flex_attention": "rows",
}
"""Attention implementations for which transformers honours packed position ids exactly."""


class PackingError(ConfigError):
    """Packing was requested where it cannot be exact; the message says why and what to do."""


def packs_into_one_row(model) -> bool:
    """True where the attention wants one packed row per micro-batch (flash); fails if packing is not exact."""
    impl = getattr(model.config.get_text_config(), "_attn_implementation", None) or model.config._attn_implementation
    if impl not in PACKING_ATTENTION:
        raise PackingError(f"--packing needs attention that honours per-sample position ids "
                           f"({', '.join(PACKING_ATTENTION)}); this model uses {impl!r}: drop --packing")
    return PACKING_ATTENTION[impl] == "one row"


def mrope_index(model):
    """`PackingCollator.rope_index` of a Qwen-family model (peft-wrapped or not): its `get_rope_index`."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = inner.model  # Qwen2VLModel / Qwen2_5_VLModel: get_rope_index reads only its config

    def rope_index(input_ids, mm_token_type_ids, image_grid_thw):
        with torch.no_grad():
            return inner.get_rope_index(input_ids, mm_token_type_ids, image_grid_thw=image_grid_thw,
                                        attention_mask=torch.ones_like(input_ids))[0]

    return rope_index


def pack_rows(lengths: list[int], capacity: int | None) -> list[list[int]]:
    """First-fit decreasing: sample indices per row, each row's total <= capacity (None: one row)."""
    if capacity is None:
        return [list(range(len(lengths)))]
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:  # a sample longer than the capacity still gets a row of its own
            rows.append([i])
            room.append(capacity - lengths[i])
    return [sorted(row) for row in rows]


@dataclass
class PackingCollator:
    """`Collator`'s job without padding: rows of whole samples, `position_ids` restarting per sample."""

    pad_token_id: int
    one_row: bool = False
    """The whole micro-batch in one row (flash attention); else rows as long as its longest sample."""
    capacity: int | None = None
    """Tokens per row when not `one_row`; None: the longest sample of each micro-batch."""
    supervised_logits: bool = False
    """Also pass `logits_to_keep` (train with `compute_loss_func=supervised_loss`)."""
    sources: tuple[str, ...] | None = None
    """Pass `source_ids`, each token's data source index, for per-source loss logging."""
    rope_index: object = None
    """Qwen-family mRoPE: `(input_ids (1, n), mm_token_type_ids (1, n), image_grid_thw | None) -> (3, 1, n)`
    position ids of one sample (`mrope_index(model)`); `position_ids` are then `(4, rows, L)`."""

    def __call__(self, batch: list[dict]) -> dict:
        lengths = [len(b["input_ids"]) for b in batch]
        rows = pack_rows(lengths, None if self.one_row else (self.capacity or max(lengths)))
        width = max(sum(len(batch[i]["input_ids"]) for i in row) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        source_ids = torch.zeros((len(rows), width), dtype=torch.long)
        weighted = any("weights" in b for b in batch)
        label_weights = torch.ones((len(rows), width)) if weighted else None
        pixels, features, processed = [], [], []
        token_keys = sorted({k for b in batch for k in b.get("token_inputs", {})})
        token_inputs = {k: torch.zeros((len(rows), width), dtype=torch.long) for k in token_keys}
        mrope = torch.zeros((3, len(rows), width), dtype=torch.long) if self.rope_index is not None else None
        for r, row in enumerate(rows):
            start = 0
            for i in row:
                b = batch[i]
                n = len(b["input_ids"])
                input_ids[r, start:start + n] = torch.tensor(b["input_ids"])
                labels[r, start + 1:start + n] = torch.tensor(b["labels"][1:])  # nothing predicted across samples
                if weighted and "weights" in b:
                    label_weights[r, start:start + n] = torch.tensor(b["weights"])
                position_ids[r, start:start + n] = torch.arange(n)
                for k in token_keys:
                    if k in b.get("token_inputs", {}):
                        token_inputs[k][r, start:start + n] = torch.tensor(b["token_inputs"][k])
                if mrope is not None:  # this sample's own mRoPE rows, as if it were alone
                    types = (token_inputs["mm_token_type_ids"][r:r + 1, start:start + n]
                             if "mm_token_type_ids" in token_inputs else torch.zeros((1, n), dtype=torch.long))
                    grid = b.get("image_inputs", {}).get("image_grid_thw")
                    mrope[:, r, start:start + n] = self.rope_index(input_ids[r:r + 1, start:start + n], types, grid)[:, 0]
                if self.sources is not None:
                    source_ids[r, start:start + n] = self.sources.index(b["source"])
                start += n
                if b.get("pixel_values") is not None:
                    pixels.append(b["pixel_values"])
                if b.get("vision_features") is not None:
                    features.append(b["vision_features"])
                if b.get("image_inputs"):
                    processed.append(b["image_inputs"])
            position_ids[r, start:] = torch.arange(width - start)  # the pad tail is a segment of its own
            if mrope is not None:
                mrope[:, r, start:] = torch.arange(width - start)
        # use_cache=False: transformers skips packed-sequence detection whenever a KV cache exists, and the
        # Trainer switches the cache off only on the top-level LlavaConfig, not on the LLM's own config.
        if mrope is not None:  # the text row first: transformers finds the samples' boundaries in it
            position_ids = torch.cat([position_ids[None], mrope])
        out = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "use_cache": False, **token_inputs}
        for key in processed[0] if processed else ():  # the processor's own image inputs, in packed order
            out[key] = concat_padded([p[key] for p in processed])
        if pixels:
            out["pixel_values"] = torch.stack(pixels)  # (n_images, 3, S, S), in packed order
        if features:
            out["vision_features"] = torch.stack(features)  # (n_images, tokens, width), in packed order
        if self.sources is not None:
            out["source_ids"] = source_ids  # (rows, L): per token, since a row holds several samples
        if weighted:
            out["label_weights"] = label_weights
        if self.supervised_logits:
            out["logits_to_keep"] = supervised_positions(labels)
        return out


def supervised_positions(labels: torch.Tensor) -> torch.Tensor:
    """(rows, L) labels -> 1D positions t whose next token t + 1 is supervised in some row."""
    keep = (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(1)
    return keep if keep.numel() else torch.zeros(1, dtype=torch.long, device=labels.device)


def supervised_loss(outputs, labels: torch.Tensor, num_items_in_batch=None,
                    weights: torch.Tensor | None = None) -> torch.Tensor:
    """Causal-LM cross-entropy from logits kept at `supervised_positions(labels)` only.

    Same reduction as transformers' `ForCausalLMLoss`: a sum over supervised tokens divided by
    `num_items_in_batch` (the whole accumulated batch's count) when given, else their mean.
    `weights` (rows, L), aligned with `labels`: each token's loss is multiplied by its weight before the
    sum, the divisor stays the token count (`vlx.data.decisions`: decision tokens count more).
    """
    keep = supervised_positions(labels)
    target = labels[:, 1:][:, keep].to(outputs.logits.device)  # (rows, kept)
    if weights is None:
        loss = F.cross_entropy(outputs.logits.float().flatten(0, 1), target.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="sum")
    else:
        per_token = F.cross_entropy(outputs.logits.float().flatten(0, 1), target.flatten(),
                                    ignore_index=IGNORE_INDEX, reduction="none")
        loss = (per_token * weights[:, 1:][:, keep].to(per_token.device).flatten()).sum()
    if num_items_in_batch is None:
        return loss / (target != IGNORE_INDEX).sum()
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch
