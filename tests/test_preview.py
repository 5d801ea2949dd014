"""`vlx data preview`: the rendered training samples, supervised spans, token counts and preview.html."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from vlx.cli import app
from vlx.data.dataset import prepare
from vlx.data.formats import load_rows
from vlx.data.preview import counts, pieces

POI = Path(__file__).resolve().parent.parent / "templates" / "poi.py"


def test_pieces_mark_exactly_the_supervised_tokens(tiny, colour_data):
    model, processor = tiny
    rows = load_rows(colour_data / "instruct.json")
    [ex], _ = prepare(rows[:1], processor.tokenizer, template="vicuna_v1", image_token_id=model.config.image_token_id,
                      num_image_tokens=model.config.image_seq_length, max_length=1024)
    parts = pieces(ex, processor.tokenizer, model.config.image_token_id)
    assert "".join(p.text for p in parts if p.supervised).strip() == "red</s>"
    assert [p.text for p in parts if p.image] == [f"<image x {model.config.image_seq_length}>"]
    c = counts(ex, model.config.image_token_id)
    assert c["image"] == model.config.image_seq_length and c["text"] + c["image"] == c["total"] == len(ex.input_ids)
    assert c["supervised"] == sum(1 for x in ex.labels if x != -100)


def test_preview_command_llava_rows_and_extraction_rows(colour_data, tmp_path):
    html = tmp_path / "p.html"
    result = CliRunner().invoke(app, ["data", "preview", str(colour_data / "instruct.json"), "--preset", "tiny",
                                      "--n", "2", "--html", str(html)], terminal_width=200)
    assert result.exit_code == 0, result.output
    headers = [line for line in result.output.splitlines() if line.startswith("── ") and "instruct.json:row" in line]
    assert len(headers) == 2 and "instruct.json:row 1 [instruct]: text " in headers[0]
    assert "20 rows (instruct 20), template vicuna_v1" in result.output and "longest:" in result.output
    page = html.read_text()
    assert page.count("<tr>") == 20 and "data:image/png;base64" in page and 'class="sup"' in page

    target = {"pois": [{"name": "Nord", "category": "cafe", "address": {"house_number": "1", "street": None},
                        "phone": None, "website": None, "opening_hours": [], "open_24h": False}]}
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"image": str(colour_data / "img0.png"), "target": target}) + "\n"
                    + json.dumps({"image": "gone.png", "target": target}) + "\n")
    result = CliRunner().invoke(app, ["data", "preview", str(rows), "--preset", "tiny", "--schema", str(POI),
                                      "--html", str(html)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert '"name":"Nord"' in result.output and "1 rows (extraction 1)" in result.output
    assert "1 invalid row(s) not shown" in result.output
    bad = CliRunner().invoke(app, ["data", "preview", str(rows)])
    assert bad.exit_code == 2 and "exactly one of --base RUN or --preset" in bad.stderr
