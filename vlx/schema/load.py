"""Load a user's pydantic schema file and check that the constrained decoder can honour it.

    Schema = load_schema("templates/poi.py")            # the root model of the file
    Schema = load_schema("poi.py", class_name="POI")    # or the one named

A schema is supported when every value has a finite serialized length (strings and lists
bounded, numbers bounded, no recursion) and every type maps to a regular language the decoder
can enforce token by token. `check_supported` lists every problem with its field path and the fix.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import re._parser as sre_parse
import sys
import typing
from pathlib import Path

from pydantic import BaseModel


class SchemaError(ValueError):
    """A schema file or class that cannot be used; the message names the field and the fix."""


# String formats the decoder can enforce, with their fixed maximum length in characters.
FORMATS = {"date": 10, "uuid": 36}
# Floats are serialized with Python's repr; beyond 1e15 repr switches to exponent notation.
FLOAT_BOUND_LIMIT = 10**15


def load_schema(path: str | Path, class_name: str | None = None) -> type[BaseModel]:
    """Import `path` and return its root pydantic model (or the one named `class_name`).

    The root is the model defined in the file that no other model defined there refers to.
    """
    path = Path(path)
    if not path.is_file():
        raise SchemaError(f"schema file {path} does not exist; give a .py file defining a pydantic model")
    models = _import_models(path)
    if class_name is not None:
        if class_name not in models:
            raise SchemaError(f"{path} has no model named {class_name!r}; it defines {', '.join(sorted(models))}")
        return models[class_name]
    referenced = {ref for model in models.values() for ref in _referenced_models(model) if ref is not model}
    roots = [name for name, model in models.items() if model not in referenced]
    if len(roots) != 1:
        candidates = ", ".join(sorted(roots or models))
        raise SchemaError(
            f"{path}: cannot tell which model is the schema (candidates: {candidates}); "
            "name one with class_name= (CLI: --schema-class)"
        )
    return models[roots[0]]


_imported: dict[tuple, dict[str, type[BaseModel]]] = {}


def _import_models(path: Path) -> dict[str, type[BaseModel]]:
    """The models defined in `path`, imported once per file version so classes compare equal."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key in _imported:
        return _imported[key]
    module_name = f"vlx_schema_{abs(hash(key))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise SchemaError(f"{path} is not a Python file; give a .py file defining a pydantic model")
    module = importlib.util.module_from_spec(spec)
    # Registered before exec so that pydantic can resolve forward references in the module.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any error in user code means "cannot load"
        del sys.modules[module_name]
        raise SchemaError(f"cannot import schema file {path}: {type(e).__name__}: {e}") from e
    models = {
        name: obj for name, obj in vars(module).items()
        if inspect.isclass(obj) and issubclass(obj, BaseModel) and obj is not BaseModel
        and obj.__module__ == module_name
    }
    if not models:
        raise SchemaError(f"{path} defines no pydantic BaseModel subclass")
    _imported[key] = models
    return models


def _referenced_models(model: type[BaseModel]) -> set[type[BaseModel]]:
    found: set[type[BaseModel]] = set()

    def visit(tp) -> None:
        if inspect.isclass(tp) and issubclass(tp, BaseModel):
            found.add(tp)
            return
        for arg in typing.get_args(tp):
            visit(arg)

    for field in model.model_fields.values():
        visit(field.annotation)
    return found


def pattern_width(pattern: str) -> tuple[int, int | None]:
    """(min, max) characters a regex matches; max is None when unbounded."""
    lo, hi = sre_parse.parse(pattern).getwidth()
    return lo, (None if hi >= sre_parse.MAXREPEAT else hi)


def json_schema(Schema: type[BaseModel]) -> dict:
    """The pydantic JSON Schema in serialization mode (what `canonical_json` writes), keys by alias."""
    if not (inspect.isclass(Schema) and issubclass(Schema, BaseModel)):
        raise SchemaError(f"{Schema!r} is not a pydantic model class; give a BaseModel subclass")
    return Schema.model_json_schema(by_alias=True, mode="serialization")


def inline(Schema: type[BaseModel], *, keep_docs: bool = False) -> dict:
    """The schema with every `$ref` inlined and each node reduced to what the decoder enforces.

    Raises `SchemaError` listing every unsupported field. Objects come out with all their
    properties required and `additionalProperties: false`.
    """
    root = json_schema(Schema)
    problems: list[str] = []
    out = _inline(root, root.get("$defs", {}), Schema.__name__, "", (), problems, keep_docs)
    if problems:
        raise SchemaError(f"schema {Schema.__name__} cannot be decoded under constraints:\n  "
                          + "\n  ".join(problems))
    return out


def check_supported(Schema: type[BaseModel]) -> None:
    """Raise `SchemaError` naming every field the constrained decoder cannot bound or enforce."""
    inline(Schema)


_DOC_KEYS = ("title", "description")


def _inline(node: dict, defs: dict, model: str, path: str, stack: tuple[str, ...], problems: list[str],
            keep_docs: bool) -> dict:
    where = f"field '{path}'" if path else f"model {model}"

    def bad(msg: str) -> dict:
        problems.append(f"{where}: {msg}")
        return {}

    docs = {k: node[k] for k in _DOC_KEYS if k in node and keep_docs}
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        if name in stack:
            return bad(f"{name} contains itself (unbounded recursion); the decoder needs a finite nesting "
                       "depth: replace the self-reference with a separately defined, non-recursive model")
        sub = _inline(defs[name], defs, name, path, stack + (name,), problems, keep_docs)
        # A definition's own description is a class docstring; only the field's describes the field.
        return {**{k: v for k, v in sub.items() if k not in _DOC_KEYS}, **docs}
    if "allOf" in node and len(node["allOf"]) == 1:
        return _inline({**node["allOf"][0], **{k: v for k, v in node.items() if k != "allOf"}}, defs, model,
                       path, stack, problems, keep_docs)
    for key in ("anyOf", "oneOf"):
        if key in node:
            branches = [_inline(b, defs, model, path, stack, problems, keep_docs) for b in node[key]]
            return {"anyOf": branches, **docs}
    if "enum" in node or "const" in node:
        values = node["enum"] if "enum" in node else [node["const"]]
        if not values:
            return bad("an empty enum admits no value")
        if any(isinstance(v, (dict, list)) for v in values):
            return bad("enum values must be strings, numbers, booleans or null")
        return {"enum": list(values), **docs}
    kind = node.get("type")
    if isinstance(kind, list):
        return _inline({"anyOf": [{**node, "type": t} for t in kind]}, defs, model, path, stack, problems, keep_docs)
    if kind == "object":
        props = node.get("properties")
        # A model without `extra="forbid"` has no additionalProperties key: its extra keys are
        # ignored by pydantic and never emitted by the grammar. `dict` fields and `extra="allow"`
        # models say `additionalProperties: true` (or give a value schema): keys unknown in advance.
        extra = node.get("additionalProperties", False)
        if not props or extra is not False or "patternProperties" in node:
            return bad("an object with arbitrary keys (a dict or Any) cannot be bounded or enforced; "
                       "replace it with a pydantic model listing the keys")
        out = {"type": "object", "properties": {}, "required": list(props), "additionalProperties": False, **docs}
        for key, sub in props.items():
            out["properties"][key] = _inline(sub, defs, model, f"{path}.{key}" if path else key, stack, problems,
                                             keep_docs)
        return out
    if kind == "array":
        if "prefixItems" in node or "items" not in node:
            return bad("tuples and untyped lists are not supported; use list[T] with a concrete T")
        if node.get("uniqueItems"):
            return bad("sets (uniqueItems) cannot be enforced while decoding; use a list")
        items = _inline(node["items"], defs, model, f"{path}[]", stack, problems, keep_docs)
        if "maxItems" not in node:
            return bad("the list has no maximum length, so no token budget exists; "
                       "add Field(max_length=N) to it")
        return {"type": "array", "items": items, "minItems": node.get("minItems", 0), "maxItems": node["maxItems"],
                **docs}
    if kind == "string":
        out = {"type": "string", **docs}
        if "format" in node:
            if node["format"] not in FORMATS:
                return bad(f"string format {node['format']!r} cannot be enforced; supported formats: "
                           f"{', '.join(FORMATS)}; otherwise use str with a bounded pattern=")
            return {**out, "format": node["format"]}
        if "pattern" in node:
            pattern = node["pattern"]
            if not (pattern.startswith("^") and pattern.endswith("$")):
                return bad(f"pattern {pattern!r} must be anchored as ^...$ so that decoding and validation agree")
            try:
                _, hi = pattern_width(pattern)
            except Exception as e:  # noqa: BLE001 - re's parser raises re.error and others
                return bad(f"pattern {pattern!r} cannot be parsed: {e}")
            if hi is None:
                return bad(f"pattern {pattern!r} has no maximum length; bound its repeats (e.g. {{1,30}} "
                           "instead of + or *): the decoder cannot combine a pattern with max_length")
            return {**out, "pattern": pattern}
        if "maxLength" not in node:
            return bad("the string has no maximum length, so no token budget exists; add Field(max_length=N) "
                       "(or a bounded pattern= or an Enum/Literal)")
        return {**out, "minLength": node.get("minLength", 0), "maxLength": node["maxLength"]}
    if kind in ("integer", "number"):
        lo, hi = _bounds(node, kind)
        if lo is None or hi is None:
            return bad(f"the {'int' if kind == 'integer' else 'float'} has no "
                       f"{'lower' if lo is None else 'upper'} bound, so its length is unbounded; add Field(ge=..., le=...)")
        if kind == "number":
            if any(k in node for k in ("exclusiveMinimum", "exclusiveMaximum")):
                return bad("float bounds must be inclusive (ge=/le=), not gt=/lt=")
            if lo != int(lo) or hi != int(hi):
                return bad(f"float bounds must be whole numbers (got ge={lo}, le={hi}): the decoder enforces "
                           "them digit by digit")
            if max(abs(lo), abs(hi)) >= FLOAT_BOUND_LIMIT:
                return bad(f"float bounds must lie within +-{FLOAT_BOUND_LIMIT:.0e}")
            lo, hi = int(lo), int(hi)
        if lo > hi:
            return bad(f"the bounds admit no value (lower {lo} > upper {hi})")
        return {"type": kind, "minimum": lo, "maximum": hi, **docs}
    if kind in ("boolean", "null"):
        return {"type": kind, **docs}
    if not kind:
        return bad("the type is unconstrained (Any or a bare object); give a concrete type")
    return bad(f"type {kind!r} is not supported by the constrained decoder")


def _bounds(node: dict, kind: str):
    lo, hi = node.get("minimum"), node.get("maximum")
    if kind == "integer":
        if "exclusiveMinimum" in node:
            lo = math.floor(node["exclusiveMinimum"]) + 1
        if "exclusiveMaximum" in node:
            hi = math.ceil(node["exclusiveMaximum"]) - 1
        # int fields may carry float bounds (ge=0.5): the admissible integers are what matters.
        lo = None if lo is None else math.ceil(lo)
        hi = None if hi is None else math.floor(hi)
    return lo, hi
