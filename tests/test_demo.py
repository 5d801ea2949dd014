"""`vlx demo --quick --ablation`: the whole pipeline on the tiny preset, checked by what it writes."""

from __future__ import annotations

import html
import json
import re

import pytest
import torch
from typer.testing import CliRunner

from vlx.cli import app


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny-model steps gain nothing from intra-op threads on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_quick_demo_with_ablation(tmp_path, monkeypatch):
    monkeypatch.setenv("VLX_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--ablation", "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)

    # Every stage left its run directory behind.
    for path in ("base/vlx_run.json", "base/stage1/vlx_run.json", "base/loss.png", "finetune/adapter",
                 "finetune/loss.png", "ablation/adapter", "eval/finetune/predictions.jsonl",
                 "eval/ablation/chat_samples.jsonl", "data/poi/test.jsonl", "data/chat-eval/data.json"):
        assert (out / path).exists(), path
    # The ablation is the same fine-tune without format prompt and chat replay.
    assert (out / "finetune" / "format_prompt.txt").read_text().strip()
    assert (out / "ablation" / "format_prompt.txt").read_text() == ""
    assert json.loads((out / "finetune" / "vlx_run.json").read_text())["extra"]["chat_ratio"] > 0
    assert json.loads((out / "ablation" / "vlx_run.json").read_text())["extra"]["chat_ratio"] == 0
    # The held-out chat set is not the replay set.
    replay = json.loads((out / "data" / "chat" / "data.json").read_text())
    held_out = json.loads((out / "data" / "chat-eval" / "data.json").read_text())
    assert [r["conversations"] for r in held_out] != [r["conversations"] for r in replay[:len(held_out)]]

    metrics = json.loads((out / "metrics.json").read_text())
    n_test = len((out / "data" / "poi" / "test.jsonl").read_text().splitlines())
    for name in ("finetune", "ablation"):
        m = metrics[name]
        assert m["n"] == n_test > 0
        assert 0.0 <= m["schema_valid_rate"] <= 1.0
        for field in ("pois[].category", "pois[].name", "pois[].address.house_number"):
            assert 0.0 <= m["fields"][field]["accuracy"] <= 1.0
            assert 0.0 < m["fields"][field]["baseline"]["accuracy"] <= 1.0
        chat = m["chat"]
        assert chat["n"] == len(held_out) and chat["answer_tokens"] > 0
        assert chat["base"] == str(out / "base")
        assert chat["perplexity_drift"] == chat["perplexity"] / chat["base_perplexity"] - 1
        assert m["headline"]["category_baseline"] == m["fields"]["pois[].category"]["baseline"]["accuracy"]
        for path, f in m["headline"]["fields"].items():  # every field with its 95% interval and baseline
            lo, hi = f["ci95"]
            assert lo <= f["accuracy"] <= hi and f["n"] == m["fields"][path]["n"]
            assert f["above_baseline"] == (f["accuracy"] > f["baseline"])
        assert m["headline"]["fields_above_baseline"] == sum(f["above_baseline"] for f in m["headline"]["fields"].values())
        assert set(m["headline"]["empty_facades"]) == {"n", "answered_none", "ci95"}
    assert metrics["preset"] == "tiny" and metrics["wall_seconds"] > 0

    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= n_test + 3  # test images + three loss curves
    assert "majority baseline" in report and "ablation (after)" in report and "base model (before)" in report
    first = json.loads((out / "eval" / "finetune" / "predictions.jsonl").read_text().splitlines()[0])
    gold = json.dumps(first["target"], indent=1, ensure_ascii=False)
    assert html.escape(gold) in report  # ground truth printed beside the extraction

    # One summary line at the end, with the numbers of metrics.json.
    summary = result.output.strip().splitlines()[-2]
    assert summary == metrics["summary"]
    assert re.search(r"finetune: schema-valid [\d.]+%, category [\d.]+ \(baseline [\d.]+\)", summary)
    assert "ablation:" in summary


def test_wilson_interval():
    from vlx.demo import wilson

    assert wilson(0, 10)[0] == 0.0 and 0.25 < wilson(0, 10)[1] < 0.35  # not [0, 0] at zero successes
    lo, hi = wilson(50, 100)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.19, abs=0.01)
    assert wilson(0, 0) == (0.0, 1.0)


def test_by_storefronts_scores_each_scene_type_over_its_gold_storefronts(tmp_path):
    from vlx.demo import by_storefronts

    def poi(name, category="cafe", number="1"):
        return {"name": name, "category": category, "address": {"house_number": number, "street": None}}

    rows = [
        {"target": {"pois": []}, "prediction": json.dumps({"pois": []})},
        {"target": {"pois": [poi("A")]}, "prediction": json.dumps({"pois": [poi("A"), poi("B")]})},
        {"target": {"pois": [poi("A")]}, "prediction": None},  # not schema-valid: every field wrong
        {"target": {"pois": [poi("A", "bar"), poi("B", "bank", "2")]},
         "prediction": json.dumps({"pois": [poi("A", "bank"), poi("C", "bank", "2")]})},
    ]
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = by_storefronts(tmp_path)
    assert got["0"] == {"scenes": 1, "count_accuracy": 1.0, "name": None, "category": None, "house_number": None}
    assert got["1"] == {"scenes": 2, "count_accuracy": 0.0, "name": 0.5, "category": 0.5, "house_number": 0.5}
    assert got["2"] == {"scenes": 1, "count_accuracy": 1.0, "name": 0.5, "category": 0.5, "house_number": 1.0}
