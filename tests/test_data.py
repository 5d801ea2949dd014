"""Reading data, mixtures with format prompts, validation of bad rows, modality batching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlx.data.dataset import Collator, LlavaDataset, prepare
from vlx.data.formats import SHORT_ANSWER_PROMPT, DataError, load_rows
from vlx.data.sampler import modality_length_order


def _prepare(tiny, rows, template="vicuna_v1", max_length=256, **kw):
    model, processor = tiny
    return prepare(rows, processor.tokenizer, template=template, image_token_id=model.config.image_token_id,
                   num_image_tokens=model.config.image_seq_length, max_length=max_length, **kw)


def test_json_jsonl_and_datasets_read_alike(colour_data, tmp_path):
    rows_json = load_rows(colour_data / "instruct.json")
    records = json.loads((colour_data / "instruct.json").read_text())
    (colour_data / "instruct.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    rows_jsonl = load_rows(colour_data / "instruct.jsonl")
    assert [r.conversations for r in rows_json] == [r.conversations for r in rows_jsonl]
    assert rows_json[0].image == str(colour_data / "img0.png")  # resolved against the file's folder
    assert rows_json[-1].image is None  # text-only row

    import datasets

    ds = datasets.Dataset.from_list([{k: v for k, v in r.items() if k != "image"} | {"image": r.get("image")}
                                     for r in records])
    ds.save_to_disk(str(tmp_path / "ds"))
    rows_ds = load_rows(tmp_path / "ds", image_folder=colour_data)
    assert [r.conversations for r in rows_ds] == [r.conversations for r in rows_json]
    assert [r.image for r in rows_ds] == [r.image for r in rows_json]


def test_image_folder_overrides_file_folder(colour_data):
    rows = load_rows(colour_data / "instruct.json", image_folder="/elsewhere")
    assert rows[0].image == "/elsewhere/img0.png"


def test_mixture_applies_format_prompts_and_ratios(colour_data, tiny):
    (colour_data / "mix.yaml").write_text(
        "sources:\n"
        "  - name: vqa\n    path: instruct.json\n    format_prompt: " + json.dumps(SHORT_ANSWER_PROMPT) +
        "\n    ratio: 0.5\n"
        "  - name: captions\n    path: captions.json\n    ratio: 2\n")
    rows = load_rows(colour_data / "mix.yaml", seed=1)
    vqa = [r for r in rows if r.source == "vqa"]
    caps = [r for r in rows if r.source == "captions"]
    assert len(vqa) == 10 and len(caps) == 32
    assert load_rows(colour_data / "mix.yaml", seed=1)[0].origin == rows[0].origin  # deterministic
    with_image = [r for r in vqa if r.image is not None]
    examples, problems = _prepare(tiny, with_image[:1] + caps[:1])
    assert not problems
    tok = tiny[1].tokenizer
    text = tok.decode([t for t in examples[0].input_ids if t != tiny[0].config.image_token_id])
    assert f"What colour is the image?\n{SHORT_ANSWER_PROMPT} ASSISTANT:" in text
    assert SHORT_ANSWER_PROMPT not in tok.decode(examples[1].input_ids)  # conversations: no format prompt


def test_a_spelled_source_trains_its_answers_a_character_per_token(colour_data, tiny):
    from vlx.data.templates import encode_continuation

    (colour_data / "mix.yaml").write_text(
        "sources:\n  - name: plain\n    path: instruct.json\n  - name: read\n    path: instruct.json\n    spell: true\n")
    rows = load_rows(colour_data / "mix.yaml")
    plain, read = ([r for r in rows if r.source == s and r.image is not None][0] for s in ("plain", "read"))
    assert not plain.spell and read.spell and plain.conversations == read.conversations
    (ex_plain, ex_read), problems = _prepare(tiny, [plain, read])
    assert not problems
    tok = tiny[1].tokenizer
    answer = read.conversations[1]["value"]
    supervised = [t for t, label in zip(ex_read.input_ids, ex_read.labels) if label != -100]
    # The answer (after the space the template puts before it) a character per token, then the end of
    # turn; the decoded text is the same as unspelled.
    assert [tok.decode([t]) for t in supervised[: len(answer) + 1]] == list(" " + answer)
    assert tok.decode(supervised) == tok.decode([t for t, label in zip(ex_plain.input_ids, ex_plain.labels)
                                                 if label != -100])
    assert len(encode_continuation(tok, answer)) < len(answer)  # the plain tokenization does merge it
    (colour_data / "bad.yaml").write_text("sources:\n  - name: a\n    path: instruct.json\n    spell: yes please\n")
    with pytest.raises(DataError, match="source a: spell must be true or false"):
        load_rows(colour_data / "bad.yaml")


def test_every_bad_row_is_reported(tmp_path, tiny):
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    good = [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}]
    records = [
        {"id": "fine", "image": "ok.png", "conversations": good},
        {"id": "missing", "image": "nope.png", "conversations": good},
        {"id": "unreadable", "image": "broken.png", "conversations": good},
        {"id": "two-placeholders", "image": "ok.png", "conversations": [
            {"from": "human", "value": "<image>\n<image>\nQ?"}, {"from": "gpt", "value": "A."}]},
        {"id": "placeholder-no-image", "conversations": good},
        {"id": "empty", "image": "ok.png", "conversations": []},
        {"id": "no-answer", "image": "ok.png", "conversations": good[:1]},
        {"id": "too-long", "image": "ok.png", "conversations": [
            good[0], {"from": "gpt", "value": "word " * 400}]},
        {"id": "not-llava"},
    ]
    (tmp_path / "bad.json").write_text(json.dumps(records))
    problems = []
    rows = load_rows(tmp_path / "bad.json", problems=problems)
    examples, bad = _prepare(tiny, rows)
    problems += bad
    assert [e.origin for e in examples] == [f"{tmp_path / 'bad.json'}:row 1"]
    by_row = {p.origin.rsplit(" ", 1)[-1]: p.message for p in problems}
    assert set(by_row) == {"2", "3", "4", "5", "6", "7", "8", "9"}
    assert "does not exist" in by_row["2"] and "nope.png" in by_row["2"]
    assert "cannot be read as an image" in by_row["3"]
    assert "2 <image> placeholders" in by_row["4"]
    assert "no 'image' key" in by_row["5"]
    assert "empty conversation" in by_row["6"]
    assert "no gpt answer" in by_row["7"]
    assert "exceed max_length=256" in by_row["8"] and "--max-length" in by_row["8"]
    assert "not a LLaVA row" in by_row["9"]


def test_jsonl_bad_line_is_a_problem_not_a_crash(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"conversations": [{"from": "human", "value": "hi"}, '
                                      '{"from": "gpt", "value": "yo"}]}\n{oops\n')
    problems = []
    rows = load_rows(tmp_path / "d.jsonl", problems=problems)
    assert len(rows) == 1
    assert len(problems) == 1 and problems[0].origin.endswith("d.jsonl:line 2")
    assert "not valid JSON" in problems[0].message


def test_bad_mixture_yaml(tmp_path):
    (tmp_path / "m.yaml").write_text("sources:\n  - name: a\n    path: a.json\n    prompt: x\n")
    with pytest.raises(DataError, match="unknown: prompt"):
        load_rows(tmp_path / "m.yaml")


def test_dataset_and_collator(colour_data, tiny):
    model, processor = tiny
    examples, problems = _prepare(tiny, load_rows(colour_data / "instruct.json"))
    assert not problems
    ds = LlavaDataset(examples, processor.image_processor)
    batch = Collator(processor.tokenizer.pad_token_id)([ds[0], ds[16], ds[1]])  # image, text, image
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    out = model(**batch)
    assert torch.isfinite(out.loss)


def test_modality_batches_are_homogeneous():
    lengths = [10 + i for i in range(21)] + [-(5 + i) for i in range(11)]
    order = modality_length_order(lengths, 4, torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(32))
    full = [order[i : i + 4] for i in range(0, 28, 4)]
    for chunk in full:
        signs = {lengths[i] > 0 for i in chunk}
        assert len(signs) == 1, chunk
        assert [abs(lengths[i]) for i in chunk] == sorted((abs(lengths[i]) for i in chunk), reverse=True)
    # Leftovers (21 % 4 image + 11 % 4 text) form the one mixed megabatch at the end.
    assert len(order) - 28 == 4


def test_validate_command_lists_every_bad_row(colour_data, tmp_path):
    from typer.testing import CliRunner

    from vlx.cli import app

    rows = json.loads((colour_data / "instruct.json").read_text())
    rows[1]["image"] = "gone.png"
    rows[2]["conversations"] = []
    (colour_data / "bad_instruct.json").write_text(json.dumps(rows))
    result = CliRunner().invoke(app, ["data", "validate", str(colour_data / "bad_instruct.json")])
    assert result.exit_code == 1
    assert "bad_instruct.json:row 2: image " in result.output and "gone.png does not exist" in result.output
    assert "bad_instruct.json:row 3: empty conversation" in result.output
    ok = CliRunner().invoke(app, ["data", "validate", str(colour_data / "instruct.json")])
    assert ok.exit_code == 0 and f"ok: {len(rows)} rows valid" in ok.output

    poi = str(Path(__file__).resolve().parent.parent / "templates" / "poi.py")
    Image.new("RGB", (8, 8)).save(tmp_path / "shop.png")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"image": "shop.png", "target": {"pois": "many"}}) + "\n")
    result = CliRunner().invoke(app, ["data", "validate", "--schema", poi, str(tmp_path / "rows.jsonl")])
    assert result.exit_code == 1 and "row 1: target.pois" in result.output
