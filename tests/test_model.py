"""Model assembly: the tiny preset, LLaVA-1.5 quirks, and plain-transformers reloading."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import logits
from PIL import Image

from vlx import ModelConfig, build_llava
from vlx.model import ModelLoadError, image_processor, num_image_tokens


def test_tiny_is_small(tiny):
    model, processor = tiny
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert n_bytes < 5 * 2**20
    assert logits(model, processor).shape[-1] == len(processor.tokenizer)


def test_llava_15_vision_settings(tiny):
    model, processor = tiny
    assert model.config.vision_feature_layer == -2
    assert model.config.vision_feature_select_strategy == "default"  # CLS dropped
    assert model.config.projector_hidden_act == "gelu"
    # The processor expands <image> into exactly as many tokens as the tower yields patches.
    inputs = processor(images=Image.new("RGB", (50, 20)), text="<image>\nhi", return_tensors="pt")
    n = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n == num_image_tokens(model.config.vision_config) == 16
    with torch.no_grad():
        feats = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output[0]
    assert feats.shape == (16, model.config.text_config.hidden_size)


def test_image_token_and_pad_added_with_mean_rows():
    from vlx.model.build import _add_tokens
    from vlx.model.tiny import tiny_text_config
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    raw = Tokenizer(models.WordLevel({"a": 0, "b": 1, "</s>": 2}, unk_token="a"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>")
    config = tiny_text_config(3)
    config.pad_token_id = config.bos_token_id = None
    lm = AutoModelForCausalLM.from_config(config)
    old = lm.get_input_embeddings().weight[:3].clone()
    _add_tokens(lm, tok)
    assert tok.pad_token is not None and "<image>" in tok.get_vocab()
    emb = lm.get_input_embeddings().weight
    assert emb.shape[0] == len(tok) == 5
    torch.testing.assert_close(emb[:3], old)
    torch.testing.assert_close(emb[3], old.mean(0))
    torch.testing.assert_close(emb[4], old.mean(0))


def test_text_only_logits_match_standalone_lm():
    from vlx.model.build import _load_llm, _add_tokens

    model, processor = build_llava(ModelConfig(preset="tiny", seed=3))
    lm, tok = _load_llm("tiny", None, 3)
    _add_tokens(lm, tok)
    ids = processor.tokenizer("what colour is the sky", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, lm(input_ids=ids).logits, rtol=0, atol=0)


def test_linear_projector_is_llava1_single_linear():
    model, _ = build_llava(ModelConfig(preset="tiny", projector="linear"))
    proj = model.model.multi_modal_projector
    x = torch.randn(3, proj.linear_1.in_features)
    with torch.no_grad():
        torch.testing.assert_close(proj(x), proj.linear_1(x))


def test_pad_to_square_uses_clip_mean_colour():
    proc = image_processor(32, aspect_ratio="pad")
    img = Image.new("RGB", (64, 16), (255, 255, 255))
    px = proc(img, return_tensors="np")["pixel_values"][0]  # (3, 32, 32), normalised
    mean = np.array(proc.image_mean)[:, None]
    std = np.array(proc.image_std)[:, None]
    top_row = px[:, 0, :] * std + mean  # back to [0, 1]
    np.testing.assert_allclose(top_row * 255, np.array([[122], [116], [104]]) * np.ones((1, 32)), atol=1.5)
    middle = px[:, 16, 16] * std[:, 0] + mean[:, 0]
    np.testing.assert_allclose(middle, 1.0, atol=0.02)
    # `square` stretches instead: no padding colour anywhere.
    sq = image_processor(32, aspect_ratio="square")(img, return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(sq[:, 0, :] * std + mean, 1.0, atol=0.02)


def test_saved_model_loads_in_plain_transformers(tiny, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    expected = logits(model, processor)
    torch.save(expected, tmp_path / "expected.pt")
    script = f"""
import sys, torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration
m = LlavaForConditionalGeneration.from_pretrained({str(tmp_path)!r})
p = AutoProcessor.from_pretrained({str(tmp_path)!r})
inputs = p(images=Image.new("RGB", (36, 28), (200, 50, 50)), text="USER: <image>\\nWhat is it? ASSISTANT:", return_tensors="pt")
with torch.no_grad():
    out = m(**inputs).logits
assert "vlx" not in sys.modules
assert torch.equal(out, torch.load({str(tmp_path / "expected.pt")!r})), "logits differ"
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_unloadable_parts_give_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="(?s)cannot load vision tower .*no such directory"):
        build_llava(ModelConfig(preset="tiny", vision=str(tmp_path / "nope")))
    with pytest.raises(ModelLoadError, match="(?s)cannot load LLM .*no such directory"):
        build_llava(ModelConfig(preset="tiny", llm=str(tmp_path / "nope")))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="(?s)cannot load LLM .*local directory with a causal LM"):
        build_llava(ModelConfig(preset="tiny", llm=str(tmp_path / "broken")))


def test_build_is_deterministic():
    a, pa = build_llava(ModelConfig(preset="tiny"))
    b, pb = build_llava(ModelConfig(preset="tiny"))
    assert pa.tokenizer.get_vocab() == pb.tokenizer.get_vocab()
    for (na, ta), (nb, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(ta, tb), na
