"""JSON Schema -> regular expression that admits exactly the canonical serialization.

    grammar = answer_grammar(StreetScene, template="vicuna_v1")
    grammar.regex       # ' \\{"pois":\\[(...)\\]\\}' : the answer prefix, then canonical JSON
    grammar.max_bytes   # the longest admitted text in UTF-8 bytes: the token budget's basis

Objects are written key by key in schema order with no whitespace; optional values are
`(T|null)`. String leaves (length bounds, patterns, formats) come from
`outlines_core.json_schema.build_regex_from_schema`. Two of its gaps are filled here: it ignores
`minimum`/`maximum` on numbers (a weak model then writes numbers out of range, or digits
forever), and it drops `pattern` when `maxLength` is also given. Numbers therefore get exact
range regexes below, and the schema layer only lets a bounded pattern through on its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from outlines_core.json_schema import build_regex_from_schema
from pydantic import BaseModel

from vlx.data.templates import answer_prefix
from vlx.schema import grammar_schema
from vlx.schema.load import FORMATS, pattern_width

# Python's repr of a float in [1e-4, 1e16) is positional with at most 17 significant digits,
# so at most 4 + 16 digits after the point (0.00012345678901234567).
MAX_FRACTION_DIGITS = 20
# Bytes per string character in the worst case: any code point is at most 4 bytes of UTF-8.
_BYTES_PER_CHAR = 4
_META = set("\\.+*?()|[]{}^$")


_YEAR = "([1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])"
_LEAP_YEAR = "([0-9]{2}(0[48]|[2468][048]|[13579][26])|([2468][048]|[13579][26]|0[48])00)"
# ISO dates that exist. outlines_core's DATE admits 2024-02-31 and, through `\d`, non-ASCII
# digits, both of which pydantic rejects.
DATE = (f"({_YEAR}-(0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|{_YEAR}-(0[469]|11)-(0[1-9]|[12][0-9]|30)"
        f"|{_YEAR}-02-(0[1-9]|1[0-9]|2[0-8])|{_LEAP_YEAR}-02-29)")


@dataclass(frozen=True)
class Grammar:
    regex: str
    """Regular expression (Rust `regex` syntax, as outlines_core takes it) over the answer text."""
    max_bytes: int
    """Length in UTF-8 bytes of the longest text the regex admits."""


def escape(text: str) -> str:
    """Escape regex metacharacters only (Rust's regex rejects escapes of ordinary characters)."""
    return "".join("\\" + ch if ch in _META else ch for ch in text)


def schema_grammar(schema: dict) -> Grammar:
    """Regex and length bound for a `grammar_schema` (refs inlined, all properties required)."""
    regex, size = _node(schema)
    return Grammar(regex, size)


def answer_grammar(Schema: type[BaseModel], template: str | None, prefix: str | None = None) -> Grammar:
    """The grammar of a whole answer: the template's answer prefix, then the canonical JSON.

    Under `vicuna_v1` the trained model's answer starts with a space (`ASSISTANT: {...}`);
    admitting it in the grammar lets the decoder emit the very token training used (for
    SentencePiece that is the merged `▁{`), instead of forcing a token sequence the model never saw.
    """
    inner = schema_grammar(grammar_schema(Schema))
    prefix = answer_prefix(template) if prefix is None else prefix
    return Grammar(escape(prefix) + inner.regex, len(prefix.encode()) + inner.max_bytes)


def _node(node: dict) -> tuple[str, int]:
    if "anyOf" in node:
        parts = [_node(b) for b in node["anyOf"]]
        return "(" + "|".join(p for p, _ in parts) + ")", max(n for _, n in parts)
    if "enum" in node:
        texts = [json.dumps(v, ensure_ascii=False, separators=(",", ":")) for v in node["enum"]]
        return "(" + "|".join(escape(t) for t in texts) + ")", max(len(t.encode()) for t in texts)
    kind = node["type"]
    if kind == "object":
        parts, size = [], 2
        for i, (key, sub) in enumerate(node["properties"].items()):
            regex, n = _node(sub)
            key_text = ("," if i else "") + json.dumps(key, ensure_ascii=False) + ":"
            parts.append(escape(key_text) + regex)
            size += len(key_text.encode()) + n
        return r"\{" + "".join(parts) + r"\}", size
    if kind == "array":
        item, n = _node(node["items"])
        lo, hi = node["minItems"], node["maxItems"]
        if hi == 0:
            return r"\[\]", 2
        rest = f"(,{item}){{{max(lo - 1, 0)},{hi - 1}}}"
        body = item + rest
        return r"\[" + (body if lo > 0 else f"({body})?") + r"\]", 2 + hi * n + (hi - 1)
    if kind == "string":
        if node.get("format") == "date":
            return f'"{DATE}"', 12
        regex = build_regex_from_schema(json.dumps(node), "")
        if "format" in node:
            chars = FORMATS[node["format"]]
        elif "pattern" in node:
            chars = pattern_width(node["pattern"])[1]
        else:
            chars = node["maxLength"]
        # A JSON escape (\n, \") is two characters for one: count the worst of the two.
        return regex, 2 + chars * _BYTES_PER_CHAR
    if kind == "integer":
        regex = int_range_regex(node["minimum"], node["maximum"])
        return regex, max(len(str(node["minimum"])), len(str(node["maximum"])))
    if kind == "number":
        regex = float_range_regex(node["minimum"], node["maximum"])
        digits = max(len(str(abs(node["minimum"]))), len(str(abs(node["maximum"]))))
        # sign + integer digits + point + fraction, or the exponent form (-1.2345678901234567e-324).
        return regex, max(1 + digits + 1 + MAX_FRACTION_DIGITS, 24)
    if kind == "boolean":
        return "(true|false)", 5
    if kind == "null":
        return "null", 4
    raise ValueError(f"unexpected schema node {node!r}: build it with vlx.schema.grammar_schema")


def int_range_regex(lo: int, hi: int) -> str:
    """Regex for exactly the integers in [lo, hi], written as JSON writes them.

    >>> int_range_regex(7, 12)
    '([7-9]|1[0-2])'
    """
    if lo > hi:
        raise ValueError(f"empty range [{lo}, {hi}]")
    parts = []
    if lo < 0:
        # Negatives -1..-k; "-0" is not a JSON integer.
        parts += ["-" + p for p in _nonneg_range(max(1, -hi), -lo)]
    if hi >= 0:
        parts += _nonneg_range(max(lo, 0), hi)
    return "(" + "|".join(parts) + ")"


def float_range_regex(lo: int, hi: int) -> str:
    """Regex for Python's float repr (what `json.dumps` writes) of the values in [lo, hi].

    Bounds are whole numbers (the schema layer insists), so the integer part decides the range:
    `n.ddd` for `lo <= n < hi`, and `hi.0` exactly. Values under 1e-4 in magnitude are written in
    exponent form (`1.5e-05`) and are admitted when the range contains them.
    """
    parts = []
    if hi >= 0:
        parts += _float_magnitude(max(lo, 0), hi)
    if lo < 0:
        parts += ["-" + p for p in _float_magnitude(max(-hi, 0), -lo)]
    tiny = r"[1-9](\.[0-9]{1,16})?e-(0[5-9]|[1-9][0-9]|[12][0-9][0-9]|3[01][0-9]|32[0-4])"
    if lo <= 0 and hi >= 1:
        parts.append(tiny)
    if lo <= -1 and hi >= 0:
        parts.append("-" + tiny)
    return "(" + "|".join(parts) + ")"


def _float_magnitude(a: int, b: int) -> list[str]:
    """Positional reprs of magnitudes in [a, b] (0 <= a <= b)."""
    parts = [f"{b}\\.0"]
    if a <= b - 1:
        parts.insert(0, int_range_regex(a, b - 1) + f"\\.[0-9]{{1,{MAX_FRACTION_DIGITS}}}")
    return parts


def _nonneg_range(lo: int, hi: int) -> list[str]:
    """Alternatives matching the decimal forms of [lo, hi] (0 <= lo <= hi), no leading zeros."""
    parts = []
    while lo <= hi:
        top = min(hi, 10 ** len(str(lo)) - 1)
        parts += _same_length(str(lo), str(top))
        lo = top + 1
    return parts


def _same_length(lo: str, hi: str) -> list[str]:
    """Alternatives for the digit strings from `lo` to `hi`, both of the same length."""
    if lo == hi:
        return [lo]
    if len(lo) == 1:
        return [f"[{lo}-{hi}]"]
    if lo[0] == hi[0]:
        return [lo[0] + p for p in _same_length(lo[1:], hi[1:])]
    rest = len(lo) - 1
    parts = []
    first, last = lo[0], hi[0]
    if lo[1:] != "0" * rest:
        parts += [lo[0] + p for p in _same_length(lo[1:], "9" * rest)]
        first = chr(ord(first) + 1)
    tail = []
    if hi[1:] != "9" * rest:
        tail = [hi[0] + p for p in _same_length("0" * rest, hi[1:])]
        last = chr(ord(last) - 1)
    if first <= last:
        parts.append(f"[{first}-{last}][0-9]{{{rest}}}")
    return parts + tail
