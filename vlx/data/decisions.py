"""Decision tokens: where a schema answer branches, weighted in the fine-tune's loss.

A canonical JSON answer is mostly copying (a name, a number, read off the image) and forced
structure (keys, quotes, braces the grammar would write anyway). A few tokens are choices the model
makes once per field: whether a nullable value is there at all (`"phone":null` or `"phone":"0..."`),
whether a list has another element (`},{` or `}]`), whether it is empty (`[]` or `[{`), `true` or
`false`. Averaged with the copy tokens they are a sliver of the loss, and a small fine-tune learns
to copy long before it learns when: on the demo's street scenes every street and phone came out
`null` until these tokens were weighted (bench/RESULTS.md).

    >>> decision_offsets('{"a":null,"b":[1,2]}')   # {, n, [, 1, ",", 2, ]
    [0, 5, 14, 15, 16, 17, 18]

    weights = decision_weights(tokenizer, input_ids, labels, answer, weight=5.0)

`decision_offsets` finds the characters where each value starts, where each list's first element
(or its end) starts and where each element is followed by `,` or `]`; `decision_weights` gives the
supervised tokens that hold one of them `weight`, and the token before when one of them opens a
token (the choice was made where that token stopped: `":` then `null`, against `":"` then a
string), and every other position 1. Weighting a forced token costs nothing: its loss is near 0.
With `string_ends`, the token that closes each string value is weighted too (`string_end_offsets`):
whether a copied name stops here or runs on is a choice as well.
"""

from __future__ import annotations

import re

from vlx.data.templates import IGNORE_INDEX

_LITERAL = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null")


def decision_offsets(text: str) -> list[int]:
    """Character offsets in a compact JSON text (`canonical_json`) at which the answer branches: the
    first character of every object member's value and list element, and the `,` or `]` after each
    list element. Raises `ValueError` on text that is not compact JSON."""
    return _walk(text)[0]


def string_end_offsets(text: str) -> list[int]:
    """Offsets of the closing quotes of the string values (not the keys) in a compact JSON text: where
    a copied text stops, the choice a reader gets wrong when it runs on into the next word on the
    wall or stops at the end of a sign's first line. Raises `ValueError` on text that is not compact JSON."""
    return _walk(text)[1]


def _walk(text: str) -> tuple[list[int], list[int]]:
    offsets: list[int] = []
    string_ends: list[int] = []

    def value(i: int) -> int:
        offsets.append(i)
        c = text[i]
        if c == "{":
            i += 1
            if text[i] == "}":
                return i + 1
            while True:
                i = string(i)
                if text[i] != ":":
                    raise ValueError(f"expected ':' at {i} of {text!r}")
                i = value(i + 1)
                if text[i] == "}":
                    return i + 1
                if text[i] != ",":
                    raise ValueError(f"expected ',' or '}}' at {i} of {text!r}")
                i += 1
        if c == "[":
            i += 1
            if text[i] == "]":
                offsets.append(i)
                return i + 1
            while True:
                i = value(i)
                offsets.append(i)
                if text[i] == "]":
                    return i + 1
                if text[i] != ",":
                    raise ValueError(f"expected ',' or ']' at {i} of {text!r}")
                i += 1
        if c == '"':
            end = string(i)
            string_ends.append(end - 1)
            return end
        literal = _LITERAL.match(text, i)
        if literal is None:
            raise ValueError(f"expected a value at {i} of {text!r}")
        return literal.end()

    def string(i: int) -> int:
        if text[i] != '"':
            raise ValueError(f"expected '\"' at {i} of {text!r}")
        i += 1
        while text[i] != '"':
            i += 2 if text[i] == "\\" else 1
        return i + 1

    try:
        end = value(0)
    except IndexError:
        raise ValueError(f"truncated JSON: {text!r}") from None
    if end != len(text):
        raise ValueError(f"trailing text at {end} of {text!r}")
    return offsets, string_ends


def token_ends(tokenizer, ids: list[int], window: int = 6) -> list[int]:
    """Where each token of `ids` ends in their decoded text, in linear time: each token's share is what
    it adds to the decoding of the few tokens before it (as streaming detokenizers do), so a character
    split over several byte-level tokens, or a SentencePiece word's leading space, counts where the
    decoding of the whole prefix would put it."""
    ends, end = [], 0
    for k in range(len(ids)):
        lo = max(0, k - window)
        end += len(tokenizer.decode(ids[lo:k + 1])) - (len(tokenizer.decode(ids[lo:k])) if k > lo else 0)
        ends.append(end)
    return ends


def decision_weights(tokenizer, input_ids: list[int], labels: list[int], answer: str, weight: float,
                     string_ends: bool = False) -> list[float]:
    """Per-position loss weights of one example whose supervised tokens are `answer` (then its
    end-of-turn token): `weight` at every label position whose token holds a `decision_offsets`
    character of `answer` (with `string_ends`, also a `string_end_offsets` one: the token that closes a
    string value, which alone made that choice), 1 elsewhere. Raises `ValueError` when the supervised
    tokens do not decode to `answer` (the weights would land on the wrong tokens)."""
    positions = [t for t, label in enumerate(labels) if label != IGNORE_INDEX]
    ids = [input_ids[t] for t in positions]
    ends = token_ends(tokenizer, ids)
    text = tokenizer.decode(ids)
    if (ends[-1] if ends else 0) != len(text):
        raise ValueError(f"token-by-token decoding does not add up to {text!r}")
    start = text.find(answer)
    if start < 0:
        raise ValueError(f"the supervised tokens decode to {text!r}, which does not hold the answer {answer!r}")
    branches, closes = _walk(answer)
    marks = {start + o for o in branches}
    stops = {start + o for o in closes} if string_ends else set()
    weights = [1.0] * len(labels)
    begin = 0
    for k, (t, end) in enumerate(zip(positions, ends)):
        if any(begin <= m < end for m in marks):
            weights[t] = weight
            if begin in marks and k > 0:  # the token before ended where the choice begins: it made it
                weights[positions[k - 1]] = weight  # (`":` before `null`, against `":"` before a string)
        if any(begin <= m < end for m in stops):
            weights[t] = weight
        begin = end
    return weights


__all__ = ["decision_offsets", "decision_weights", "string_end_offsets", "token_ends"]
