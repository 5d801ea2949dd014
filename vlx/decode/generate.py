"""Batched generation with a transformers LLaVA model: the last step of the decoding pipeline.

    texts = generate(model, processor, ["<image>\\nWhat colour? ASSISTANT:"], [image], max_new_tokens=16)

Prompts are left-padded so that every row's continuation starts at the same column, which is
what makes batched decoding with a KV cache correct for a causal LM. Rows come back in input
order, special tokens stripped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from vlx.decode.cache import decoding_cache
from vlx.model.llava import IMAGE_TOKEN


def answer_cap(tokenizer, answers: Sequence[str]) -> int:
    """A decoding cap for schema answers: 1.5x the longest of `answers` in tokens, plus 8.

    The schema's own budget admits thousands of tokens, which an undertrained model spends on
    rambling strings; an answer that cannot close within the cap counts as not schema-valid, so the
    cap can only cost a model, never flatter it.
    """
    return int(1.5 * max(len(tokenizer(a)["input_ids"]) for a in answers)) + 8


@contextlib.contextmanager
def _left_padding(tokenizer):
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side = side


def encode_batch(processor, prompts: Sequence[str], images: Sequence[Image.Image | None], device, dtype):
    """Left-padded model inputs for one batch; `images[i]` is None for a text-only prompt."""
    from vlx.data.vlm_data import image_in_text, needs_image

    placeholder = getattr(processor, "image_token", None) or IMAGE_TOKEN  # the family's (Qwen: <|image_pad|>)
    if needs_image(processor) and any(image is None for image in images):
        raise ValueError(f"{type(processor).__name__} checkpoints answer about an image: give one with every "
                         "prompt (they cannot chat without one)")
    if not image_in_text(processor):  # InstructBLIP / BLIP-2: the processor puts the image first itself
        placeholder = None
    for i, (prompt, image) in enumerate(zip(prompts, images)):
        n = prompt.count(placeholder) if placeholder else int(image is not None)
        if n > 1 or (n == 1) != (image is not None):
            raise ValueError(
                f"prompt {i} has {n} {placeholder} placeholder(s) but {'an' if image is not None else 'no'} image: "
                f"give exactly one {placeholder} per image (vlx decodes one image per prompt)"
            )
    # Images nested per prompt (an empty list for a text-only one): Idefics3 and SmolVLM require it, the
    # other families' processors flatten it.
    nested = [[im] if im is not None else [] for im in images] if any(im is not None for im in images) else None
    from vlx.data.templates import adds_special_tokens

    with _left_padding(processor.tokenizer):
        enc = processor(text=list(prompts), images=nested, return_tensors="pt", padding=True,
                        add_special_tokens=adds_special_tokens(processor.tokenizer, prompts))
    enc.pop("labels", None)  # PaliGemma's processor builds them for training
    enc = enc.to(device)
    if "pixel_values" in enc:
        # (n_images, 3, H, W) in the model's dtype; images appear in the order of their placeholders.
        enc["pixel_values"] = enc["pixel_values"].to(dtype)
    return enc


def generate(
    model,
    processor,
    prompts: list[str],
    images: list[Image.Image | None],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    logits_processor=None,
    temperature: float = 0.0,
    seed: int | None = None,
    eos_token_id: int | None = None,
    on_row_done: Callable[[int], None] | None = None,
) -> list[str]:
    """Generate a continuation for each prompt, `batch_size` prompts per forward pass.

    `prompts[i]` contains `<image>` where `images[i]` goes (None: a text-only prompt).
    `logits_processor` is a transformers `LogitsProcessor` (or list of them); one with a
    `reset()` method (grammar-constrained processors keep per-row state) is reset before each
    batch. Greedy when `temperature == 0`, otherwise sampling; `seed` makes sampling repeatable.
    `eos_token_id` also ends a row (besides the model's generation config): the token a grammar closes
    an answer with. `on_row_done(n)` is called as rows finish, with how many just did (a batch's rows
    end at different steps: a caller's progress moves before the whole batch is done).

    >>> generate(model, processor, ["USER: hi ASSISTANT:"], [None], max_new_tokens=8)  # doctest: +SKIP
    [' hello! how can I help?']
    """
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts but {len(images)} images: give one image (or None) per prompt")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    if temperature < 0:
        raise ValueError(f"temperature={temperature}: must be >= 0 (0 is greedy)")
    processors = _as_list(logits_processor)
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else {
        "do_sample": False}
    dtype = next(model.parameters()).dtype
    stop = {}
    if eos_token_id is not None:
        configured = model.generation_config.eos_token_id
        configured = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
        stop["eos_token_id"] = [eos_token_id] + [t for t in configured if t != eos_token_id]
    out: list[str] = []
    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng, torch.inference_mode():
        if seed is not None:
            torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            enc = encode_batch(processor, prompts[start:start + batch_size], images[start:start + batch_size],
                               model.device, dtype)
            for p in processors:
                if hasattr(p, "reset"):
                    p.reset()
            cache = decoding_cache(model)
            watch = []
            if on_row_done is not None:
                ends = stop.get("eos_token_id", model.generation_config.eos_token_id)
                watch = [_RowsDone(enc["input_ids"].shape[1], [] if ends is None else ends, on_row_done)]
            ids = model.generate(
                **enc,
                **({"cache": cache} if cache is not None else {}),
                max_new_tokens=max_new_tokens,
                logits_processor=LogitsProcessorList(watch + processors) if watch or processors else None,
                pad_token_id=processor.tokenizer.pad_token_id,
                **stop,
                **sampling,
            )
            # (batch, prompt_len + new) -> (batch, new): with left padding every prompt ends at the same column.
            new = ids[:, enc["input_ids"].shape[1]:]
            if watch:
                watch[0].finish(len(new))  # rows stopped by max_new_tokens, and the last to end
            out += processor.tokenizer.batch_decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return out


class _RowsDone(LogitsProcessor):
    """Reports rows of a batch as they emit an end token; leaves the scores as they are."""

    def __init__(self, prompt_len: int, end_ids, callback: Callable[[int], None]):
        self.prompt_len, self.callback, self.reported = prompt_len, callback, 0
        self.end_ids = torch.tensor([end_ids] if isinstance(end_ids, int) else list(end_ids), dtype=torch.long)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        new = input_ids[:, self.prompt_len:]
        if new.shape[1] and len(self.end_ids):
            done = int(torch.isin(new, self.end_ids.to(new.device)).any(dim=1).sum())
            if done > self.reported:
                self.callback(done - self.reported)
                self.reported = done
        return scores

    def finish(self, rows: int) -> None:
        if rows > self.reported:
            self.callback(rows - self.reported)
            self.reported = rows


def _as_list(logits_processor) -> list:
    if logits_processor is None:
        return []
    if isinstance(logits_processor, (list, tuple)):
        return list(logits_processor)
    return [logits_processor]
