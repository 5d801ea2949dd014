"""Schema-constrained decoding, wired: schema -> grammar -> index -> logits processor -> generate -> parse.

    decoder = ConstrainedDecoder(model, processor, StreetScene, template="vicuna_v1")
    results = decoder.decode(prompts, images)      # a StreetScene or an ExtractionError per prompt

Every result is either a validated instance or an `ExtractionError` carrying the text produced;
nothing invalid or truncated is ever returned as a result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image
from pydantic import BaseModel, ValidationError

from vlx.data.templates import answer_prefix
from vlx.decode.generate import generate
from vlx.decode.grammar import answer_grammar
from vlx.decode.index import compile_index
from vlx.decode.processor import GrammarLogitsProcessor
from vlx.schema import check_supported, parse

BACKENDS = ("outlines_core", "outlines", "none")
DEFAULT_BACKEND = "outlines_core"
"""vlx's processor over an outlines_core index; see bench/RESULTS.md for the measurement."""


class ExtractionError(RuntimeError):
    """No valid schema instance could be produced; `text` holds what the model wrote."""

    def __init__(self, message: str, *, text: str | None = None, source: str | None = None):
        self.text = text
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{message}" + (f"\n  text: {text[:500]!r}" if text is not None else ""))


@dataclass
class DecodeConfig:
    backend: str = DEFAULT_BACKEND
    """`outlines_core` (default: vlx's processor over an outlines_core index), `outlines` (outlines'
    own logits processor on the same index) or `none` (unconstrained, for ablations)."""
    temperature: float = 0.0
    """0 is greedy; above 0 samples."""
    seed: int | None = None
    """Seed for sampling; None leaves the global torch RNG as it is."""
    max_new_tokens: int | None = None
    """Token budget; None derives it from the schema's bounds (never truncates a valid object)."""
    batch_size: int = 8
    """Prompts per forward pass in `decode`."""

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r}: use one of {', '.join(BACKENDS)}")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: must be >= 0 (0 is greedy)")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}: must be >= 1")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}: must be >= 1, or None to derive it")


def end_token_id(tokenizer, template: str | None, processor=None) -> int:
    """The token that ends an answer under `template` (what training puts after the JSON); under the
    checkpoint's own chat template (`template` None), the one it closes an answer with."""
    if template is None and processor is not None:
        from vlx.data.vlm_data import end_of_turn_id

        return end_of_turn_id(processor)
    if template == "chatml" and "<|im_end|>" in tokenizer.get_vocab():
        return tokenizer.convert_tokens_to_ids("<|im_end|>")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; the decoder cannot tell where an answer ends")
    return tokenizer.eos_token_id


def logits_processor(backend: str, index, eos_token_id: int):
    """The logits processor for `backend` (None for `none`)."""
    if backend == "outlines_core":
        return GrammarLogitsProcessor(index, eos_token_id)
    elif backend == "outlines":
        from outlines.backends.outlines_core import OutlinesCoreLogitsProcessor

        return OutlinesCoreLogitsProcessor(index, "torch")
    elif backend == "none":
        return None
    raise ValueError(f"backend={backend!r}: use one of {', '.join(BACKENDS)}")


class ConstrainedDecoder:
    """A schema compiled for one model's tokenizer and template, ready to decode batches."""

    def __init__(self, model, processor, Schema: type[BaseModel], *, template: str,
                 config: DecodeConfig | None = None):
        check_supported(Schema)
        self.model, self.processor, self.Schema, self.template = model, processor, Schema, template
        self.config = config or DecodeConfig()
        self.prefix = answer_prefix(template, processor)
        self.grammar = answer_grammar(Schema, template, self.prefix)
        self.eos_token_id = end_token_id(processor.tokenizer, template, processor)
        self.index = None
        if self.config.backend != "none":
            self.index = compile_index(self.grammar.regex, processor.tokenizer, self.eos_token_id)
        # Every token is at least one byte, so the longest admitted text bounds the token count;
        # +1 for the end token.
        self.max_new_tokens = self.config.max_new_tokens or self.grammar.max_bytes + 1

    def decode(self, prompts: list[str], images: list[Image.Image | None],
               sources: list[str | None] | None = None, *,
               on_row_done: Callable[[int], None] | None = None) -> list[BaseModel | ExtractionError]:
        """One result per prompt, in order: a valid `Schema` instance or an `ExtractionError`;
        `on_row_done(n)` as rows finish (`generate`)."""
        sources = sources or [None] * len(prompts)
        cfg = self.config
        results: list[BaseModel | ExtractionError] = []
        for start in range(0, len(prompts), cfg.batch_size):
            stop = start + cfg.batch_size
            lp = logits_processor(cfg.backend, self.index, self.eos_token_id)
            texts = generate(self.model, self.processor, prompts[start:stop], images[start:stop],
                             max_new_tokens=self.max_new_tokens, batch_size=cfg.batch_size, logits_processor=lp,
                             eos_token_id=self.eos_token_id, on_row_done=on_row_done,
                             temperature=cfg.temperature, seed=None if cfg.seed is None else cfg.seed + start)
            complete = lp.texts_complete() if isinstance(lp, GrammarLogitsProcessor) else [None] * len(texts)
            for text, done, source in zip(texts, complete, sources[start:stop]):
                results.append(self._result(text, done, source))
        return results

    def _result(self, text: str, complete: bool | None, source: str | None) -> BaseModel | ExtractionError:
        prefix = self.prefix
        body = text[len(prefix):] if prefix and text.startswith(prefix) else text
        if complete is False:
            return ExtractionError(
                f"the answer did not close within {self.max_new_tokens} new tokens, so no {self.Schema.__name__} "
                "was returned; raise max_new_tokens (None derives it from the schema)", text=body, source=source)
        try:
            return parse(body, self.Schema)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "(root)"
            hint = (" (backend 'none' decodes without the grammar; use the default backend for schema-valid output)"
                    if self.config.backend == "none" else "")
            return ExtractionError(f"the model's answer is not a valid {self.Schema.__name__} "
                                   f"({e.error_count()} error(s); first at {loc}: {first['msg']}){hint}",
                                   text=body, source=source)
