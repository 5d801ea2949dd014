"""Schema-constrained decoding, in separately testable steps:

    grammar_schema(Schema)                 # vlx.schema: JSON Schema, all required, no extra keys
    -> answer_grammar(Schema, template)    # regex admitting answer prefix + canonical JSON
    -> compile_index(regex, tokenizer, eos)  # outlines_core Index, cached in memory and on disk
    -> GrammarLogitsProcessor(index, eos)  # transformers logits processor
    -> generate(model, processor, prompts, images, logits_processor=...)

`ConstrainedDecoder` wires them and turns texts into validated instances or `ExtractionError`s.
"""

from vlx.decode.constrained import (
    BACKENDS,
    DEFAULT_BACKEND,
    ConstrainedDecoder,
    DecodeConfig,
    ExtractionError,
    end_token_id,
    logits_processor,
)
from vlx.decode.generate import generate
from vlx.decode.grammar import Grammar, answer_grammar, float_range_regex, int_range_regex, schema_grammar
from vlx.decode.index import cache_dir, compile_index, token_bytes, vocabulary
from vlx.decode.processor import GrammarLogitsProcessor

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "ConstrainedDecoder", "DecodeConfig", "ExtractionError", "end_token_id",
           "logits_processor", "generate", "Grammar", "answer_grammar", "float_range_regex", "int_range_regex",
           "schema_grammar", "cache_dir", "compile_index", "token_bytes", "vocabulary", "GrammarLogitsProcessor"]
