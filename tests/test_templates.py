"""Conversation templates and label masks against hand-written expectations."""

from __future__ import annotations

import pytest

from vlx.data.templates import (
    IGNORE_INDEX,
    VICUNA_SYSTEM,
    SampleError,
    Turn,
    encode,
    fit_length,
    prompt_text,
    render,
    to_turns,
)

SYS = VICUNA_SYSTEM


def _encode(tiny, segments):
    model, processor = tiny
    return encode(processor.tokenizer, segments, image_token_id=model.config.image_token_id, num_image_tokens=16)


def _supervised_spans(tok, enc) -> list[str]:
    """Decode each maximal run of supervised labels."""
    spans, run = [], []
    for label in enc.labels + [IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            run.append(label)
        elif run:
            spans.append(tok.decode(run))
            run = []
    return spans


def test_vicuna_v1_is_character_exact():
    turns = [Turn("<image>\nWhat is shown?", "A cat."), Turn("What colour?", "Black.")]
    text = "".join(s.text for s in render("vicuna_v1", turns))
    assert text == (f"{SYS} USER: <image>\nWhat is shown? ASSISTANT: A cat.</s>"
                    "USER: What colour? ASSISTANT: Black.</s>")


def test_vicuna_v1_masks_multi_turn(tiny):
    tok = tiny[1].tokenizer
    turns = [Turn("<image>\nWhat is shown?", "A cat."), Turn("What colour?", "Black.")]
    enc = _encode(tiny, render("vicuna_v1", turns))
    # Only the answers and their EOS are supervised; the space after "ASSISTANT:" belongs to the answer.
    assert _supervised_spans(tok, enc) == [" A cat.</s>", " Black.</s>"]
    assert enc.input_ids[0] == tok.bos_token_id and enc.labels[0] == IGNORE_INDEX
    # 16 image tokens, none supervised, and the full sequence decodes back to the reference text.
    image_id = tiny[0].config.image_token_id
    assert enc.input_ids.count(image_id) == 16 and enc.image_span[1] - enc.image_span[0] == 16
    assert all(enc.labels[i] == IGNORE_INDEX for i in range(*enc.image_span))
    ids = [t for t in enc.input_ids if t != image_id]
    ids.insert(enc.image_span[0], image_id)
    assert tok.decode(ids[1:]) == (f"{SYS} USER: <image>\nWhat is shown? ASSISTANT: A cat.</s>"
                                   "USER: What colour? ASSISTANT: Black.</s>")


def test_vicuna_v1_text_only_row(tiny):
    enc = _encode(tiny, render("vicuna_v1", [Turn("Say hello.", "Hello there!")]))
    assert enc.image_span is None
    assert _supervised_spans(tiny[1].tokenizer, enc) == [" Hello there!</s>"]


def test_plain_template_stage1(tiny):
    tok = tiny[1].tokenizer
    segs = render("plain", [Turn("<image>\nDescribe the image briefly.", "a red square")])
    assert [(s.text, s.supervised) for s in segs] == [("<image>", False), ("a red square\n", True)]
    enc = _encode(tiny, segs)
    # BOS, 16 image tokens, then the caption + "\n", all supervised, no EOS (reference preprocess_plain).
    assert enc.input_ids[:17] == [tok.bos_token_id] + [tiny[0].config.image_token_id] * 16
    assert enc.labels[:17] == [IGNORE_INDEX] * 17
    assert tok.decode(enc.labels[17:]) == "a red square\n"
    assert all(label != IGNORE_INDEX for label in enc.labels[17:])


def test_chatml_masks(tiny):
    tok = tiny[1].tokenizer
    segs = render("chatml", [Turn("<image>\nHi", "Hello!"), Turn("Bye", "Goodbye.")], system="S")
    assert "".join(s.text for s in segs) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n<image>\nHi<|im_end|>\n<|im_start|>assistant\n"
        "Hello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nGoodbye.<|im_end|>")
    assert _supervised_spans(tok, _encode(tiny, segs)) == ["Hello!<|im_end|>", "Goodbye.<|im_end|>"]


@pytest.mark.parametrize("template", ["vicuna_v1", "chatml"])
def test_processor_chat_template_matches_training_prompt(template):
    """Plain transformers users (`processor.apply_chat_template`) get the exact prompt vlx trains on."""
    from vlx import ModelConfig, build_llava

    _, processor = build_llava(ModelConfig(preset="tiny", template=template))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
                {"role": "assistant", "content": "A cat."},
                {"role": "user", "content": "Sure?"}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    turns = [Turn("<image>\nWhat is it?", "A cat."), Turn("Sure?", None)]
    assert rendered == prompt_text(template, turns)


def test_structure_errors():
    with pytest.raises(SampleError, match="empty conversation"):
        to_turns([])
    with pytest.raises(SampleError, match="no gpt answer"):
        to_turns([{"from": "human", "value": "hi"}])
    with pytest.raises(SampleError, match="expected 'human'"):
        to_turns([{"from": "gpt", "value": "hi"}, {"from": "human", "value": "x"}])
    with pytest.raises(SampleError, match="answer is empty"):
        to_turns([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "  "}])


def test_fit_length(tiny):
    enc = _encode(tiny, render("vicuna_v1", [Turn("<image>\nQ?", "a long answer " * 10)]))
    n = len(enc.input_ids)
    assert fit_length(enc, n, row="r") is enc
    with pytest.raises(SampleError, match=r"r: .* exceed max_length=.*--max-length"):
        fit_length(enc, n - 1, row="r")
    cut = fit_length(enc, n - 5, row="r", truncate=True)
    assert len(cut.input_ids) == n - 5 and cut.labels == enc.labels[: n - 5]
    with pytest.raises(SampleError, match="cut into the image tokens"):
        fit_length(enc, enc.image_span[1] - 1, row="r", truncate=True)
    with pytest.raises(SampleError, match="no answer token"):
        fit_length(enc, enc.image_span[1] + 2, row="r", truncate=True)


def test_spelled_values_are_one_character_per_token_and_decode_to_the_same_text():
    from vlx.data.templates import encode_continuation, encode_spelled
    from vlx.model.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    text = '{"name":"Golden Fox","category":"bakery","note":"a \\"b\\""}'
    ids = encode_spelled(tok, text, ("name", "note"))
    assert tok.decode(ids) == text
    spelled = [tok.decode([i]) for i in ids]
    start = spelled.index("G")
    assert spelled[start:start + 10] == list("Golden Fox")
    assert encode_spelled(tok, text, ()) == encode_continuation(tok, text)
    assert len(ids) > len(encode_continuation(tok, text))
