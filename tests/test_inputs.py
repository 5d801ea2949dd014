"""The input boundary (`vlx.inputs`): every bad file becomes one clear `InputError`, good ones pass."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from vlx import inputs
from vlx.inputs import InputError


def _png(size=(8, 8), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128 if mode != "1" else 0).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise(size, 40).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


def test_text_accepts_a_byte_order_mark_and_names_a_bad_byte(tmp_path):
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + b'{"a": 1}\n{"a": 2}\n')
    assert [v for _, v in inputs.read_jsonl(tmp_path / "bom.jsonl")] == [{"a": 1}, {"a": 2}]
    (tmp_path / "latin1.json").write_bytes(b'{"a": "ok"}\n{"b": "caf\xe9"}\n')  # 12 + 10 bytes before the bad one
    with pytest.raises(InputError, match=r"latin1.json: not UTF-8 text: byte 0xe9 at offset 22 \(line 2\)"):
        inputs.read_text(tmp_path / "latin1.json")
    (tmp_path / "bom-latin1.json").write_bytes(b"\xef\xbb\xbf" + b'{"b": "caf\xe9"}')  # the mark counts
    with pytest.raises(InputError, match=r"byte 0xe9 at offset 13 \(line 1\)"):
        inputs.read_text(tmp_path / "bom-latin1.json")
    with pytest.raises(InputError, match="no such file"):
        inputs.read_text(tmp_path / "missing.json")
    with pytest.raises(InputError, match="is a directory"):
        inputs.read_text(tmp_path)


@pytest.mark.parametrize("text, message", [
    ("[" * 5000 + "]" * 5000, "nested more than 64 levels deep"),
    ('{"a": NaN}', "NaN is not a JSON number"),
    ('{"a": -Infinity}', "-Infinity is not a JSON number"),
    ('{"a": 1e999}', "inf is not a JSON number"),
    ('{"a": 1, "a": 2}', "duplicate key 'a'"),
    ('{"a": "' + "x" * (inputs.MAX_STRING + 1) + '"}', "a string of 1,000,001 characters"),
    ('{"a": ', "not valid JSON"),
])
def test_json_limits(text, message):
    with pytest.raises(InputError, match=f"^row 9: .*{message}"):
        inputs.parse_json(text, "row 9")


def test_jsonl_keeps_every_good_line_and_names_every_bad_one(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"a": NaN}\n' + "[" * 3000 + "\n" + '{"a": 4}\n')
    lines = inputs.read_jsonl(path)
    assert [n for n, _ in lines] == [1, 3, 4, 5]
    assert lines[0][1] == {"a": 1} and lines[3][1] == {"a": 4}
    assert isinstance(lines[1][1], InputError) and str(lines[1][1]).startswith(f"{path}:line 3: NaN")
    assert isinstance(lines[2][1], InputError) and "nested more than" in str(lines[2][1])


def test_yaml_errors_name_the_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(InputError, match="bad.yaml: not valid YAML"):
        inputs.read_yaml(tmp_path / "bad.yaml")
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 500 + "]" * 500 + "\n")
    with pytest.raises(InputError, match="deep.yaml: nested"):
        inputs.read_yaml(tmp_path / "deep.yaml")
    (tmp_path / "ok.yaml").write_bytes(b"\xef\xbb\xbfsources: []\n")
    assert inputs.read_yaml(tmp_path / "ok.yaml") == {"sources": []}


def test_images_good_and_bad(tmp_path, monkeypatch):
    (tmp_path / "ok.png").write_bytes(_png())
    (tmp_path / "ok.jpg").write_bytes(_jpeg())
    for name in ("ok.png", "ok.jpg"):
        assert inputs.check_image(tmp_path / name) is None
        assert inputs.open_image(tmp_path / name).mode == "RGB"
    assert inputs.open_image(_png()).size == (8, 8)
    full = _jpeg((256, 256))
    (tmp_path / "cut.jpg").write_bytes(full[: len(full) // 2])
    png = _png((64, 64))
    (tmp_path / "cut.png").write_bytes(png[: len(png) - 30])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    # 20000 x 20000 declared by a small file: refused from its header, before any pixel is decoded.
    (tmp_path / "bomb.png").write_bytes(_png((20000, 20000), mode="1"))
    (tmp_path / "sliver.png").write_bytes(_png((100000, 2), mode="1"))  # 0.2 MP, but a 10 GP square padded
    expected = {"cut.jpg": "cannot be decoded", "cut.png": "cannot be decoded", "empty.png": "empty file",
                "text.png": "cannot be read as an image", "bomb.png": "20000x20000 = 400 megapixels, over the limit",
                "sliver.png": "longest side is over 16000 pixels",
                "missing.png": "does not exist"}
    for name, message in expected.items():
        problem = inputs.check_image(tmp_path / name, origin="data.json:row 2")
        assert problem is not None and message in problem and name in problem, (name, problem)
        with pytest.raises(InputError, match=f"^data.json:row 2: .*{message}"):
            inputs.open_image(tmp_path / name, origin="data.json:row 2")
    assert "--max-image-pixels 400000000" in inputs.check_image(tmp_path / "bomb.png")
    import os

    os.mkfifo(tmp_path / "pipe.png")  # opening it to read would block forever
    assert "not a regular file" in inputs.check_image(tmp_path / "pipe.png")
    monkeypatch.setenv("VLX_MAX_IMAGE_PIXELS", "0")  # what --max-image-pixels 0 sets: no limit
    assert inputs.check_image(tmp_path / "bomb.png") is None


def test_pil_bomb_limit_is_left_as_it_was(tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    (tmp_path / "ok.png").write_bytes(_png())
    inputs.check_image(tmp_path / "ok.png")
    assert Image.MAX_IMAGE_PIXELS == before


def test_json_rows_round_trip_unchanged():
    row = {"image": "a.png", "target": {"pois": [{"name": "Café Ω", "n": 1.5, "x": None}]}}
    assert inputs.parse_json(json.dumps(row)) == row
