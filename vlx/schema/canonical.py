"""The canonical serialization: the one text per schema instance that the model is trained on
and that the constrained decoder's grammar admits.

    text = canonical_json(scene)   # '{"pois":[{"name":"Café Nord","category":"cafe",...}]}'
    scene == parse(text, StreetScene)

Compact separators, schema field order, `ensure_ascii=False`, every key present (an unset
optional field is an explicit `null`), enums as their values, floats as Python's shortest
round-trip repr. Free whitespace is what makes weak models ramble under a grammar (they emit
spaces and newlines and never close); a single canonical form removes that choice.
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from vlx.schema.load import inline

# JSON escapes the grammar admits inside strings; other control characters would need \uXXXX.
_SHORT_ESCAPES = set("\b\f\n\r\t")


def canonical_json(instance: BaseModel) -> str:
    """The exact text the model is trained on for `instance` (and the decoder produces)."""
    data = _normalize(instance.model_dump(mode="json", by_alias=True))
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def parse(text: str, Schema: type[BaseModel]) -> BaseModel:
    """Inverse of `canonical_json`: validate `text` as `Schema`, rejecting keys outside the schema.

    Raises `pydantic.ValidationError` on anything that is not a valid instance.
    """
    return Schema.model_validate_json(text, extra="forbid")


def grammar_schema(Schema: type[BaseModel]) -> dict:
    """The JSON Schema the grammar is built from: refs inlined, every property required (optional
    fields are `anyOf [T, null]`, emitted as `null`), `additionalProperties: false` everywhere,
    and only the constraints the decoder enforces. Raises `SchemaError` for unsupported schemas.
    """
    return inline(Schema)


def undecodable(instance: BaseModel) -> list[tuple[str, str]]:
    """(field path, reason) for each string the constrained decoder could not produce.

    The JSON string grammar admits printable characters and the short escapes (\\n, \\t, ...);
    other control characters (U+0000-U+001F, U+007F-U+009F) would be written as \\uXXXX or raw.
    """
    found: list[tuple[str, str]] = []

    def visit(value, path: str) -> None:
        if isinstance(value, str):
            for ch in value:
                code = ord(ch)
                if (code < 0x20 and ch not in _SHORT_ESCAPES) or 0x7F <= code <= 0x9F:
                    found.append((path, f"contains control character U+{code:04X}, which the decoder cannot "
                                        "emit; remove it from the target"))
                    return
        elif isinstance(value, dict):
            for k, v in value.items():
                visit(v, f"{path}.{k}" if path else k)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                visit(v, f"{path}[{i}]")

    visit(instance.model_dump(mode="json", by_alias=True), "")
    return found


def _normalize(value):
    # -0.0 == 0.0: one value, one text.
    if isinstance(value, float) and value == 0.0:
        return 0.0
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    return value
