"""Per-field metrics for schema extraction, generic over any pydantic schema.

    report = field_metrics(predictions, golds, StreetScene)
    print(format_table(report))

The schema's fields are walked recursively and every leaf gets a dotted path (`pois[].name`,
`pois[].address.house_number`). What each kind of field is scored with:

- enums, literals, numbers, bools: exact match (`accuracy`);
- free text: normalised exact match (casefold, strip, collapse whitespace) as `accuracy`, and
  the character error rate `cer` = edit distance / gold length on the raw (stripped) strings;
- lists of scalars or of flat models (a model with only scalar fields, e.g. opening hours):
  sets, scored by micro precision/recall/F1 over elements (a model element is the tuple of its
  values) and `accuracy` = the whole set is right;
- lists of richer models (the POI list): aligned in order, element i against element i. Every
  field of a missing or extra element counts as an error, and `count_accuracy` says how often
  the number of elements was right.

`schema_valid_rate` is the share of predictions that validate against the schema; an invalid or
missing prediction (None, bad JSON, a failed validation) scores as an empty answer on every
field. Each field also gets a majority-class baseline computed from the gold data: the score of
always answering the most common gold value, to print beside the model's.

`None` compared with `None` is a match (an optional field correctly left empty).
"""

from __future__ import annotations

import json
import types
import typing
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

_MISSING = object()  # an element present on one side only (aligned lists)


@dataclass
class _Node:
    kind: str
    """`model`, `aligned` (list of rich models), `set` (list of scalars/flat models), `exact` or `text`."""
    children: dict[str, _Node] = field(default_factory=dict)
    item: _Node | None = None


def _unwrap(annotation):
    """Strip Optional/Annotated: `str | None` -> str."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else annotation
    return annotation


def _node(annotation) -> _Node:
    annotation = _unwrap(annotation)
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _Node("model", {name: _node(f.annotation) for name, f in annotation.model_fields.items()})
    if origin in (list, tuple, set, frozenset, Sequence):
        args = typing.get_args(annotation)
        item = _node(args[0] if args else Any)
        flat = item.kind != "model" or all(c.kind in ("exact", "text") for c in item.children.values())
        return _Node("set" if flat else "aligned", item=item)
    if annotation is str:
        return _Node("text")
    return _Node("exact")  # enums, literals, numbers, bools and anything else compared as values


def schema_paths(schema: type[BaseModel]) -> dict[str, str]:
    """Every scored path of `schema` and how it is scored (`exact`, `text`, `set`, `aligned`).

    >>> from pydantic import BaseModel
    >>> class A(BaseModel):
    ...     name: str
    ...     tags: list[str]
    >>> schema_paths(A)
    {'name': 'text', 'tags': 'set'}
    """
    out: dict[str, str] = {}

    def walk(node: _Node, path: str) -> None:
        if node.kind == "model":
            for name, child in node.children.items():
                walk(child, f"{path}.{name}" if path else name)
        else:
            out[path] = node.kind
            if node.kind == "aligned":
                for name, child in node.item.children.items():
                    walk(child, f"{path}[].{name}")

    walk(_node(schema), "")
    return out


def normalize_text(text: str | None) -> str | None:
    """Casefold, strip and collapse whitespace: the comparison used for free-text accuracy."""
    return None if text is None else " ".join(str(text).casefold().split())


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def cer(prediction: str | None, gold: str | None) -> float:
    """Character error rate: edit distance / len(gold); with an empty gold, 0.0 if the prediction
    is empty too, else 1.0. None counts as the empty string."""
    p, g = (prediction or "").strip(), (gold or "").strip()
    if not g:
        return 0.0 if not p else 1.0
    return edit_distance(p, g) / len(g)


class _Acc:
    """Running totals for one path."""

    def __init__(self, kind: str):
        self.kind = kind
        self.n = self.correct = self.tp = self.fp = self.fn = 0
        self.cer_sum = 0.0
        self.gold: list = []  # gold values seen (for the majority baseline)


def _element(value) -> Any:
    return tuple(value.values()) if isinstance(value, dict) else value


def _as_set(value) -> frozenset:
    if value is _MISSING or value is None:
        return frozenset()
    return frozenset(_element(v) for v in value)


def _score_leaf(acc: _Acc, pred, gold) -> None:
    """One comparison; `_MISSING` on either side is an error (and no gold value is recorded)."""
    acc.n += 1
    if gold is not _MISSING:
        acc.gold.append(_as_set(gold) if acc.kind == "set" else gold)
    if acc.kind == "set":
        p, g = _as_set(pred), _as_set(gold)
        acc.tp += len(p & g)
        acc.fp += len(p - g)
        acc.fn += len(g - p)
        acc.correct += pred is not _MISSING and gold is not _MISSING and p == g
    elif acc.kind == "text":
        p = None if pred is _MISSING else pred
        g = None if gold is _MISSING else gold
        acc.correct += pred is not _MISSING and gold is not _MISSING and normalize_text(p) == normalize_text(g)
        acc.cer_sum += cer(p, g)
    else:
        acc.correct += pred is not _MISSING and gold is not _MISSING and pred == gold


def _walk(node: _Node, pred, gold, path: str, accs: dict[str, _Acc]) -> None:
    if node.kind == "model":
        for name, child in node.children.items():
            p = pred.get(name) if isinstance(pred, dict) else (None if pred is None else _MISSING)
            g = gold.get(name) if isinstance(gold, dict) else (None if gold is None else _MISSING)
            _walk(child, p, g, f"{path}.{name}" if path else name, accs)
    elif node.kind == "aligned":
        acc = accs.setdefault(path, _Acc("aligned"))
        preds = [] if pred in (_MISSING, None) else list(pred)
        golds = [] if gold in (_MISSING, None) else list(gold)
        if gold is not _MISSING:
            acc.n += 1
            acc.correct += pred is not _MISSING and len(preds) == len(golds)
        for i in range(max(len(preds), len(golds))):
            _walk(node.item, preds[i] if i < len(preds) else _MISSING, golds[i] if i < len(golds) else _MISSING,
                  f"{path}[]", accs)
    else:
        _score_leaf(accs.setdefault(path, _Acc(node.kind)), pred, gold)


def _to_data(obj, schema: type[BaseModel]):
    """-> JSON-like data of a valid instance, or None when `obj` is missing or not schema-valid."""
    if obj is None:
        return None
    try:
        if isinstance(obj, (str, bytes)):
            obj = schema.model_validate_json(obj)
        elif not isinstance(obj, BaseModel):
            obj = schema.model_validate(obj)
    except ValidationError:
        return None
    return obj.model_dump(mode="json")


def _baseline(acc: _Acc) -> dict[str, float] | None:
    """Scores of always answering the most common gold value of this path."""
    if not acc.gold:
        return None
    values = acc.gold
    counts = Counter(normalize_text(v) if acc.kind == "text" else _hashable(v) for v in values)
    top, freq = counts.most_common(1)[0]
    if acc.kind == "set":
        tp = sum(len(top & g) for g in values)
        fp = sum(len(top - g) for g in values)
        fn = sum(len(g - top) for g in values)
        return {"accuracy": freq / len(values), **_prf(tp, fp, fn)}
    out = {"accuracy": freq / len(values), "value": top}
    if acc.kind == "text":
        # The most common raw spelling of the majority value, scored by CER against each gold string.
        raw = Counter(v for v in values if normalize_text(v) == top).most_common(1)[0][0]
        out["cer"] = sum(cer(raw, g) for g in values) / len(values)
    return out


def _hashable(value):
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def field_metrics(predictions: Sequence, golds: Sequence, schema: type[BaseModel] | None = None) -> dict:
    """Score predicted instances against gold ones, field by field.

    `predictions[i]` is a schema instance, a dict, a JSON string or None (nothing produced);
    `golds[i]` an instance or dict (must be schema-valid). Returns
    `{"n", "schema_valid_rate", "fields": {path: {"kind", "n", "accuracy", ... , "baseline"}}}`.

    >>> from pydantic import BaseModel
    >>> class Shop(BaseModel):
    ...     name: str
    ...     open: bool
    >>> r = field_metrics([{"name": "Cafe  Luna", "open": True}], [Shop(name="cafe luna", open=False)])
    >>> r["fields"]["name"]["accuracy"], r["fields"]["open"]["accuracy"]
    (1.0, 0.0)
    """
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions but {len(golds)} gold answers")
    if not golds:
        raise ValueError("no gold answers to score against")
    if schema is None:
        if not isinstance(golds[0], BaseModel):
            raise ValueError("give `schema` when the gold answers are dicts")
        schema = type(golds[0])
    root = _node(schema)
    accs: dict[str, _Acc] = {}
    valid = 0
    for i, (pred, gold) in enumerate(zip(predictions, golds)):
        g = _to_data(gold, schema)
        if g is None:
            raise ValueError(f"gold answer {i} is not a valid {schema.__name__}")
        p = _to_data(pred, schema)
        valid += p is not None
        _walk(root, p if p is not None else _MISSING, g, "", accs)
    fields: dict[str, dict] = {}
    for path, acc in accs.items():
        entry: dict[str, Any] = {"kind": acc.kind, "n": acc.n}
        if acc.kind == "aligned":
            entry["count_accuracy"] = acc.correct / acc.n if acc.n else 0.0
        else:
            entry["accuracy"] = acc.correct / acc.n if acc.n else 0.0
            if acc.kind == "text":
                entry["cer"] = acc.cer_sum / acc.n if acc.n else 0.0
            if acc.kind == "set":
                entry.update(_prf(acc.tp, acc.fp, acc.fn))
            entry["baseline"] = _baseline(acc)
        fields[path] = entry
    return {"n": len(golds), "schema_valid_rate": valid / len(golds), "fields": fields}


def format_table(report: dict) -> str:
    """A markdown table: each field's main metric beside its majority-class baseline."""
    lines = [f"Schema-valid: {report['schema_valid_rate']:.1%} of {report['n']}", "",
             "| Field | Metric | Model | Majority baseline | n |", "|---|---|---|---|---|"]
    nan = float("nan")
    for path, f in report["fields"].items():
        if f["kind"] == "aligned":
            lines.append(f"| {path} | count accuracy | {f['count_accuracy']:.3f} | | {f['n']} |")
            continue
        base = f.get("baseline") or {}
        lines.append(f"| {path} | accuracy | {f['accuracy']:.3f} | {base.get('accuracy', nan):.3f} | {f['n']} |")
        if f["kind"] == "text":
            lines.append(f"| {path} | CER | {f['cer']:.3f} | {base.get('cer', nan):.3f} | {f['n']} |")
        if f["kind"] == "set":
            lines.append(f"| {path} | F1 | {f['f1']:.3f} | {base.get('f1', nan):.3f} | {f['n']} |")
    return "\n".join(lines) + "\n"


def differing_fields(prediction: dict | None, target: dict) -> list[str]:
    """Dotted leaf paths (`pois[0].name`) whose values differ; a missing prediction differs everywhere."""
    def leaves(value, prefix=""):
        if isinstance(value, dict):
            for k, v in value.items():
                yield from leaves(v, f"{prefix}.{k}" if prefix else k)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, v in enumerate(value):
                yield from leaves(v, f"{prefix}[{i}]")
        else:
            yield prefix, value

    got, want = dict(leaves(prediction or {})), dict(leaves(target))
    return sorted(p for p in set(got) | set(want) if got.get(p) != want.get(p))

__all__ = ["differing_fields", "field_metrics", "format_table", "schema_paths", "normalize_text", "edit_distance", "cer"]
