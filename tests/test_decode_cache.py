"""The appending key/value cache (`vlx.decode.cache`): the same tokens and logits as transformers' own."""

from __future__ import annotations

import torch
from PIL import Image
from transformers.cache_utils import DynamicCache, DynamicLayer

from vlx.decode.cache import GrowingLayer, decoding_cache
from vlx.decode.generate import encode_batch


def _prompts(n):
    return [f"USER: <image>\nDescribe shape {i}{' in detail' * (i % 3)}. ASSISTANT:" for i in range(n)]


def _images(n):
    return [Image.new("RGB", (64, 64), (40 * i % 255, 90, 200 - 30 * i % 200)) for i in range(n)]


def test_generate_with_the_appending_cache_equals_the_dynamic_cache(tiny):
    model, processor = tiny
    enc = encode_batch(processor, _prompts(5), _images(5), model.device, torch.float32)
    with torch.inference_mode():
        ours = model.generate(**enc, cache=decoding_cache(model), max_new_tokens=40, do_sample=False,
                              pad_token_id=processor.tokenizer.pad_token_id, output_scores=True,
                              return_dict_in_generate=True)
        theirs = model.generate(**enc, cache=DynamicCache(config=model.config.get_text_config(decoder=True)),
                                max_new_tokens=40, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id,
                                output_scores=True, return_dict_in_generate=True)
    assert torch.equal(ours.sequences, theirs.sequences)
    assert ours.sequences.shape[1] > enc["input_ids"].shape[1] + 20  # rows kept decoding (growth itself: the test below)
    for a, b in zip(ours.scores, theirs.scores):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_decoding_cache_replaces_only_plain_layers(tiny):
    cache = decoding_cache(tiny[0])
    assert cache.layers and all(type(layer) is GrowingLayer for layer in cache.layers)


def test_growing_layer_matches_concatenation_through_growth_and_reselection():
    torch.manual_seed(0)
    ours, ref = GrowingLayer(), DynamicLayer()
    chunks = [torch.randn(4, 2, n, 8) for n in (5, 1, 1, 70, 1, 200, 3)]
    for i, k in enumerate(chunks):
        v = k * 2 + 1
        a, b = ours.update(k, v), ref.update(k, v)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert ours.get_seq_length() == ref.get_seq_length()
        if i == 3:  # generate drops and reorders rows (beam search, assisted decoding): the views are replaced
            idx = torch.tensor([2, 0, 3, 1])
            ours.batch_select_indices(idx)
            ref.batch_select_indices(idx)
        if i == 5:
            ours.crop(-7)
            ref.crop(-7)
    assert ours._buffers[0].shape[-2] >= ours.get_seq_length()
