"""Fuzzed bad input against the CLI: never a traceback, every bad row named, every good row kept.

Row files are drawn by hypothesis as mixtures of good rows and rows broken in one of many ways
(syntax, NaN, duplicate keys, nesting, over-long strings, wrong structure, schema violations,
missing, empty, truncated, non-image and decompression-bomb images), with or without a byte-order
mark; then `vlx data validate`, `vlx train-base` and `vlx finetune` (up to step 0) and `vlx
extract` run on them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from vlx import inputs
from vlx.cli import app

runner = CliRunner()
POI = Path(__file__).resolve().parent.parent / "templates" / "poi.py"
FUZZ = settings(max_examples=16, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

BAD_IMAGES = ("missing.png", "empty.png", "text.png", "cut.png", "cut.jpg", "bomb.png", "sliver.png", "folder.png")
TARGET = {"pois": [{"name": "Cafe Nord", "category": "cafe", "address": {"house_number": "12", "street": None},
                    "phone": None, "website": None, "opening_hours": [], "open_24h": False}]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Good and bad images, and a tiny base run to fine-tune and extract with."""
    d = tmp_path_factory.mktemp("fuzz")
    for i in range(3):
        Image.new("RGB", (40, 40), (60 * i, 120, 200)).save(d / f"good{i}.png")
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("not an image at all")
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 30).convert("RGB").save(buf, "PNG")
    (d / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    Image.effect_noise((128, 128), 30).convert("RGB").save(buf, "JPEG")
    (d / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    Image.new("1", (20000, 20000)).save(d / "bomb.png")  # 400 megapixels declared by a small file
    Image.new("1", (100000, 2)).save(d / "sliver.png")  # few pixels, but a 10-gigapixel square once padded
    (d / "folder.png").mkdir()
    captions = [{"image": f"good{i}.png", "conversations": [{"from": "human", "value": "<image>\nDescribe it."},
                                                            {"from": "gpt", "value": "a square"}]} for i in range(3)]
    (d / "captions.json").write_text(json.dumps(captions))
    result = runner.invoke(app, ["train-base", "--preset", "tiny", "--stage1-data", str(d / "captions.json"),
                                 "--stage2-data", str(d / "captions.json"), "--out", str(d / "base"), "--max-steps", "1"])
    assert result.exit_code == 0, result.output
    return d


def llava_line(kind: str, i: int) -> str:
    good = {"id": f"r{i}", "image": f"good{i % 3}.png",
            "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "a square"}]}
    return _line(kind, good, lambda row, image: row.update(image=image),
                 {"no_conversations": lambda r: r.pop("conversations"),
                  "two_placeholders": lambda r: r["conversations"][0].update(value="<image> <image> hi"),
                  "wrong_type": lambda r: r.update(conversations="hello"),
                  "turn_not_object": lambda r: r.update(conversations=[1, 2]),
                  "value_not_text": lambda r: r["conversations"][1].update(value=5),
                  "image_not_text": lambda r: r.update(image=["good0.png"]),
                  "image_nul": lambda r: r.update(image="a\u0000.png"),
                  "image_empty_path": lambda r: r.update(image="")})


def poi_line(kind: str, i: int) -> str:
    good = {"image": f"good{i % 3}.png", "target": json.loads(json.dumps(TARGET))}
    return _line(kind, good, lambda row, image: row.update(image=image),
                 {"bad_enum": lambda r: r["target"]["pois"][0].update(category="casino"),
                  "extra_key": lambda r: r["target"]["pois"][0].update(rating=5),
                  "no_target": lambda r: r.pop("target"),
                  "target_not_object": lambda r: r.update(target=[1]),
                  "prompt_not_text": lambda r: r.update(prompt=5),
                  "nul_in_target": lambda r: r["target"]["pois"][0].update(name="a\u0000b"),
                  "image_nul": lambda r: r.update(image="a\u0000.png"),
                  "image_empty_path": lambda r: r.update(image="")})


def _line(kind: str, good: dict, set_image, structural: dict) -> str:
    if kind == "good":
        return json.dumps(good)
    if kind in BAD_IMAGES:
        set_image(good, kind)
        return json.dumps(good)
    if kind in structural:
        structural[kind](good)
        return json.dumps(good)
    text = json.dumps(good)
    return {"syntax": text[:-3], "nan": text[:-1] + ', "x": NaN}', "dup": text[:-1] + ', "image": "good0.png"}',
            "deep": "[" * 3000 + "]" * 3000, "scalar": "42",
            "long": text[:-1] + ', "id2": "' + "x" * (inputs.MAX_STRING + 1) + '"}'}[kind]


COMMON = ["good", "syntax", "nan", "dup", "deep", "scalar", "long", *BAD_IMAGES]
llava_rows = st.lists(st.sampled_from(COMMON + ["no_conversations", "two_placeholders", "wrong_type", "turn_not_object",
                                                "value_not_text", "image_not_text", "image_nul", "image_empty_path"]),
                      min_size=1, max_size=7)
poi_rows = st.lists(st.sampled_from(COMMON + ["bad_enum", "extra_key", "no_target", "target_not_object",
                                              "prompt_not_text", "nul_in_target", "image_nul", "image_empty_path"]),
                    min_size=1, max_size=7)


def _fresh(tmp_path: Path) -> Path:
    """An output directory no earlier example of the same test used (hypothesis reuses `tmp_path`)."""
    import uuid

    return tmp_path / uuid.uuid4().hex


def _write(path: Path, lines: list[str], bom: bool) -> None:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + ("\n".join(lines) + "\n").encode())


def _clean(result) -> None:
    """No traceback: the CLI ended through its own exit, never an escaped exception."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output


def _named(output: str, path: Path, bad: list[int]) -> None:
    for n in bad:
        assert f"{path.name}:line {n}:" in output or f"{path.name} row {n}:" in output or f"row {n}:" in output, \
            (n, output[-3000:])


@FUZZ
@given(kinds=llava_rows, bom=st.booleans())
def test_validate_and_train_base_name_every_bad_llava_row(world, tiny, tmp_path, kinds, bom):
    path = tmp_path / "rows.jsonl"
    _write(path, [llava_line(k, i) for i, k in enumerate(kinds)], bom)
    bad = [i + 1 for i, k in enumerate(kinds) if k != "good"]
    result = runner.invoke(app, ["data", "validate", str(path), "--image-folder", str(world)])
    _clean(result)
    assert result.exit_code == (1 if bad else 0), result.output
    _named(result.output, path, bad)
    if bad:
        assert f"{len(bad)} invalid row(s)" in result.output
    else:
        assert f"ok: {len(kinds)} rows valid" in result.output
    from vlx.data.dataset import prepare
    from vlx.data.formats import load_rows

    problems: list = []
    rows = load_rows(path, image_folder=world, problems=problems)
    tiny_tok = tiny[1].tokenizer
    examples, more = prepare(rows, tiny_tok, template="vicuna_v1", image_token_id=tiny_tok.convert_tokens_to_ids("<image>"),
                             num_image_tokens=4, max_length=512)
    assert sorted(int(e.origin.rsplit(" ", 1)[-1]) for e in examples) == [i + 1 for i, k in enumerate(kinds)
                                                                         if k == "good"]
    out = _fresh(tmp_path)
    result = runner.invoke(app, ["train-base", "--preset", "tiny", "--stage1-data", str(path), "--stage", "1",
                                 "--image-folder", str(world), "--out", str(out), "--max-steps", "1"])
    _clean(result)
    if bad:
        assert result.exit_code == 2, result.output
        _named(result.output, path, bad[:30])
        assert not list(out.rglob("checkpoint-*")) and not (out / "model.safetensors").exists()


@FUZZ
@given(kinds=poi_rows, bom=st.booleans())
def test_validate_and_finetune_name_every_bad_extraction_row(world, tmp_path, kinds, bom):
    path = tmp_path / "rows.jsonl"
    _write(path, [poi_line(k, i) for i, k in enumerate(kinds)], bom)
    bad = [i + 1 for i, k in enumerate(kinds) if k != "good"]
    result = runner.invoke(app, ["data", "validate", str(path), "--schema", str(POI), "--image-folder", str(world)])
    _clean(result)
    assert result.exit_code == (1 if bad else 0), result.output
    _named(result.output, path, bad)
    from vlx.schema import load_schema, validate_rows

    report = validate_rows(path, load_schema(POI), image_folder=world)
    assert [r.row for r in report.rows] == [i + 1 for i, k in enumerate(kinds) if k == "good"]
    assert sorted({e.row for e in report.errors}) == bad
    if not bad:
        return
    out = _fresh(tmp_path)
    result = runner.invoke(app, ["finetune", "--schema", str(POI), "--base", str(world / "base"), "--data", str(path),
                                 "--image-folder", str(world), "--out", str(out), "--max-steps", "1",
                                 "--chat-ratio", "0"])
    _clean(result)
    assert result.exit_code == 2, result.output
    assert f"{len(bad)} invalid row(s) of {len(kinds)}" in result.output
    _named(result.output, path, bad)
    assert not (out / "metrics.jsonl").exists() and not (out / "adapter").exists()


def test_a_non_utf8_byte_is_named_with_its_line(world, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(poi_line("good", 0).encode() + b"\n" + poi_line("good", 1).encode().replace(b"Nord", b"N\xf6rd")
                     + b"\n")
    for args in (["data", "validate", str(path), "--schema", str(POI), "--image-folder", str(world)],
                 ["data", "validate", str(path)]):
        result = runner.invoke(app, args)
        _clean(result)
        assert result.exit_code in (1, 2) and "not UTF-8" in result.output and "(line 2)" in result.output


@FUZZ
@given(kinds=st.lists(st.sampled_from(["good0.png", "good1.png", *(k for k in BAD_IMAGES if k != "folder.png")]),
                      min_size=1, max_size=6))  # a folder argument means its image files
def test_extract_prints_every_good_result_and_exits_1_on_a_bad_image(world, kinds):
    paths = [str(world / k) for k in kinds]
    result = runner.invoke(app, ["extract", "--model", str(world / "base"), "--schema", str(POI), *paths])
    _clean(result)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["image"] for line in lines] == paths  # one line per image, in order, good ones included
    for kind, line in zip(kinds, lines):
        if kind.startswith("good"):
            assert "pois" in line["result"], line
        else:
            assert kind in line["error"] and "result" not in line, line
    assert result.exit_code == (1 if any(not k.startswith("good") for k in kinds) else 0), result.output


def test_damaged_model_directories_are_named(world, tmp_path):
    (tmp_path / "bad-json").mkdir()
    (tmp_path / "bad-json" / "config.json").write_text("{oops")
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "config.json").write_text((world / "base" / "config.json").read_text())
    (tmp_path / "cut-weights").mkdir()
    (tmp_path / "cut-weights" / "config.json").write_text((world / "base" / "config.json").read_text())
    (tmp_path / "cut-weights" / "model.safetensors").write_bytes((world / "base" / "model.safetensors").read_bytes()[:999])
    expected = {"bad-json": "config.json is not a model config", "no-weights": "cannot load the checkpoint",
                "cut-weights": "cannot load the checkpoint", "nowhere": "is not a directory"}
    for name, message in expected.items():
        result = runner.invoke(app, ["extract", "--model", str(tmp_path / name), str(world / "good0.png")])
        _clean(result)
        assert result.exit_code == 2 and message in result.stderr and name in result.stderr, result.output
