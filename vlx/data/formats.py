"""Reading training data: LLaVA JSON, JSONL, Hugging Face `datasets`, and mixtures of sources.

A LLaVA row is `{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."},
{"from": "gpt", "value": "..."}]}`; text-only rows omit `image`. Image paths resolve against
`image_folder`, else against the data file's own folder.

A mixture is a YAML file listing sources, each with LLaVA-1.5's response-format prompt for its
kind of answer (the paper's table 7 mixture is written this way in `templates/`):

    sources:
      - name: vqa
        path: vqa.json                   # relative to the YAML file
        format_prompt: "Answer the question using a single word or phrase."
        ratio: 1.0                       # 0.5 keeps a random half, 2.0 repeats the source twice
        spell: false                     # true: answers trained a character per token (text unchanged)
      - name: conversation
        path: llava_158k.json            # no format_prompt: free-form answers

The format prompt is appended to every human turn of the source's rows, on a new line, as the
reference mixture does (`"...?\\nAnswer the question using a single word or phrase."`).

`spell: true` marks a source whose answers are text read off the image (signs, plates): they are
tokenized one character per token (`vlx.data.templates.encode_chars`), the form in which a tower that
reads glyph by glyph hands the LLM that text; the decoded text is the same.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlx.inputs import InputError, read_json, read_jsonl, read_yaml

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE_PROMPT = "Answer with the option's letter from the given choices directly."


class DataError(InputError):
    """Data that cannot be trained on; the message lists every problem with its file and row."""


@dataclass
class Row:
    """One sample, with where it came from for error messages."""

    origin: str
    """`file:row` (1-based row number, or `line N` for JSONL)."""
    conversations: list[dict]
    image: Any = None
    """A resolved image path, a PIL image (from `datasets`), or None for text-only rows."""
    id: str | None = None
    source: str = "default"
    format_prompt: str | None = None
    raw: dict = field(default_factory=dict, repr=False)
    spell: bool = False
    """Answers tokenized one character per token (the source's `spell: true`)."""


@dataclass
class Problem:
    origin: str
    message: str

    def __str__(self) -> str:
        return f"{self.origin}: {self.message}"


@dataclass
class Source:
    name: str
    path: str
    format_prompt: str | None = None
    ratio: float = 1.0
    spell: bool = False


def read_sources(path: str | Path) -> list[Source]:
    """A data argument -> sources: a mixture YAML, or one file/dataset as a single source."""
    path_str = str(path)
    if path_str.endswith((".yaml", ".yml")):
        p = Path(path)
        try:
            spec = read_yaml(p)
        except InputError as e:
            raise DataError(f"cannot read mixture {e}") from None
        if not isinstance(spec, dict) or not isinstance(spec.get("sources"), list) or not spec["sources"]:
            raise DataError(f"{p}: a mixture needs a non-empty 'sources:' list (see vlx/data/formats.py)")
        sources = []
        for i, s in enumerate(spec["sources"]):
            if not isinstance(s, dict) or not isinstance(s.get("path", ""), str):
                raise DataError(f"{p}: source {i}: write a mapping with a string 'path' (and name, format_prompt, "
                                f"ratio, spell), got {s!r:.80}")
            unknown = set(s) - {"name", "path", "format_prompt", "ratio", "spell"}
            if unknown or "path" not in s:
                raise DataError(f"{p}: source {i}: keys are name, path, format_prompt, ratio, spell "
                                f"({'unknown: ' + ', '.join(sorted(unknown)) if unknown else 'path is missing'})")
            src_path = s["path"] if Path(s["path"]).is_absolute() else str(p.parent / s["path"])
            try:
                ratio = float(s.get("ratio", 1.0))
            except (TypeError, ValueError):
                raise DataError(f"{p}: source {s.get('name', i)}: ratio must be a number, got {s.get('ratio')!r}") from None
            if not ratio > 0 or ratio == float("inf"):
                raise DataError(f"{p}: source {s.get('name', i)}: ratio must be > 0, got {ratio}")
            if not isinstance(s.get("spell", False), bool):
                raise DataError(f"{p}: source {s.get('name', i)}: spell must be true or false, got {s.get('spell')!r}")
            sources.append(Source(s.get("name", Path(s["path"]).stem), src_path, s.get("format_prompt"), ratio,
                                  s.get("spell", False)))
        return sources
    return [Source(Path(path_str).stem, path_str)]


def _records(path: str, problems: list[Problem]) -> tuple[list[tuple[str, Any]], Path | None]:
    """-> ([(origin, record)], folder images resolve against). A bad JSONL line is one problem."""
    p = Path(path)
    if p.suffix == ".jsonl":
        out = []
        try:
            lines = read_jsonl(p)
        except InputError as e:
            raise DataError(str(e)) from None
        for n, value in lines:
            if isinstance(value, InputError):
                problems.append(Problem(f"{p}:line {n}", str(value).removeprefix(f"{p}:line {n}: ")))
            else:
                out.append((f"{p}:line {n}", value))
        return out, p.parent
    if p.suffix == ".json":
        try:
            data = read_json(p)
        except InputError as e:
            raise DataError(str(e)) from None
        if not isinstance(data, list):
            raise DataError(f"{p}: expected a JSON list of LLaVA rows, got a {type(data).__name__}")
        return [(f"{p}:row {n}", r) for n, r in enumerate(data, 1)], p.parent
    # A `datasets` directory saved with save_to_disk, or a hub dataset id.
    import datasets

    try:
        ds = datasets.load_from_disk(str(p)) if p.is_dir() else datasets.load_dataset(str(path), split="train")
    except Exception as e:  # noqa: BLE001 - datasets raises many types for "not a dataset"
        raise DataError(f"cannot load {path}: not a .json/.jsonl file, a saved `datasets` directory or a "
                        f"dataset id ({e})") from e
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"]
    return [(f"{path}:row {n}", r) for n, r in enumerate(ds, 1)], (p if p.is_dir() else None)


def load_rows(data: str | Path, *, image_folder: str | Path | None = None, seed: int = 0,
              problems: list[Problem] | None = None) -> list[Row]:
    """Read every source of `data` into rows. Structural problems go to `problems` (all of them)."""
    problems = [] if problems is None else problems
    rows: list[Row] = []
    for source in read_sources(data):
        records, folder = _records(source.path, problems)
        base = Path(image_folder) if image_folder else folder
        source_rows = []
        for origin, rec in records:
            if not isinstance(rec, dict) or not isinstance(rec.get("conversations"), list):
                problems.append(Problem(origin, "not a LLaVA row: needs a 'conversations' list of "
                                                "{'from': 'human'|'gpt', 'value': ...}"))
                continue
            image = rec.get("image")
            if isinstance(image, str) and image.strip() and base is not None and not Path(image).is_absolute():
                image = str(base / image)
            source_rows.append(Row(origin, rec["conversations"], image, rec.get("id"), source.name,
                                   source.format_prompt, rec, source.spell))
        rows += _apply_ratio(source_rows, source.ratio, random.Random(f"{seed}-{source.name}"))
    return rows


def _apply_ratio(rows: list[Row], ratio: float, rng: random.Random) -> list[Row]:
    whole, frac = int(ratio), ratio - int(ratio)
    out = rows * whole
    if frac:
        out += rng.sample(rows, math.floor(len(rows) * frac))
    return out
