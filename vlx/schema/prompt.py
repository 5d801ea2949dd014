"""Per-task response-format prompts derived from the schema.

LLaVA-1.5 appends a short format instruction to each task's questions ("Answer the question
using a single word or phrase."); the paper's ablation credits it with letting one model switch
between terse task answers and free chat. Two forms for an extraction task:

- `cue` (the fine-tuning default): one line, as LLaVA-1.5 writes its format prompts, the task and
  "Answer in JSON." The grammar already enforces the structure, and a fine-tuned model learns
  the fields from its targets, so spelling them out costs prompt tokens on every image for
  nothing the decoder does not already guarantee:

      >>> print(format_prompt(StreetScene, style="cue"))  # doctest: +SKIP
      Every storefront visible in the image, left to right (none is a valid answer). Answer in JSON.

- `schema`: the task plus a compact description of every field, so that a model that was never
  trained on the task (a base model used zero-shot) sees the contract it is decoded under:

      >>> print(format_prompt(StreetScene, style="schema"))  # doctest: +SKIP
      Every storefront visible in the image, left to right (none is a valid answer).
      Answer in JSON: {pois: list of up to 3 {name: text (max 40; as written on the sign), ...}}.
      Use null for what is not visible.
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from vlx.schema.load import inline

DEFAULT_TASK = "Extract the information shown in the image."
MAX_PATTERN_SHOWN = 20


STYLES = ("cue", "schema")


def format_prompt(Schema: type[BaseModel], task: str | None = None, style: str = "schema") -> str:
    """The response-format prompt for `Schema`: `task` (default: the model's docstring), then
    "Answer in JSON." (`style="cue"`) or a description of the fields (`style="schema"`)."""
    if style not in STYLES:
        raise ValueError(f"format prompt style {style!r}: use one of {', '.join(STYLES)}")
    if task is None:
        doc = (Schema.__doc__ or "").strip()
        task = doc.split("\n\n")[0].replace("\n", " ") if doc and doc != BaseModel.__doc__.strip() else DEFAULT_TASK
    if style == "cue":
        return f"{task.strip()} Answer in JSON."
    tree = inline(Schema, keep_docs=True)
    lines = [task.strip(), f"Answer in JSON: {_describe(tree, top=True)}."]
    if _has_null(tree):
        lines.append("Use null for what is not visible.")
    return "\n".join(lines)


def _describe(node: dict, top: bool = False) -> str:
    note = f" ({node['description']})" if node.get("description") and not top else ""
    if "anyOf" in node:
        parts = [_describe(b) for b in node["anyOf"] if b.get("type") != "null"]
        nullable = any(b.get("type") == "null" for b in node["anyOf"])
        return " or ".join(parts) + (" or null" if nullable else "") + note
    if "enum" in node:
        return "one of " + "|".join(v if isinstance(v, str) else json.dumps(v) for v in node["enum"]) + note
    kind = node.get("type")
    if kind == "object":
        fields = ", ".join(f"{k}: {_describe(v)}" for k, v in node["properties"].items())
        return "{" + fields + "}" + note
    if kind == "array":
        lo, hi = node["minItems"], node["maxItems"]
        size = f"up to {hi}" if lo == 0 else f"{lo} to {hi}"
        return f"list of {size} {_describe(node['items'])}" + note
    if kind == "string":
        if "format" in node:
            return {"date": "date YYYY-MM-DD", "uuid": "UUID"}[node["format"]] + note
        if "pattern" in node and not note:
            # Short patterns tell the model the format; long ones cost prompt tokens on every
            # image, and the grammar enforces them anyway.
            pattern = node["pattern"].removeprefix("^").removesuffix("$")
            return f"text like {pattern}" if len(pattern) <= MAX_PATTERN_SHOWN else "text"
        if "maxLength" in node:
            return f"text (max {node['maxLength']}{'; ' + node['description'] if note else ''})"
        return "text" + note
    if kind in ("integer", "number"):
        return f"{'integer' if kind == 'integer' else 'number'} {node['minimum']} to {node['maximum']}" + note
    if kind == "boolean":
        return "true or false" + note
    return "null"


def _has_null(node) -> bool:
    if isinstance(node, dict):
        if node.get("type") == "null":
            return True
        return any(_has_null(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_null(v) for v in node)
    return False
