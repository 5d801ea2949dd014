"""Extraction evaluation of a run: constrained decoding on the tiny model, then field metrics."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from vlx.eval.extraction import ExtractionEvalError, evaluate_run, load_run_schema
from vlx.eval.fields import field_metrics
from vlx.run import RunInfo

SCHEMA = '''"""A storefront."""
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Shop(BaseModel):
    """The shop in the picture."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=8)
    kind: Literal["cafe", "bank"]
    open: bool
'''
TARGETS = [("Luna", "cafe", True), ("City", "bank", False), ("Ost", "cafe", True)]




@pytest.fixture
def schema_run(tiny, tmp_path, monkeypatch):
    """An export-style run of the tiny model with a schema, and three held-out extraction rows."""
    monkeypatch.setenv("VLX_CACHE_DIR", str(tmp_path / "cache"))
    model, processor = tiny
    run = tmp_path / "run"
    model.save_pretrained(run)
    processor.save_pretrained(run)
    (run / "schema.py").write_text(SCHEMA)
    (run / "format_prompt.txt").write_text("Read the shop sign. Answer in JSON.\n")
    RunInfo(kind="export", template="vicuna_v1", schema_class="Shop").save(run)
    rows = []
    for i, (name, kind, is_open) in enumerate(TARGETS):
        Image.new("RGB", (16, 12), (60 * i, 120, 200)).save(tmp_path / f"shop{i}.png")
        rows.append({"image": f"shop{i}.png", "target": {"name": name, "kind": kind, "open": is_open}})
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run, data


def test_evaluate_run_on_tiny(schema_run, tmp_path):
    run, data = schema_run
    report = evaluate_run(run, data, out_dir=tmp_path / "out", batch_size=2)
    # Constrained decoding: every answer of even a random-weight model is a valid Shop.
    assert report["n"] == 3 and report["schema_valid_rate"] == 1.0
    assert set(report["fields"]) == {"name", "kind", "open"}
    assert report["fields"]["kind"]["baseline"] == {"accuracy": pytest.approx(2 / 3), "value": "cafe"}
    assert report["images_per_second"] > 0
    written = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [w["target"]["name"] for w in written] == [t[0] for t in TARGETS]
    assert all(w["error"] is None for w in written)
    # The metrics written are the metrics of the predictions written.
    again = field_metrics([w["prediction"] for w in written], [w["target"] for w in written], load_run_schema(run))
    assert again["fields"] == report["fields"]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["fields"] == report["fields"]


def test_evaluate_run_reports_invalid_rows(schema_run, tmp_path):
    run, data = schema_run
    data.write_text(json.dumps({"image": "shop0.png", "target": {"name": "Luna", "kind": "bar", "open": True}}) + "\n")
    with pytest.raises(ExtractionEvalError, match="kind"):
        evaluate_run(run, data)


def test_cli_eval_extraction(schema_run, tmp_path):
    from vlx.cli import app

    run, data = schema_run
    result = CliRunner().invoke(app, ["eval", "--model", str(run), "--data", str(data), "--batch-size", "3",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["schema_valid_rate"] == 1.0
    assert "| kind | accuracy |" in result.output and "Majority baseline" in result.output
