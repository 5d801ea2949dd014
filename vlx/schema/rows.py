"""Validate schema-extraction training rows before anything trains on them.

Each JSONL line is `{"image": "<path>", "target": {...}, "prompt": "<optional instruction>"}`;
image paths are relative to `image_folder`, or to the data file's folder. Every line is checked
and every problem is reported (row number, field path, message), so one pass over the data finds
them all:

    report = validate_rows("rows.jsonl", StreetScene)
    if report.errors:
        print(report.format())
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ValidationError

from vlx.inputs import InputError, check_image, parse_json, read_text
from vlx.schema.canonical import canonical_json, undecodable


@dataclass(frozen=True)
class RowError:
    row: int
    """1-based line number in the data file."""
    field: str
    """Field path inside the row (`target.pois[0].category`), or the row key at fault."""
    message: str
    source: str = "<rows>"
    """The data file the row comes from."""

    def __str__(self) -> str:
        return f"{self.source} row {self.row}: {self.field}: {self.message}"

    def to_dict(self) -> dict:
        return {"source": self.source, "row": self.row, "field": self.field, "message": self.message}


@dataclass(frozen=True)
class Row:
    row: int
    image: Path | None
    target: BaseModel
    prompt: str | None = None

    @property
    def text(self) -> str:
        """The canonical answer text the model trains on."""
        return canonical_json(self.target)


@dataclass
class RowReport:
    source: str
    rows: list[Row] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    bad_lines: dict[int, str] = field(default_factory=dict)
    """Raw text of each rejected line, by row number (for a rejects file)."""

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def problems(self) -> list[RowError]:
        return self.errors

    def format(self, limit: int = 50) -> str:
        rows = sorted({e.row for e in self.errors})
        head = f"{self.source}: {len(rows)} invalid row(s) of {len(rows) + len(self.rows)}"
        lines = [f"row {e.row}: {e.field}: {e.message}" for e in self.errors[:limit]]
        if len(self.errors) > limit:
            lines.append(f"... and {len(self.errors) - limit} more")
        return "\n".join([head, *("  " + line for line in lines)])


def validate_rows(source: str | Path | Iterable[dict | str], Schema: type[BaseModel], *,
                  image_folder: str | Path | None = None, check_images: bool = True) -> RowReport:
    """Validate every row of a JSONL file (or an iterable of rows) against `Schema`.

    Checks per row: the line is a JSON object (within `vlx.inputs`' limits); `image` is a string
    naming a file that decodes as an image within the pixel limit (when `check_images`); `target` validates against `Schema` with no extra keys; every string
    in it can be produced by the constrained decoder; `prompt`, if present, is a string.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        base = Path(image_folder) if image_folder is not None else path.parent
        lines: Iterable[tuple[int, dict | str]] = enumerate(read_text(path).splitlines(), 1)
        report = RowReport(str(path))
    else:
        base = Path(image_folder) if image_folder is not None else Path.cwd()
        lines = enumerate(source, 1)
        report = RowReport("<rows>")
    for number, line in lines:
        if isinstance(line, str) and not line.strip():
            continue
        row, errors = _check_row(number, line, Schema, base, check_images)
        if errors:
            report.errors += [dataclasses.replace(e, source=report.source) for e in errors]
            report.bad_lines[number] = line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)
        else:
            report.rows.append(row)
    return report


def _check_row(number: int, line: dict | str, Schema, base: Path, check_images: bool):
    errors: list[RowError] = []
    if isinstance(line, str):
        try:
            line = parse_json(line)
        except InputError as e:
            return None, [RowError(number, "line", str(e))]
    if not isinstance(line, dict):
        return None, [RowError(number, "line", f"expected a JSON object, got {type(line).__name__}")]

    image = None
    if "image" not in line:
        errors.append(RowError(number, "image", "missing; give the image path"))
    elif not isinstance(line["image"], str):
        errors.append(RowError(number, "image", f"must be a path string, got {type(line['image']).__name__}"))
    elif not line["image"].strip():
        errors.append(RowError(number, "image", "is an empty string; give the image path"))
    else:
        image = base / line["image"]
        problem = check_image(image) if check_images else None
        if problem:
            errors.append(RowError(number, "image", problem))

    prompt = line.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        errors.append(RowError(number, "prompt", f"must be a string, got {type(prompt).__name__}"))

    target = None
    if "target" not in line:
        errors.append(RowError(number, "target", "missing; give the expected answer as a JSON object"))
    elif not isinstance(line["target"], dict):
        errors.append(RowError(number, "target", f"must be a JSON object, got {type(line['target']).__name__}"))
    else:
        try:
            target = Schema.model_validate(line["target"], extra="forbid")
        except ValidationError as e:
            for err in e.errors():
                errors.append(RowError(number, _field_path(err["loc"]), err["msg"]))
        if target is not None:
            for path, reason in undecodable(target):
                errors.append(RowError(number, f"target.{path}", reason))
    if errors:
        return None, errors
    return Row(number, image, target, prompt), []


def _field_path(loc: tuple) -> str:
    path = "target"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path
