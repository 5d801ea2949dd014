"""Training samples through the checkpoint's own processor and chat template (families whose processor
expands the image into a size-dependent number of tokens: Qwen2/2.5/3-VL's dynamic resolution, LLaVA-NeXT's
anyres tiles).

    examples, problems = prepare_vlm(rows, processor, max_length=4096)
    dataset = VlmDataset(examples, processor)      # Collator(...) batches its rows

Each turn is rendered by `processor.apply_chat_template`, as `vlx extract` renders its prompt at
inference: the text before an answer is the generation prompt of the conversation so far, the
answer follows it (after whatever whitespace the template puts there, `answer_lead`, which is part of
the answer the model learns to write), and what the template writes after the answer ends the turn. Only the answers
and the first token of each turn's ending (the end-of-turn token, `<|im_end|>` in Qwen) are
supervised, so the model learns to stop. The image's placeholder is expanded by the processor
itself (its token count follows the image's size), and the answer is tokenized as a decoder
continuing the prompt would produce it (`encode_continuation`), so constrained decoding accepts
the first answer token.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from vlx.data.dataset import LlavaDataset, check_image, open_image, row_turns
from vlx.data.formats import Problem, Row
from vlx.data.templates import IGNORE_INDEX, SampleError, Turn, adds_special_tokens, encode_continuation, encode_spelled
from vlx.model.llava import IMAGE_TOKEN

TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids", "labels")
"""Processor outputs that are per token (PaliGemma's processor returns `labels` too); every other output is an
image input (`pixel_values`, `image_grid_thw`, ...)."""


def user_content(text: str) -> list[dict]:
    """A user message in the chat template's content format, the `<image>` placeholder as an image part."""
    if IMAGE_TOKEN not in text:
        return [{"type": "text", "text": text}]
    before, after = text.split(IMAGE_TOKEN, 1)
    parts = [{"type": "text", "text": before}] if before.strip() else []
    parts.append({"type": "image"})
    after = after.removeprefix("\n")
    return parts + ([{"type": "text", "text": after}] if after else [])


def messages(turns: list[Turn]) -> list[dict]:
    """Turns -> chat-template messages (an unanswered last turn ends the list at the user message)."""
    out = []
    for t in turns:
        out.append({"role": "user", "content": user_content(t.user)})
        if t.assistant is not None:
            out.append({"role": "assistant", "content": [{"type": "text", "text": t.assistant}]})
    return out


def render_prompt(processor, turns: list[Turn]) -> str:
    """The generation prompt after `turns` (the last one unanswered), as the checkpoint's template writes it."""
    return processor.apply_chat_template(messages(turns), add_generation_prompt=True, tokenize=False)


@dataclass
class VlmExample:
    input_ids: list[int]
    labels: list[int]
    image: Any
    image_text: str | None
    """The text segment holding the image placeholder, as the processor expanded it (re-run per batch)."""
    origin: str
    source: str
    image_special: bool = False
    """Whether that segment was encoded with the tokenizer's special tokens (`adds_special_tokens`); the
    per-batch re-run does the same (InstructBLIP's Q-Former text takes them too)."""
    weights: list[float] | None = None
    """Per-position loss weights (`vlx.data.decisions`); None: every supervised token counts once."""

    @property
    def has_image(self) -> bool:
        return self.image is not None


_PROBE_ANSWER = "Probe answer."


def answer_lead(processor) -> str:
    """Whitespace the checkpoint's template writes between its generation prompt and an answer, which the
    model writes itself at inference: LLaVA-NeXT's `[/INST] answer` has a space, Qwen's
    `<|im_start|>assistant\nanswer` none."""
    turns = [Turn(f"{IMAGE_TOKEN}\nProbe question.", _PROBE_ANSWER)]
    prompt = render_prompt(processor, [Turn(turns[0].user, None)])
    full = processor.apply_chat_template(messages(turns), tokenize=False)
    between = full[len(prompt):].split(_PROBE_ANSWER, 1)[0] if full.startswith(prompt) else None
    return between if between is not None and not between.strip() else ""


def end_of_turn_id(processor) -> int:
    """The token the checkpoint's template ends an answer with (Qwen `<|im_end|>`, LLaVA-NeXT `</s>`,
    Idefics3/SmolVLM `<end_of_utterance>`): the one `encode_vlm` supervises, and extraction stops at."""
    turns = [Turn(f"{IMAGE_TOKEN}\nProbe question.", _PROBE_ANSWER)]
    prompt = render_prompt(processor, [Turn(turns[0].user, None)])
    full = processor.apply_chat_template(messages(turns), tokenize=False)
    ending = full[len(prompt) + len(answer_lead(processor) + _PROBE_ANSWER):]
    ids, labels = _end_of_turn(processor.tokenizer, ending)
    return labels[max(i for i, x in enumerate(labels) if x != IGNORE_INDEX)]


def _segments(processor, turns: list[Turn], lead: str | None = None) -> list[tuple[str, str, str]]:
    """-> per turn (prompt text, answer, end-of-turn text), concatenating to the template's whole rendering.
    The answer includes the template's lead (`answer_lead`), which the model learns to write.

    A template may render a past turn unlike the generation it was (Qwen3 / Qwen3.5 drop the empty
    thinking block from answers before the last question); the turns are then read off the whole
    conversation's rendering: the last answer after the generation prompt, as the model writes it at
    inference, each earlier one where the history shows it, each closed by the template's end of turn.
    """
    out, done = [], ""
    lead = answer_lead(processor) if lead is None else lead
    for k, t in enumerate(turns):
        prompt = render_prompt(processor, turns[:k] + [Turn(t.user, None)])
        full = processor.apply_chat_template(messages(turns[: k + 1]), tokenize=False)
        answer = lead + t.assistant
        if not full.startswith(prompt + answer):
            raise SampleError(
                "the checkpoint's chat template does not render its generation prompt followed by the answer "
                f"({full[len(prompt):][:40]!r} after the prompt), so the answer cannot be located for supervision; "
                "give a checkpoint whose template renders the answer as written")
        if not prompt.startswith(done):
            return _segments_from_history(processor, turns, lead)
        out.append((prompt[len(done):], answer, full[len(prompt) + len(answer):]))
        done = full
    return out


def _segments_from_history(processor, turns: list[Turn], lead: str) -> list[tuple[str, str, str]]:
    """`_segments` for a template that rewrites past turns: each earlier answer located in the last prompt."""
    last = turns[-1]
    prompt = render_prompt(processor, turns[:-1] + [Turn(last.user, None)])
    full = processor.apply_chat_template(messages(turns), tokenize=False)
    ending = full[len(prompt) + len(lead + last.assistant):]  # what closes an answer: `<|im_end|>\n`
    out, cursor = [], 0
    for k, t in enumerate(turns[:-1]):
        at = prompt.find(t.assistant, cursor)
        end = at + len(t.assistant)
        if at < 0 or not prompt.startswith(ending, end):
            raise SampleError(
                f"the checkpoint's chat template renders turn {k + 1}'s answer in the history other than as written "
                f"and closed by {ending!r}, so it cannot be located for supervision; give single-turn rows")
        out.append((prompt[cursor:at], t.assistant, ending))
        cursor = end + len(ending)
    out.append((prompt[cursor:], lead + last.assistant, ending))
    return out


def _end_of_turn(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """(ids, labels) of the text after an answer: its first special token supervised (and what precedes it)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | {tokenizer.convert_tokens_to_ids(t) for t in tokenizer.get_added_vocab()}
    stop = next((i for i, x in enumerate(ids) if x in special), None)
    if stop is None:
        raise SampleError(f"the chat template ends an answer with {text!r}, which holds no special token to learn "
                          "to stop at")
    return ids, ids[: stop + 1] + [IGNORE_INDEX] * (len(ids) - stop - 1)


def encode_vlm(processor, turns: list[Turn], image, spell: tuple[str, ...] = (), *,
               lead: str | None = None) -> tuple[list[int], list[int], str | None, bool]:
    """(input_ids, labels, image segment, whether it took the special tokens) of one conversation, the image
    placeholder expanded by the processor; `lead` is `answer_lead(processor)` (found here if not given)."""
    tokenizer = processor.tokenizer
    input_ids, labels, image_text, image_special = [], [], None, False
    for k, (prompt, answer, ending) in enumerate(_segments(processor, turns, lead)):
        # The first text with the tokenizer's BOS where `vlx extract` has it (`adds_special_tokens`).
        special = k == 0 and adds_special_tokens(tokenizer, [prompt])
        if image is not None and image_text is None and _holds_image(processor, prompt):
            image_text, image_special = prompt, special
            ids = processor(text=[prompt], images=[image], add_special_tokens=special)["input_ids"][0]
            ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        else:
            ids = tokenizer(prompt, add_special_tokens=special)["input_ids"]
        answer_ids = (encode_spelled(tokenizer, answer, spell) if spell else
                      encode_continuation(tokenizer, answer, split_special=True))
        end_ids, end_labels = _end_of_turn(tokenizer, ending)
        input_ids += ids + answer_ids + end_ids
        labels += [IGNORE_INDEX] * len(ids) + answer_ids + end_labels
    if image is not None and image_text is None:
        raise SampleError("the row has an image but the chat template rendered no image placeholder for it")
    return input_ids, labels, image_text, image_special


def image_in_text(processor) -> bool:
    """Whether the prompt text carries the image's placeholder, which the processor expands (every family
    but InstructBLIP and BLIP-2, whose processors put `num_query_tokens` image tokens before the text
    themselves and take no placeholder)."""
    return getattr(processor, "num_query_tokens", None) is None


def suffix_token_types(processor) -> bool:
    """Whether the model tells prefix from answer by `token_type_ids` (1 on the answer and its EOS): PaliGemma,
    a prefix LM whose processor takes the answer as `suffix`. Its prefix (image and question) attends both ways."""
    return _takes_suffix(type(processor))


@functools.cache
def _takes_suffix(processor_cls) -> bool:
    import inspect

    return "suffix" in inspect.signature(processor_cls.__call__).parameters


def needs_image(processor) -> bool:
    """Whether every text needs an image with it: InstructBLIP and BLIP-2 (their queries come first),
    PaliGemma (its processor refuses a text alone)."""
    return not image_in_text(processor) or suffix_token_types(processor)


def _holds_image(processor, text: str) -> bool:
    if not image_in_text(processor):
        return True  # the first segment: the processor puts the image before it
    token = getattr(processor, "image_token", None)
    return bool(token) and token in text


def prepare_vlm(rows: list[Row], processor, *, max_length: int, check_images: bool = True,
                spell: tuple[str, ...] = ()) -> tuple[list[VlmExample], list[Problem]]:
    """Validate and encode every row through the processor; (examples, problems), nothing skipped silently."""
    examples, problems = [], []
    lead, image_needed = answer_lead(processor), needs_image(processor)  # the template's facts, found once
    for row in rows:
        try:
            turns = row_turns(row, "processor")
            if row.image is None and image_needed:
                raise SampleError(f"{type(processor).__name__} checkpoints read an image with every text; give "
                                  "this row an image or leave it out")
            image = None
            if row.image is not None:
                msg = check_image(row.image, row.origin) if check_images else None
                if msg:
                    raise SampleError(msg)
                image = open_image(row.image, origin=row.origin)
            ids, labels, image_text, special = encode_vlm(processor, turns, image,
                                                          spell if row.source != "chat" else (), lead=lead)
            if len(ids) > max_length:
                raise SampleError(f"{len(ids)} tokens with the image's, over max_length={max_length}; shorten the "
                                  "conversation or lower the image's pixel budget")
        except SampleError as e:
            problems.append(Problem(row.origin, str(e)))
            continue
        examples.append(VlmExample(ids, labels, row.image, image_text, row.origin, row.source, special))
    return examples, problems


class VlmDataset(LlavaDataset):
    """Encoded examples; each image goes through the processor again in `__getitem__` (its pixel inputs)."""

    def __init__(self, examples: list[VlmExample], processor):
        super().__init__(examples, processor.image_processor)
        self.processor = processor
        self.suffix_types = suffix_token_types(processor)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        item = {"input_ids": ex.input_ids, "labels": ex.labels, "pixel_values": None, "source": ex.source}
        if ex.weights is not None:
            item["weights"] = ex.weights
        if ex.has_image:
            img = open_image(ex.image, origin=ex.origin)
            enc = self.processor(text=[ex.image_text], images=[img], return_tensors="pt",
                                 add_special_tokens=ex.image_special)
            item["image_inputs"] = {k: v for k, v in enc.items() if k not in TEXT_KEYS}
            # Per-token modality ids: Qwen's multimodal RoPE finds the image by them (`mm_token_type_ids`), Gemma 3
            # attends bidirectionally within it (`token_type_ids`).
            # PaliGemma's mark the answer instead (`suffix_token_types`).
            for key in ("mm_token_type_ids", "token_type_ids"):
                if key in enc:
                    types = ([int(x != IGNORE_INDEX) for x in ex.labels] if self.suffix_types
                             else self.processor.create_mm_token_type_ids([ex.input_ids])[0])
                    item["token_inputs"] = {key: types}
        return item


__all__ = ["user_content", "messages", "render_prompt", "answer_lead", "end_of_turn_id", "image_in_text", "needs_image",
           "suffix_token_types", "encode_vlm", "prepare_vlm", "VlmExample", "VlmDataset"]
