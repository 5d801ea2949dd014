"""Conversation templates and label masking.

A template renders a conversation into *segments*: text pieces, each either supervised (an
assistant answer plus its end-of-turn token) or not. Tokenization then happens per segment,
which gives exact label masks without offset arithmetic and, just as important, tokenizes an
answer exactly as a decoder continuing the prompt would produce it: the prompt (everything up to
the assistant's turn) is tokenized as one string, like `processor(text=prompt)` does at
inference, and the answer is tokenized as a continuation of it. Whole-string tokenization can
merge the prompt's last characters with the answer's first (SentencePiece writes
`ASSISTANT: {` as `▁{"`), which a grammar-constrained decoder can never emit.

Templates:

- `plain` (LLaVA stage 1, `conv_llava_plain`): the human turn is reduced to `<image>`, the target
  is the caption followed by `"\\n"`; no system prompt, no roles, no EOS.
- `vicuna_v1` (LLaVA stage 2, `conv_vicuna_v1`), character-exact with the reference:
  `"{system} USER: {q} ASSISTANT: {a}</s>USER: {q2} ASSISTANT: {a2}</s>"`.
- `chatml` (SmolLM2, Qwen2): `<|im_start|>role\\ncontent<|im_end|>\\n`.
- `llava_hf` (llava-hf LLaVA-1.5 checkpoints): `vicuna_v1` without the system prompt, whose
  generation prompt `"USER: {q} ASSISTANT:"` is the checkpoint's own template's; unlike that
  template, the answer's `</s>` is supervised, so the fine-tuned model learns to stop.

Only assistant answers and their end token are supervised; the reference code masks a whole
sample when its token counts disagree and prints a warning. Here a mismatch cannot happen by
construction, and a sample that does not fit raises `SampleError` before training starts.
"""

from __future__ import annotations

import re

from dataclasses import dataclass

from vlx.model.llava import IMAGE_TOKEN

IGNORE_INDEX = -100

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
CHATML_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

TEMPLATES = ("plain", "vicuna_v1", "chatml", "llava_hf")


class SampleError(ValueError):
    """A training sample that cannot be used as it is; the message says why and how to fix it."""


@dataclass(frozen=True)
class Segment:
    text: str
    supervised: bool


@dataclass(frozen=True)
class Turn:
    """One exchange: a user message and the assistant's answer (None at inference)."""

    user: str
    assistant: str | None


def to_turns(conversations: list[dict]) -> list[Turn]:
    """LLaVA `conversations` (`from` human/gpt alternating) -> turns, with structural checks."""
    if not conversations:
        raise SampleError("empty conversation: give at least one human turn and one gpt turn")
    for i, c in enumerate(conversations):
        if not isinstance(c, dict):
            raise SampleError(f"turn {i} is a {type(c).__name__}, not a {{'from': 'human'|'gpt', 'value': ...}} object")
    roles = [c.get("from") for c in conversations]
    if roles[0] == "system":
        raise SampleError("a 'system' turn is not supported; put instructions in the first human turn")
    turns = []
    for i in range(0, len(conversations), 2):
        user = conversations[i]
        if user.get("from") != "human":
            raise SampleError(f"turn {i} is from {user.get('from')!r}, expected 'human' (turns must alternate human/gpt)")
        if i + 1 >= len(conversations):
            raise SampleError(f"turn {i} (human) has no gpt answer after it: every human turn needs an answer")
        answer = conversations[i + 1]
        if answer.get("from") != "gpt":
            raise SampleError(f"turn {i + 1} is from {answer.get('from')!r}, expected 'gpt'")
        if not isinstance(user.get("value"), str) or not isinstance(answer.get("value"), str):
            raise SampleError(f"turns {i}-{i + 1}: 'value' must be a string")
        if not answer["value"].strip():
            raise SampleError(f"turn {i + 1}: the gpt answer is empty; there is nothing to learn from it")
        turns.append(Turn(user["value"], answer["value"]))
    return turns


def render(template: str, turns: list[Turn], *, eos_token: str = "</s>", system: str | None = None) -> list[Segment]:
    """Render turns as segments. The last turn may have `assistant=None`: the generation prompt."""
    segments: list[Segment] = []
    if template == "plain":
        # LLaVA `preprocess_plain`: the human text is replaced by the bare image token.
        if len(turns) != 1:
            raise SampleError(f"the plain (stage 1) template takes exactly one exchange, got {len(turns)}")
        segments.append(Segment(IMAGE_TOKEN if IMAGE_TOKEN in turns[0].user else "", False))
        if turns[0].assistant is not None:
            segments.append(Segment(turns[0].assistant + "\n", True))
    elif template in ("vicuna_v1", "llava_hf"):
        if template == "llava_hf":
            prefix = f"{system} " if system else ""
        else:
            prefix = (VICUNA_SYSTEM if system is None else system) + " "
        for turn in turns:
            segments.append(Segment(f"{prefix}USER: {turn.user} ASSISTANT:", False))
            if turn.assistant is not None:
                segments.append(Segment(f" {turn.assistant}{eos_token}", True))
            prefix = ""
    elif template == "chatml":
        text = f"<|im_start|>system\n{CHATML_SYSTEM if system is None else system}<|im_end|>\n"
        for turn in turns:
            segments.append(Segment(f"{text}<|im_start|>user\n{turn.user}<|im_end|>\n<|im_start|>assistant\n", False))
            if turn.assistant is not None:
                segments.append(Segment(f"{turn.assistant}<|im_end|>", True))
            text = "\n"
    else:
        raise ValueError(f"unknown template {template!r}: use one of {', '.join(TEMPLATES)}")
    return _merge(segments)


def _merge(segments: list[Segment]) -> list[Segment]:
    merged: list[Segment] = []
    for seg in segments:
        if merged and merged[-1].supervised == seg.supervised and not seg.supervised:
            merged[-1] = Segment(merged[-1].text + seg.text, False)
        elif seg.text:
            merged.append(seg)
    return merged


def answer_prefix(template: str | None, processor=None) -> str:
    """Text the trained model emits between the prompt and the answer proper (vicuna: a space). Under the
    checkpoint's own chat template (`template` None), what that template writes there
    (`vlx.data.vlm_data.answer_lead`: LLaVA-NeXT's `[/INST] answer`, a space)."""
    if template is None and processor is not None:
        from vlx.data.vlm_data import answer_lead

        return answer_lead(processor)
    return " " if template in ("vicuna_v1", "llava_hf") else ""


def prompt_text(template: str, turns: list[Turn], *, system: str | None = None) -> str:
    """The generation prompt: everything up to where the assistant's answer starts."""
    segs = render(template, turns, system=system)
    assert not segs[-1].supervised
    return "".join(s.text for s in segs)


def _special_prefix(tokenizer) -> list[int]:
    """Ids the tokenizer puts before any text (Llama's BOS; nothing for Qwen/SmolLM2)."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return with_special[: len(with_special) - len(without)] if with_special[-len(without):] == without else []


def adds_special_tokens(tokenizer, texts) -> bool:
    """Whether a prompt's first text is tokenized with the tokenizer's special prefix (its BOS): yes, as
    `processor(text=prompt)` does, unless the chat template already wrote it (Gemma 3's `{{ bos_token }}`,
    Idefics3's), which would double it."""
    prefix = _special_prefix(tokenizer)
    if not prefix:
        return True
    written = tokenizer.decode(prefix)
    return not all(t.startswith(written) for t in texts)


def encode_continuation(tokenizer, text: str, anchor: str = ":", *, split_special: bool = False) -> list[int]:
    """Token ids of `text` as they appear right after earlier text (no dummy prefix, no BOS).

    SentencePiece tokenizers prepend a space marker to a standalone string; tokenizing
    `anchor + text` and dropping the anchor's ids gives the in-context ids for every tokenizer.
    """
    # split_special: answer text that spells "<s>" or "<|im_end|>" (a shop could be named so) is
    # tokenized as characters, never as the tokenizer's control token (which would end the turn).
    kw = {"add_special_tokens": False, "split_special_tokens": split_special}
    anchor_ids = tokenizer(anchor, **kw)["input_ids"]
    ids = tokenizer(anchor + text, **kw)["input_ids"]
    if ids[: len(anchor_ids)] != anchor_ids:
        # The anchor merged with the text; fall back to plain tokenization.
        return tokenizer(text, **kw)["input_ids"]
    return ids[len(anchor_ids):]


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    image_span: tuple[int, int] | None  # [start, end) of the image tokens; None for text-only rows

    @property
    def num_image_tokens(self) -> int:
        return 0 if self.image_span is None else self.image_span[1] - self.image_span[0]


def encode_chars(tokenizer, text: str) -> list[int]:
    """`text` tokenized one character per token, as a continuation (`encode_spelled` for a whole
    answer): `tokenizer.decode(ids) == text`."""
    return [i for char in text for i in encode_continuation(tokenizer, char)]


def encode_spelled(tokenizer, text: str, keys: tuple[str, ...]) -> list[int]:
    """An answer tokenized as a continuation, except that the JSON string values of `keys` are
    spelled one character per token (`"name":"Golden Fox"` -> `G`, `o`, `l`, ...).

    A vision tower that reads glyph by glyph hands the LLM a sign's text as character tokens; an
    answer written in the same characters is a copy, while the word-level BPE tokens of the
    ordinary tokenization must be assembled from them. The constrained decoder accepts either
    tokenization of a string, and the text is the same (`tokenizer.decode(ids) == text`).
    """
    if not keys:
        return encode_continuation(tokenizer, text, split_special=True)
    pattern = re.compile(r'"(%s)":"((?:[^"\\]|\\.)*)"' % "|".join(re.escape(k) for k in keys))
    ids, pos = [], 0
    for m in pattern.finditer(text):
        ids += encode_continuation(tokenizer, text[pos:m.start(2)], split_special=True)
        ids += encode_chars(tokenizer, text[m.start(2):m.end(2)])
        pos = m.end(2)
    return ids + (encode_continuation(tokenizer, text[pos:], split_special=True) if pos < len(text) else [])


def encode(tokenizer, segments: list[Segment], *, image_token_id: int, num_image_tokens: int,
           spell: tuple[str, ...] = (), spell_answers: bool = False) -> Encoded:
    """Tokenize segments: prompts as whole strings, answers as continuations; expand `<image>`.

    Labels are the input ids on supervised segments and `IGNORE_INDEX` elsewhere. `spell`: JSON keys
    whose string values in answers are tokenized one character per token (`encode_spelled`);
    `spell_answers`: every answer is (`encode_chars`; a mixture source's `spell: true`).
    """
    input_ids: list[int] = list(_special_prefix(tokenizer))
    labels: list[int] = [IGNORE_INDEX] * len(input_ids)
    for i, seg in enumerate(segments):
        if seg.supervised:
            # The answer's own text as text; the template's end-of-turn token after it as that token.
            tail = next((t for t in sorted(tokenizer.all_special_tokens, key=len, reverse=True)
                         if seg.text.endswith(t)), "")
            body = seg.text[: len(seg.text) - len(tail)]
            if spell_answers:
                ids = encode_chars(tokenizer, body)
            elif spell:
                ids = encode_spelled(tokenizer, body, spell)
            else:
                ids = encode_continuation(tokenizer, body, split_special=True)
            ids += encode_continuation(tokenizer, tail) if tail else []
        elif i > 0:
            ids = encode_continuation(tokenizer, seg.text)
        else:
            ids = tokenizer(seg.text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if seg.supervised else [IGNORE_INDEX] * len(ids)
    n_image = input_ids.count(image_token_id)
    if n_image > 1:
        raise SampleError(f"{n_image} {IMAGE_TOKEN} placeholders in one sample; LLaVA-1.5 takes one image per sample")
    if n_image == 1:
        # (L,) -> (L - 1 + num_image_tokens,): one placeholder becomes the patch grid.
        at = input_ids.index(image_token_id)
        input_ids[at : at + 1] = [image_token_id] * num_image_tokens
        labels[at : at + 1] = [IGNORE_INDEX] * num_image_tokens
        return Encoded(input_ids, labels, (at, at + num_image_tokens))
    return Encoded(input_ids, labels, None)


def fit_length(encoded: Encoded, max_length: int, *, row: str, truncate: bool = False) -> Encoded:
    """Enforce `max_length` (image tokens count toward it, as in LLaVA's `model_max_length`).

    By default a sample that is too long is an error found before training. With
    `truncate=True` the tail is cut, but never into the image tokens and never so far that no
    answer token is left to learn from.
    """
    n = len(encoded.input_ids)
    if n <= max_length:
        return encoded
    where = f"{n} tokens (including {encoded.num_image_tokens} image tokens) exceed max_length={max_length}"
    if not truncate:
        raise SampleError(f"{row}: {where}; raise --max-length, shorten the sample, or pass --truncate")
    ids, labels = encoded.input_ids[:max_length], encoded.labels[:max_length]
    if encoded.image_span is not None and encoded.image_span[1] > max_length:
        raise SampleError(f"{row}: {where}, and truncation would cut into the image tokens; raise --max-length")
    if all(label == IGNORE_INDEX for label in labels):
        raise SampleError(f"{row}: {where}, and truncation would leave no answer token; raise --max-length")
    return Encoded(ids, labels, encoded.image_span)


# Jinja versions of the templates, stored in the processor so that plain `transformers`
# users (`processor.apply_chat_template`) build exactly the prompts vlx trains on.
# Content may be a string or a list of {"type": "image"} / {"type": "text"} parts.
_CONTENT = (
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<image>\\n' }}{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
)
# Every tag strips surrounding whitespace; all literal text is emitted by {{ '...' }}.
JINJA = {
    "vicuna_v1": (
        "{%- for message in messages -%}"
        "{%- if loop.first -%}{{ (message['content'] if message['role'] == 'system' else '"
        + VICUNA_SYSTEM.replace("'", "\\'")
        + "') + ' ' }}{%- endif -%}"
        "{%- if message['role'] == 'user' -%}{{ 'USER: ' }}" + _CONTENT + "{{ ' ASSISTANT:' }}"
        "{%- elif message['role'] == 'assistant' -%}{{ ' ' }}" + _CONTENT + "{{ '</s>' }}"
        "{%- endif -%}{%- endfor -%}"
    ),
    "llava_hf": (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}{{ message['content'] + ' ' }}"
        "{%- elif message['role'] == 'user' -%}{{ 'USER: ' }}" + _CONTENT + "{{ ' ASSISTANT:' }}"
        "{%- elif message['role'] == 'assistant' -%}{{ ' ' }}" + _CONTENT + "{{ '</s>' }}"
        "{%- endif -%}{%- endfor -%}"
    ),
    "chatml": (
        "{%- if messages[0]['role'] != 'system' -%}{{ '<|im_start|>system\\n" + CHATML_SYSTEM
        + "<|im_end|>\\n' }}{%- endif -%}"
        "{%- for message in messages -%}{{ '<|im_start|>' + message['role'] + '\\n' }}" + _CONTENT
        + "{{ '<|im_end|>\\n' }}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    ),
    "plain": (
        "{%- for message in messages -%}{%- if message['role'] == 'user' -%}{{ '<image>' }}"
        "{%- elif message['role'] == 'assistant' -%}" + _CONTENT + "{{ '\\n' }}{%- endif -%}{%- endfor -%}"
    ),
}
