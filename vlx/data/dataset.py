"""From rows to training tensors, with every problem found before the first optimizer step.

`prepare` checks and tokenizes every row up front: conversation structure, `<image>` placeholder
count, the image file (exists, decodes), and the length including image tokens. It returns the
encoded examples and the full list of problems, so a run either starts clean or stops with every
bad row listed (or, with `--skip-invalid`, trains on the rest and writes the rejects).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vlx import inputs
from vlx.data.formats import DataError, Problem, Row
from vlx.data.templates import IGNORE_INDEX, SampleError, Turn, encode, fit_length, render, to_turns
from vlx.model.llava import IMAGE_TOKEN


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    image: Any  # path, PIL image, or None
    origin: str
    source: str
    weights: list[float] | None = None
    """Per-position loss weights (`vlx.data.decisions`); None: every supervised token counts once."""

    @property
    def has_image(self) -> bool:
        return self.image is not None


def open_image(image: Any, *, origin: str = "") -> Image.Image:
    """A path, bytes or PIL image -> RGB PIL image (`vlx.inputs.open_image`); `DataError` if unreadable."""
    try:
        return inputs.open_image(image, origin=origin)
    except inputs.InputError as e:
        raise DataError(str(e)) from None


def check_image(image: Any, origin: str) -> str | None:
    """Everything `open_image` would refuse, found before step 0; returns the problem or None."""
    if not isinstance(image, (str, Image.Image)):
        return f"'image' must be a file path, got {type(image).__name__}"
    if isinstance(image, str) and not image.strip():
        return "'image' is an empty string; give the image's path (or drop the key for a text-only row)"
    return inputs.check_image(image)


def row_turns(row: Row, template: str) -> list[Turn]:
    """Structure checks, `<image>` placeholder checks and the source's format prompt."""
    turns = to_turns(row.conversations)
    n_placeholders = sum(t.user.count(IMAGE_TOKEN) for t in turns) + sum(t.assistant.count(IMAGE_TOKEN) for t in turns)
    if row.image is not None and n_placeholders != 1:
        raise SampleError(f"the row has an image but {n_placeholders} {IMAGE_TOKEN} placeholders; "
                          f"put exactly one {IMAGE_TOKEN} in the first human turn")
    if row.image is None and n_placeholders:
        raise SampleError(f"{n_placeholders} {IMAGE_TOKEN} placeholder(s) but no 'image' key; "
                          "add the image path or remove the placeholder")
    if row.format_prompt and template != "plain":
        turns = [Turn(f"{t.user}\n{row.format_prompt}", t.assistant) for t in turns]
    return turns


def prepare(rows: list[Row], tokenizer, *, template: str, image_token_id: int, num_image_tokens: int,
            max_length: int, truncate: bool = False, check_images: bool = True,
            eos_token: str | None = None, spell: tuple[str, ...] = ()) -> tuple[list[Example], list[Problem]]:
    """Validate and tokenize every row; return (examples, problems). Nothing is skipped silently.

    `spell`: JSON keys whose string values in answers are tokenized a character per token
    (`vlx.data.templates.encode_spelled`); a row of a `spell: true` source has every answer so."""
    examples, problems = [], []
    eos = eos_token or tokenizer.eos_token
    for row in rows:
        try:
            turns = row_turns(row, template)
            if row.image is not None and check_images:
                msg = check_image(row.image, row.origin)
                if msg:
                    raise SampleError(msg)
            enc = encode(tokenizer, render(template, turns, eos_token=eos),
                         image_token_id=image_token_id, num_image_tokens=num_image_tokens,
                         spell=spell if row.source != "chat" else (), spell_answers=row.spell)
            enc = fit_length(enc, max_length, row=row.origin, truncate=truncate)
        except SampleError as e:
            problems.append(Problem(row.origin, str(e).removeprefix(f"{row.origin}: ")))
            continue
        examples.append(Example(enc.input_ids, enc.labels, row.image, row.origin, row.source))
    return examples, problems


def report_problems(problems: list[Problem], *, what: str, limit: int = 30) -> str:
    lines = [f"{len(problems)} invalid row(s) in {what}; nothing was trained. Fix them, or pass "
             "--skip-invalid to train on the rest (the rejects are written to rejected.jsonl):"]
    lines += [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more (run `vlx data validate` for the full list)")
    return "\n".join(lines)


def write_rejects(problems: list[Problem], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps({"origin": p.origin, "problem": p.message}, ensure_ascii=False) + "\n")


class LlavaDataset(torch.utils.data.Dataset):
    """Encoded examples; images are decoded and preprocessed lazily in `__getitem__`."""

    def __init__(self, examples: list[Example], image_processor):
        self.examples = examples
        self.image_processor = image_processor

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def lengths(self) -> list[int]:
        """Token lengths, positive for image rows and negative for text rows (LLaVA's convention)."""
        return [len(e.input_ids) if e.has_image else -len(e.input_ids) for e in self.examples]

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        item = {"input_ids": ex.input_ids, "labels": ex.labels, "pixel_values": None, "source": ex.source}
        if ex.weights is not None:
            item["weights"] = ex.weights
        if ex.has_image:
            img = open_image(ex.image, origin=ex.origin)
            # (3, S, S): pad-to-square / resize / normalise as stored in the processor.
            item["pixel_values"] = self.image_processor(img, return_tensors="pt")["pixel_values"][0]
        return item


def concat_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate on dim 0, zero-padding every other dim to the largest, as each family's processor pads
    a batch of its own: LLaVA-NeXT's anyres tiles (the model keeps the first `image_sizes` gives),
    SmolVLM's image splits (all-zero images are dropped). Same-shaped inputs (Qwen) concatenate as they are."""
    if len({t.shape[1:] for t in tensors}) == 1:
        return torch.cat(tensors)
    shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    out = tensors[0].new_zeros((sum(t.shape[0] for t in tensors), *shape))
    start = 0
    for t in tensors:
        out[(slice(start, start + t.shape[0]), *(slice(0, n) for n in t.shape[1:]))] = t
        start += t.shape[0]
    return out


@dataclass
class Collator:
    """Right-pads a batch; stacks pixel values of the rows that have an image (in row order).

    Rows of `vlx.data.vlm_data.VlmDataset` carry the processor's own image inputs instead, which are
    concatenated (Qwen: `pixel_values` patches x dim, `image_grid_thw`), and per-token inputs
    (`mm_token_type_ids`), padded with 0.

    With `sources`, each row's data source is passed on as `source_ids` for per-source loss logging.
    With `supervised_logits`, `logits_to_keep` names the positions whose next token is supervised
    in some row, so the model projects only those onto the vocabulary (train with
    `compute_loss_func=vlx.data.packing.supervised_loss`: the same loss, tested).
    """

    pad_token_id: int
    sources: tuple[str, ...] | None = None
    supervised_logits: bool = False

    def __call__(self, batch: list[dict]) -> dict:
        width = max(len(b["input_ids"]) for b in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            input_ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            attention_mask[i, :n] = 1
        # use_cache=False: the Trainer switches the KV cache off on the top-level LLaVA config only,
        # so the LLM would otherwise build one on every training step.
        out = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, "use_cache": False}
        pixels = [b["pixel_values"] for b in batch if b["pixel_values"] is not None]
        if pixels:
            out["pixel_values"] = torch.stack(pixels)  # (n_images, 3, S, S)
        for key in {k for b in batch for k in b.get("token_inputs", {})}:  # per token, 0 where a row has none
            out[key] = torch.zeros((len(batch), width), dtype=torch.long)
            for i, b in enumerate(batch):
                if key in b.get("token_inputs", {}):
                    out[key][i, :len(b["input_ids"])] = torch.tensor(b["token_inputs"][key])
        processed = [b["image_inputs"] for b in batch if b.get("image_inputs")]
        for key in processed[0] if processed else ():  # rows of `vlx.data.vlm_data.VlmDataset`: the
            out[key] = concat_padded([p[key] for p in processed])  # processor's own layout (Qwen: patches x dim)
        features = [b["vision_features"] for b in batch if b.get("vision_features") is not None]
        if features:  # rows from `vlx.data.feature_cache.CachedFeatureDataset`
            out["vision_features"] = torch.stack(features)  # (n_images, tokens, width)
        if self.sources is not None:
            out["source_ids"] = torch.tensor([self.sources.index(b["source"]) for b in batch])
        if any("weights" in b for b in batch):  # decision tokens (`vlx.data.decisions`); 1 for rows without
            out["label_weights"] = torch.ones((len(batch), width))
            for i, b in enumerate(batch):
                if "weights" in b:
                    out["label_weights"][i, :len(b["weights"])] = torch.tensor(b["weights"])
        if self.supervised_logits:
            from vlx.data.packing import supervised_positions

            out["logits_to_keep"] = supervised_positions(labels)
        return out
