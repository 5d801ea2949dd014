"""The family table: llava-hf and Qwen2-VL checkpoints fine-tune, extract and export; other families are refused in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from vlx.cli import app
from vlx.model.families import FAMILIES, FamilyError, connector_modules, family_of, family_of_checkpoint, lora_targets, training_template

runner = CliRunner()
POI = Path(__file__).resolve().parent.parent / "templates" / "poi.py"

# The layout llava-hf's LLaVA-1.5 checkpoints render: "USER: <image>\n{text} ASSISTANT:", answers
# followed by a space and no end-of-turn token, no system prompt.
LLAVA_HF_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ part['text'] + ' ' }}{% endgeneration %}"
    "{% else %}{{ part['text'] + ' ' }}{% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@pytest.fixture(scope="module")
def llava_hf(tmp_path_factory):
    """A tiny LLaVA checkpoint laid out as llava-hf ships one: its own chat template, no vlx files."""
    from vlx import ModelConfig, build_llava

    model, processor = build_llava(ModelConfig(preset="tiny"))
    processor.chat_template = LLAVA_HF_TEMPLATE
    path = tmp_path_factory.mktemp("hf") / "llava-1.5-tiny-hf"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    assert not (path / "vlx_run.json").exists()
    return path


def test_llava_hf_template_is_matched_by_rendering(llava_hf):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(llava_hf)
    probe = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    assert processor.apply_chat_template(probe, add_generation_prompt=True, tokenize=False) == \
        "USER: <image>\nWhat is it? ASSISTANT:"
    assert training_template(processor) == "llava_hf"


def test_finetune_and_extract_on_a_llava_hf_checkpoint(llava_hf, tmp_path):
    target = {"pois": [{"name": "Nord", "category": "cafe", "address": {"house_number": "1", "street": None},
                        "phone": None, "website": None, "opening_hours": [], "open_24h": False}]}
    for i in range(4):
        Image.new("RGB", (32, 32), (40 * i, 90, 160)).save(tmp_path / f"s{i}.png")
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"image": f"s{i}.png", "target": target}) + "\n"
                                                 for i in range(4)))
    result = runner.invoke(app, ["finetune", "--schema", str(POI), "--base", str(llava_hf), "--data",
                                 str(tmp_path / "rows.jsonl"), "--out", str(tmp_path / "ft"), "--max-steps", "1",
                                 "--chat-ratio", "0", "--val-fraction", "0"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    info = json.loads((tmp_path / "ft" / "vlx_run.json").read_text())
    assert info["template"] == "llava_hf"
    refused = runner.invoke(app, ["finetune", "--schema", str(POI), "--base", str(llava_hf), "--data",
                                  str(tmp_path / "rows.jsonl"), "--out", str(tmp_path / "px"), "--max-pixels", "50000"])
    assert refused.exit_code == 2 and "'llava' checkpoints resize every image to a fixed size" in refused.stderr
    # The answer ends with </s>, supervised: what llava-hf's own template never trains.
    preview = runner.invoke(app, ["data", "preview", str(tmp_path / "rows.jsonl"), "--base", str(llava_hf),
                                  "--schema", str(POI), "--n", "1", "--html", str(tmp_path / "p.html")])
    assert preview.exit_code == 0, preview.output
    assert "template llava_hf" in preview.output and "ASSISTANT:" in preview.output
    page = (tmp_path / "p.html").read_text()
    assert re.search(r'class="sup">[^<]*&lt;/s&gt;</span>', page), "the end-of-turn token is not supervised"
    result = runner.invoke(app, ["extract", "--model", str(tmp_path / "ft"), str(tmp_path / "s0.png")])
    assert result.exit_code == 0, result.output
    [line] = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert "pois" in line["result"]


QWEN = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"]
PROCESSOR_FAMILIES = QWEN + ["llava_next", "idefics3", "smolvlm", "gemma3", "instructblip", "blip-2", "paligemma"]
END_OF_TURN = {"llava_next": "</s>", "idefics3": "<end_of_utterance>", "smolvlm": "<end_of_utterance>",
               "gemma3": "<end_of_turn>", "instructblip": "</s>", "blip-2": "</s>", "paligemma": "</s>"}
NEEDS_IMAGE = ("instructblip", "blip-2", "paligemma")
"""Families that read an image with every text (Q-Former queries first; PaliGemma's processor): a text-only
row is refused."""
FIXED_IMAGE_TOKENS = {"gemma3": 4, "instructblip": 4, "blip-2": 4, "paligemma": 16}
"""Image tokens per image where the count does not follow the image's size."""
"""The token that ends an answer in each family's template (Qwen's ChatML: `<|im_end|>`)."""
ANSWER_LEAD = {"llava_next": " ", "idefics3": " ", "smolvlm": " ", "instructblip": " ", "blip-2": " "}
"""What a template writes between the prompt and the answer (LLaVA-NeXT: `[/INST] answer`), which the
answer's first token carries, as a model generating after the prompt would write it."""


@pytest.fixture(scope="module", params=PROCESSOR_FAMILIES)
def vlm(request, tmp_path_factory):
    """A tiny random checkpoint of a family whose samples go through its processor, saved as the hub lays
    one out: Qwen2-VL / Qwen2.5-VL / Qwen3-VL (their processors name a video processor), LLaVA-NeXT
    (anyres tiles), Idefics3 and SmolVLM (image splits and a global image)."""
    from vlx.model.tiny_families import (tiny_blip2, tiny_gemma3, tiny_idefics3, tiny_instructblip, tiny_llava_next,
                                tiny_paligemma, tiny_qwen2_vl)

    path = tmp_path_factory.mktemp("vlm") / f"{request.param}-tiny"
    if request.param == "llava_next":
        return tiny_llava_next(path)
    if request.param == "gemma3":
        return tiny_gemma3(path)
    if request.param == "instructblip":
        return tiny_instructblip(path)
    if request.param == "blip-2":
        return tiny_blip2(path)
    if request.param == "paligemma":
        return tiny_paligemma(path)
    if request.param in ("idefics3", "smolvlm"):
        return tiny_idefics3(path, model_type=request.param)
    return tiny_qwen2_vl(path, model_type=request.param)


def test_extract_through_the_checkpoints_processor_without_torchvision(vlm, tmp_path):
    import vlx
    from vlx.schema import load_schema

    sizes = [(80, 60), (150, 90), (200, 60)]  # dynamic resolution / anyres: a different number of image tokens each
    paths = []
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (60 * i, 120, 200)).save(tmp_path / f"q{i}.png")
        paths.append(tmp_path / f"q{i}.png")
    extractor = vlx.load(vlm)
    assert extractor.template is None  # prompted with the checkpoint's own chat template
    Schema = load_schema(POI)
    batched = extractor.extract_many(paths, Schema, batch_size=3)
    assert all(isinstance(r, Schema) for r in batched)
    assert [r.model_dump() for r in batched] == [extractor.extract(p, Schema).model_dump() for p in paths]
    result = runner.invoke(app, ["extract", "--model", str(vlm), "--schema", str(POI), str(paths[0])])
    assert result.exit_code == 0, result.output
    [line] = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert "pois" in line["result"]


def _scene_rows(tmp_path, sizes=((80, 60), (150, 90), (200, 60), (64, 64))) -> Path:
    target = {"pois": [{"name": "Nord Fox", "category": "cafe", "address": {"house_number": "12a", "street": None},
                        "phone": None, "website": None, "opening_hours": [], "open_24h": False}]}
    for i, size in enumerate(sizes):  # dynamic resolution: another number of image tokens for each
        Image.new("RGB", size, (50 * i, 90, 160)).save(tmp_path / f"s{i}.png")
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"image": f"s{i}.png", "target": target}) + "\n"
                                                 for i in range(len(sizes))))
    return tmp_path / "rows.jsonl"


def test_processor_samples_supervise_the_answer_and_its_end_of_turn_only(vlm, tmp_path):
    import torch

    import vlx.api
    from vlx.data.dataset import Collator
    from vlx.data.formats import Row
    from vlx.data.templates import IGNORE_INDEX
    from vlx.data.vlm_data import VlmDataset, prepare_vlm
    from vlx.decode.constrained import ConstrainedDecoder
    from vlx.model.vlm import load_vlm
    from vlx.schema import canonical_json, load_schema

    model, processor = load_vlm(vlm)
    family = family_of_checkpoint(vlm).model_type
    end, lead = END_OF_TURN.get(family, "<|im_end|>"), ANSWER_LEAD.get(family, "")
    Schema = load_schema(POI)
    _scene_rows(tmp_path)
    answer = canonical_json(Schema.model_validate(json.loads((tmp_path / "rows.jsonl").read_text().splitlines()[0])["target"]))
    rows = [Row(origin=f"r{i}", image=str(tmp_path / f"s{i}.png"), source="extraction",
                conversations=[{"from": "human", "value": "<image>\nRead the sign."}, {"from": "gpt", "value": answer}])
            for i in range(3)]
    rows.append(Row(origin="chat", image=None, source="chat", conversations=[
        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
        {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Goodbye."}]))
    examples, problems = prepare_vlm(rows, processor, max_length=4096)
    if family in NEEDS_IMAGE:  # every row needs an image: the text-only chat row is refused, named
        assert [p.origin for p in problems] == ["chat"] and "give this row an image" in problems[0].message
    else:
        assert not problems
    tok = processor.tokenizer
    prompt = vlx.api.Extractor(model, processor, template=None).prompt("<image>\nRead the sign.")
    image_id = model.config.image_token_id
    counts = [e.input_ids.count(image_id) for e in examples[:3]]
    if family in FIXED_IMAGE_TOKENS:  # mm_tokens_per_image, num_query_tokens, image_seq_length
        assert counts == [FIXED_IMAGE_TOKENS[family]] * 3
    else:
        assert len(set(counts)) == 3 and all(counts)  # the processor expanded each image to its own size
    from vlx.decode.generate import encode_batch

    for i, e in enumerate(examples[:3]):
        supervised = [x for x in e.labels if x != IGNORE_INDEX]
        assert tok.decode(supervised) == lead + answer + end
        assert e.image_text == prompt  # exactly what `vlx extract` prompts with, tokenized as it does
        served = encode_batch(processor, [prompt], [Image.open(tmp_path / f"s{i}.png")], "cpu", torch.float32)
        assert e.input_ids[: served["input_ids"].shape[1]] == served["input_ids"][0].tolist()
        assert e.labels[served["input_ids"].shape[1]] != IGNORE_INDEX  # the answer starts right after it
        assert tok.bos_token_id is None or served["input_ids"][0].tolist().count(tok.bos_token_id) <= 1  # never doubled
    if family not in NEEDS_IMAGE:
        assert tok.decode([x for x in examples[3].labels if x != IGNORE_INDEX]) == f"{lead}Hello!{end}{lead}Goodbye.{end}"
    # The grammar `vlx extract` decodes with takes the answer and its end-of-turn token for token.
    decoder = ConstrainedDecoder(model, processor, Schema, template=None)
    from vlx.decode.processor import GrammarLogitsProcessor

    walker = GrammarLogitsProcessor(decoder.index, decoder.eos_token_id)
    seen, width = torch.tensor([[0]]), model.config.text_config.vocab_size
    for token in [x for x in examples[0].labels if x != IGNORE_INDEX]:
        assert walker(seen, torch.zeros(1, width))[0, token] != float("-inf"), tok.decode([token])
        seen = torch.cat([seen, torch.tensor([[token]])], dim=1)
    # A padded batch gives every row the logits it has alone.
    dataset = VlmDataset(examples, processor)
    batch = Collator(tok.pad_token_id)([dataset[i] for i in range(len(examples))])
    labels = batch.pop("labels")
    with torch.no_grad():
        together = model(**batch).logits
        for i in range(len(examples)):
            alone = Collator(tok.pad_token_id)([dataset[i]])
            alone.pop("labels")
            n = len(examples[i].input_ids)
            assert torch.allclose(model(**alone).logits[0], together[i, :n], atol=1e-5)
    assert labels.shape == batch["input_ids"].shape


def test_finetune_extract_export_through_the_checkpoints_processor(vlm, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from vlx.model.vlm import load_processor

    rows = _scene_rows(tmp_path)
    run, exported = tmp_path / "ft", tmp_path / "exp"
    family = family_of_checkpoint(vlm)
    # One pixel budget (families that have one): set once, kept in the run, used by extraction and the export.
    budget = {"shortest_edge": 784, "longest_edge": 3136} if family.pixel_budget else None
    flags = ["--min-pixels", "784", "--max-pixels", "3136"] if budget else []
    result = runner.invoke(app, ["finetune", "--schema", str(POI), "--base", str(vlm), "--data", str(rows),
                                 "--out", str(run), "--max-steps", "2", "--val-fraction", "0", "--learning-rate", "0.05",
                                 *flags])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert json.loads((run / "vlx_run.json").read_text())["template"] is None  # the checkpoint's own template
    import vlx

    extractor = vlx.load(run)
    if budget:
        assert json.loads((run / "processor_config.json").read_text())["image_processor"]["size"] == budget
        assert {k: v for k, v in dict(extractor.processor.image_processor.size).items() if v is not None} == budget
    adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    connectors = connector_modules(AutoModelForImageTextToText.from_pretrained(vlm), family)
    assert connectors == {"llava_next": ["multi_modal_projector"], "gemma3": ["multi_modal_projector"],
                          "paligemma": ["multi_modal_projector"],
                          "qwen3_vl": ["merger", "deepstack_merger_list.0"],
                          "idefics3": ["connector"], "smolvlm": ["connector"],
                          "instructblip": ["qformer", "language_projection"],
                          "blip-2": ["qformer", "language_projection"]}.get(
        family.model_type, ["merger"])
    assert any("lora_" in k for k in adapter)
    for name in connectors:  # every connector (Qwen3-VL: the deepstack mergers too) trained and saved
        assert any(f".{name}." in k for k in adapter), name
    assert all("lora_" in k or any(f".{n}." in k for n in connectors) for k in adapter), \
        [k for k in adapter if "lora_" not in k][:3]
    assert not any(f"{family.vision}." in k and ".lora_" in k for k in adapter)  # the vision tower stays frozen
    result = runner.invoke(app, ["extract", "--model", str(run), str(tmp_path / "s0.png"), str(tmp_path / "s1.png")])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 2 and all("pois" in x["result"] for x in lines)
    result = runner.invoke(app, ["export", "--model", str(run), "--out", str(exported)])
    assert result.exit_code == 0, result.output
    if budget:
        assert json.loads((exported / "processor_config.json").read_text())["image_processor"]["size"] == budget
    merged = AutoModelForImageTextToText.from_pretrained(exported).eval()  # no vlx in the way
    base = AutoModelForImageTextToText.from_pretrained(vlm)
    adapted = PeftModel.from_pretrained(base, run / "adapter").eval()
    processor = load_processor(exported)
    prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}],
                                           add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=[Image.open(tmp_path / "s2.png")], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(merged(**inputs).logits, adapted(**inputs).logits, atol=1e-4)
        plain = AutoModelForImageTextToText.from_pretrained(vlm).eval()  # `base` now holds the adapter
        assert not torch.allclose(merged(**inputs).logits, plain(**inputs).logits, atol=1e-4)
    # The serving pair: the base with the trained connector, and the language model's LoRA alone.
    result = runner.invoke(app, ["export", "--model", str(run), "--out", str(tmp_path / "serve"), "--lora"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "serve" / "adapter" / "adapter_config.json").read_text())
    keys = load_file(str(tmp_path / "serve" / "adapter" / "adapter_model.safetensors"))
    assert config["modules_to_save"] is None and keys and all(".lora_" in k and family.language_model in k for k in keys)
    served = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tmp_path / "serve" / "base"),
                                       tmp_path / "serve" / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(served(**inputs).logits, merged(**inputs).logits, atol=1e-4)
    result = runner.invoke(app, ["finetune", "--schema", str(POI), "--base", str(vlm), "--data", str(rows),
                                 "--out", str(tmp_path / "packed"), "--packing", "--max-steps", "1", "--val-fraction", "0"])
    if family.packing:
        assert result.exit_code == 0, result.output + repr(result.exception)
    else:  # refused before anything loads, saying why
        assert result.exit_code == 2 and f"--packing is not available for '{family.model_type}'" in result.output


def test_packing_gives_every_sample_the_logits_it_has_alone(vlm, tmp_path):
    """Qwen: packed with 4-row position ids (text row + the sample's own mRoPE rows): exact; restarting 1-D
    ids: not. LLaVA-NeXT (plain RoPE): restarting 1-D ids are exact."""
    import torch

    from vlx.data.dataset import Collator
    from vlx.data.formats import Row
    from vlx.data.packing import PackingCollator, mrope_index, pack_rows
    from vlx.data.vlm_data import VlmDataset, prepare_vlm
    from vlx.model.vlm import load_vlm

    model, processor = load_vlm(vlm)
    rows = []
    for i, size in enumerate([(56, 56), (112, 84), (150, 90)]):
        Image.new("RGB", size, (60 * i, 100, 20)).save(tmp_path / f"{i}.png")
        rows.append(Row(origin=f"r{i}", image=str(tmp_path / f"{i}.png"), source="extraction",
                        conversations=[{"from": "human", "value": "<image>\nRead."}, {"from": "gpt", "value": f'{{"a":{i}}}'}]))
    if family_of_checkpoint(vlm).model_type not in NEEDS_IMAGE:  # which read an image with every text
        rows.append(Row(origin="chat", image=None, source="chat",
                        conversations=[{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello!"}]))
    examples, problems = prepare_vlm(rows, processor, max_length=4096)
    assert not problems
    items = [VlmDataset(examples, processor)[i] for i in range(len(examples))]
    lengths = [len(e.input_ids) for e in examples]
    pad = processor.tokenizer.pad_token_id
    with torch.no_grad():
        alone = []
        for item in items:
            batch = Collator(pad)([item])
            batch.pop("labels")
            alone.append(model(**batch).logits[0])

        def worst(collator, one_row):
            batch = collator(items)
            batch.pop("labels")
            logits, err = model(**batch).logits, 0.0
            for r, row in enumerate(pack_rows(lengths, None if one_row else max(lengths))):
                start = 0
                for i in row:
                    err = max(err, (logits[r, start:start + lengths[i]] - alone[i]).abs().max().item())
                    start += lengths[i]
            return err

        family = family_of_checkpoint(vlm)
        rope_index = mrope_index(model) if family.mrope else None
        if not family.packing:  # why `--packing` is refused: packed samples do not keep their logits
            assert worst(PackingCollator(pad, one_row=True, rope_index=rope_index), True) > 1e-2
            return
        for one_row in (True, False):
            assert worst(PackingCollator(pad, one_row=one_row, rope_index=rope_index), one_row) < 1e-5
        if family.mrope:
            assert worst(PackingCollator(pad, one_row=True), True) > 1e-2  # 1-D restarting ids corrupt the later samples


def test_unsupported_families_are_refused_in_one_line(tmp_path):
    (tmp_path / "rows.jsonl").write_text("{}\n")
    (tmp_path / "blip").mkdir()
    (tmp_path / "blip" / "config.json").write_text(json.dumps({"model_type": "blip-2", "use_decoder_only_language_model": False}))
    result = runner.invoke(app, ["finetune", "--schema", str(POI), "--base", str(tmp_path / "blip"), "--data",
                                 str(tmp_path / "rows.jsonl"), "--out", str(tmp_path / "ft")])
    assert result.exit_code == 2
    [line] = [x for x in result.stderr.splitlines() if x.strip()]
    assert "vlx cannot fine-tune with this 'blip-2' checkpoint: it needs a decoder-only" in line
    (tmp_path / "intern").mkdir()
    (tmp_path / "intern" / "config.json").write_text(json.dumps({"model_type": "internvl"}))
    result = runner.invoke(app, ["finetune", "--schema", str(POI), "--base", str(tmp_path / "intern"), "--data",
                                 str(tmp_path / "rows.jsonl"), "--out", str(tmp_path / "ft")])
    assert result.exit_code == 2
    [line] = [x for x in result.stderr.splitlines() if x.strip()]
    assert "vlx cannot fine-tune with 'internvl' checkpoints yet" in line and \
        "it can with: llava, llava_next, qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_5, idefics3, smolvlm, instructblip, " \
        "blip-2, gemma3, paligemma" in line
    (tmp_path / "lfm").mkdir()
    (tmp_path / "lfm" / "config.json").write_text(json.dumps({"model_type": "lfm2_vl"}))
    result = runner.invoke(app, ["extract", "--model", str(tmp_path / "lfm"), "--schema", str(POI), "x.png"])
    assert result.exit_code == 2 and "vlx cannot extract with 'lfm2_vl' checkpoints yet" in result.stderr
    with pytest.raises(FamilyError, match="'fancy_vlm' checkpoints"):
        family_of("fancy_vlm", use="extract")


def test_lora_patterns_never_reach_a_vision_block(tiny):
    model, _ = tiny
    targets = lora_targets(model, FAMILIES["llava"])
    assert targets and all(t.startswith("model.language_model.layers.") for t in targets)
    assert not any("vision" in t or "projector" in t for t in targets)
    qwen = re.compile(FAMILIES["qwen2_5_vl"].lora_pattern)
    assert qwen.match("model.language_model.layers.3.mlp.gate_proj")
    assert not qwen.match("model.visual.blocks.3.mlp.gate_proj")  # Qwen2.5-VL's vision MLP has gate_proj too
    assert not qwen.match("model.visual.blocks.0.attn.qkv")
    smol = re.compile(FAMILIES["smolvlm"].lora_pattern)
    assert smol.match("model.text_model.layers.0.self_attn.q_proj")
    assert not smol.match("model.vision_model.encoder.layers.0.self_attn.q_proj")
    blip2 = re.compile(FAMILIES["blip-2"].lora_pattern)  # BLIP-2's OPT: out_proj, fc1, fc2
    assert all(blip2.match(f"language_model.model.decoder.layers.1.{m}") for m in ("self_attn.out_proj", "fc1", "fc2"))
    assert not blip2.match("vision_model.encoder.layers.0.mlp.fc1") and not blip2.match("language_projection")


@pytest.mark.parametrize("vlm", ["qwen3_5"], indirect=True)
def test_lora_on_qwen3_5_wraps_both_kinds_of_attention_layer_and_no_vision_block(vlm):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(vlm)
    targets = lora_targets(model, FAMILIES["qwen3_5"])
    kinds = {t.split(".")[4] for t in targets}  # model.language_model.layers.N.<kind>
    assert kinds == {"linear_attn", "self_attn", "mlp"}, kinds
    assert {t.rsplit(".", 1)[-1] for t in targets if ".linear_attn." in t} == {"in_proj_qkv", "in_proj_z", "out_proj"}
    assert all(t.startswith("model.language_model.layers.") for t in targets)


def test_a_hub_id_that_cannot_be_fetched_says_how_to_get_it(monkeypatch):
    from vlx.model.build import ModelLoadError, resolve_checkpoint

    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    with pytest.raises(ModelLoadError, match=r"huggingface-cli download llava-hf/no-such-model-here --local-dir DIR"):
        resolve_checkpoint("llava-hf/no-such-model-here")


def test_data_validate_with_a_processor_base_counts_its_image_tokens(vlm, tmp_path):
    rows = _scene_rows(tmp_path, sizes=((56, 56), (112, 112), (150, 90)))
    result = runner.invoke(app, ["data", "validate", str(rows), "--schema", str(POI), "--base", str(vlm)])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("tokens per sample"))
    # Qwen: 56 px squares give 4 tokens; 112 px squares 16 at Qwen2's 28 px a merged token, 9 at Qwen3-VL's and Qwen3.5's 32
    # (112 px rounds down to 96 inside the 112 x 112 pixel budget). LLaVA-NeXT: 16 for the base image, then
    # squares fill the 64 x 64 pinpoint (2 x 2 tiles of 4 x 4 features: 64, + 8 row newlines) = 88, and
    # 150 x 90 unpads to 4 of those 8 rows (32 + 4 newlines) = 52. Idefics3/SmolVLM: resized to 96 px on the
    # long side, split into 32 px tiles plus the global image, 4 tokens each: squares 9 + 1 -> 40, 150 x 90
    # 3 x 2 + 1 -> 28.
    # Gemma 3, InstructBLIP, BLIP-2: 4 for every image (mm_tokens_per_image, num_query_tokens); PaliGemma 16.
    expected = {"qwen3_vl": "4-9", "qwen3_5": "4-9", "llava_next": "52-88", "idefics3": "28-40", "smolvlm": "28-40",
                "gemma3": "4-4", "instructblip": "4-4", "blip-2": "4-4", "paligemma": "16-16"}.get(
        family_of_checkpoint(vlm).model_type, "4-16")
    assert "template the checkpoint's own" in line and f"image tokens per image {expected}" in line
    long = [{"id": "long", "image": "s0.png", "conversations": [
        {"from": "human", "value": "<image>\n" + "word " * 3000}, {"from": "gpt", "value": "ok"}]},
        {"id": "short", "image": "s1.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A shop."}]}]
    (tmp_path / "chat.json").write_text(json.dumps(long))
    result = runner.invoke(app, ["data", "validate", str(tmp_path / "chat.json"), "--base", str(vlm)])
    assert result.exit_code == 1
    [problem] = [x for x in result.output.splitlines() if "max_length" in x and "tokens with the image" in x]
    assert "chat.json" in problem and "over max_length=2048" in problem


@pytest.mark.parametrize("vlm", QWEN, indirect=True)
def test_a_qwen_checkpoint_in_the_hubs_older_layout_loads_without_torchvision(vlm, tmp_path):
    """Qwen/Qwen2-VL-2B-Instruct on the hub: preprocessor_config.json (with processor_class), chat_template.json
    and a video_preprocessor_config.json, no processor_config.json."""
    import shutil

    import vlx
    from vlx.schema import load_schema

    hub = tmp_path / "hub"
    shutil.copytree(vlm, hub)
    combined = json.loads((hub / "processor_config.json").read_text())
    (hub / "preprocessor_config.json").write_text(json.dumps({**combined["image_processor"],
                                                              "processor_class": combined["processor_class"]}))
    (hub / "processor_config.json").unlink()
    (hub / "chat_template.json").write_text(json.dumps({"chat_template": (hub / "chat_template.jinja").read_text()}))
    (hub / "chat_template.jinja").unlink()
    (hub / "video_preprocessor_config.json").write_text(json.dumps({"video_processor_type": "Qwen2VLVideoProcessor"}))
    Image.new("RGB", (80, 60), (10, 120, 200)).save(tmp_path / "a.png")
    extractor = vlx.load(hub)
    assert extractor.processor.chat_template and "<|im_start|>assistant" in extractor.prompt("<image>\nHi")
    Schema = load_schema(POI)
    assert isinstance(extractor.extract(tmp_path / "a.png", Schema), Schema)


@pytest.mark.parametrize("vlm", ["qwen2_vl", "qwen3_vl", "llava_next", "idefics3", "gemma3", "instructblip"],
                         indirect=True)
def test_a_text_only_batch_still_runs_the_tower_and_connector_on_a_stand_in_image(vlm):
    """Several processes training on mixed rows: a batch without an image runs the tower and the connector
    on one blank image at zero weight, so DDP sees a gradient for every connector weight and ZeRO-3 a
    gather of every tower shard on every process."""
    from transformers import AutoModelForImageTextToText

    from vlx.model.vlm import load_processor
    from vlx.train.trainer import image_stand_in, stand_in_term

    model = AutoModelForImageTextToText.from_pretrained(vlm)
    family = family_of(model.config)
    connectors = [model.get_submodule(path) for path in family.connector.split(",")]
    for p in model.parameters():
        p.requires_grad_(False)
    for module in connectors:
        for p in module.parameters():
            p.requires_grad_(True)
    calls = []
    model.get_submodule(family.vision).register_forward_hook(lambda *args: calls.append(1))
    term = stand_in_term(model, image_stand_in(load_processor(vlm)), "cpu")
    term.backward()
    assert term.item() == 0.0 and calls
    grads = [p.grad for module in connectors for p in module.parameters()]
    assert grads and all(g is not None and not g.any() for g in grads)


def test_the_stand_in_on_vlx_llava_runs_the_tower_or_with_cached_features_only_the_projector(tiny):
    import copy

    from vlx.train.trainer import image_stand_in, stand_in_term

    for cached in (False, True):
        model = copy.deepcopy(tiny[0])
        projector = model.model.multi_modal_projector
        trainable = set(projector.parameters())
        for p in model.parameters():
            p.requires_grad_(p in trainable)
        calls = []
        model.model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
        stand_in_term(model, image_stand_in(tiny[1]), "cpu", cached=cached).backward()
        assert bool(calls) != cached
        assert all(p.grad is not None and not p.grad.any() for p in projector.parameters())
