"""The `tiny` preset's parts, built in-process in about a second with no download.

A byte-level BPE tokenizer trained on a small built-in corpus (so any text, JSON included, is
encodable), a 2-layer CLIP vision tower and a 2-layer Llama. Random weights: the preset exists
so that tests, the quick demo and CI exercise exactly the code path real models take.
"""

from __future__ import annotations

import itertools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import CLIPVisionConfig, LlamaConfig, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]

_WORDS = """
a an the is are of on in at to and with what which where how many color colour shape image picture photo
red green blue yellow orange purple white black gray grey brown pink cyan circle square triangle star
left right top bottom center middle upper lower corner one two three four five six seven eight nine ten
there here this that it its describe question answer word phrase single letter option choices directly
user assistant system chat helpful detailed polite curious artificial intelligence yes no true false null
shop store cafe bakery pharmacy restaurant bar bank hotel market street avenue road open close closed
monday tuesday wednesday thursday friday saturday sunday hours phone website name category address number
hello hi thanks please tell me about you can could would should do does did i we they he she sky sun
""".split()


def tiny_corpus() -> list[str]:
    lines = [" ".join(_WORDS[i : i + 12]) for i in range(0, len(_WORDS), 12)]
    lines += [f"{w.capitalize()} {v}." for w, v in itertools.product(_WORDS[:40], _WORDS[40:60])]
    lines += ['{"name":"Cafe 12","category":"cafe","house_number":"42","phone":"+1 555 0100"}',
              "0123456789 :;,.!?'\"()[]{}<>-_/\\@#$%^&*+=|~` \n\t"]
    return lines


def tiny_tokenizer(vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE tokenizer; special tokens as in Llama plus ChatML markers."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tiny_corpus(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    # Prepend BOS like Llama/Vicuna, so the tiny preset exercises the BOS-handling code paths.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=2048,
    )


def tiny_vision_config() -> CLIPVisionConfig:
    # 32 px, patch 8: a 4 x 4 grid -> 16 image tokens (+ CLS in the tower).
    return CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=2, projection_dim=32,
    )


def tiny_text_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False,
    )
