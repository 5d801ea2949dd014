"""Chat retention: JSON-leak detection, teacher-forced answer perplexity on the training label mask,
and `vlx eval --chat-data` on the tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vlx.eval.chat import answer_nll, evaluate_chat, leaks_json, load_chat_rows
from vlx.run import RunInfo

SCHEMA = '''from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Shop(BaseModel):
    """The shop in the picture."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=8)
    kind: Literal["cafe", "bank"]
'''


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("answer, leaks", [
    ('{"pois": []}', True), ("  [1, 2]", True), ('{"pois": [', True), ('"cafe"', True), ("null", True),
    ("true", True), ("42", False), ("2.5", False),  # a count or a price is a chat answer, not a leak ("The capital of France is Paris.", False), ("Hello! How can I help you today?", False),
    ("", False), ("It is a cafe {with} braces later.", False),
])
def test_leaks_json(answer, leaks):
    assert leaks_json(answer) is leaks


@pytest.fixture
def chat_file(tmp_path):
    Image.new("RGB", (20, 20), (200, 30, 30)).save(tmp_path / "red.png")
    rows = [
        {"id": "a", "conversations": [{"from": "human", "value": "Hello!"},
                                      {"from": "gpt", "value": "Hello! How can I help you today?"},
                                      {"from": "human", "value": "What is 2 plus 3?"},
                                      {"from": "gpt", "value": "2 plus 3 is 5."}]},
        {"id": "b", "image": "red.png", "conversations": [{"from": "human", "value": "<image>\nWhat colour is it?"},
                                                          {"from": "gpt", "value": "It is red."}]},
        {"id": "c", "conversations": [{"from": "human", "value": "Goodbye!"},
                                      {"from": "gpt", "value": "Goodbye! Have a nice day."}]},
    ]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(rows))
    return path


def test_perplexity_is_the_training_loss(tiny, chat_file):
    """Summed NLL over the supervised tokens = the model's own training loss (mean over the same labels)."""
    from vlx.data.dataset import Collator, LlavaDataset, prepare

    model, processor = tiny
    rows = load_chat_rows(chat_file)
    result = answer_nll(model, processor, "vicuna_v1", rows, batch_size=2, max_length=1024)
    examples, problems = prepare(rows, processor.tokenizer, template="vicuna_v1",
                                 image_token_id=model.config.image_token_id,
                                 num_image_tokens=model.config.image_seq_length, max_length=1024)
    assert not problems and result["skipped"] == 0
    supervised = sum(sum(label != -100 for label in e.labels[1:]) for e in examples)
    assert result["tokens"] == supervised > 0
    # Every answer and its end-of-turn token is scored: 4 answers over 3 rows, each with </s>.
    eos = processor.tokenizer.convert_tokens_to_ids("</s>")
    assert sum(e.labels.count(eos) for e in examples) == 4
    ds = LlavaDataset(examples, processor.image_processor)
    batch = Collator(processor.tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        loss = model(**batch).loss  # HF shifts labels and averages over non-ignored targets
    assert result["perplexity"] == pytest.approx(math.exp(loss.item()), rel=1e-4)


def test_too_long_rows_are_skipped_and_counted(tiny, chat_file):
    model, processor = tiny
    rows = load_chat_rows(chat_file)
    result = answer_nll(model, processor, "vicuna_v1", rows, max_length=40)
    assert result["skipped"] >= 1 and result["tokens"] < answer_nll(model, processor, "vicuna_v1", rows)["tokens"]


@pytest.fixture
def run_and_base(tiny, tmp_path, monkeypatch):
    """An export-style run whose weights equal its base's: drift must be exactly zero."""
    monkeypatch.setenv("VLX_CACHE_DIR", str(tmp_path / "cache"))
    model, processor = tiny
    base, run = tmp_path / "base", tmp_path / "run"
    for d in (base, run):
        model.save_pretrained(d)
        processor.save_pretrained(d)
    RunInfo(kind="base", template="vicuna_v1").save(base)
    (run / "schema.py").write_text(SCHEMA)
    (run / "format_prompt.txt").write_text("Answer in JSON.\n")
    RunInfo(kind="export", template="vicuna_v1", base=str(base), schema_class="Shop").save(run)
    Image.new("RGB", (16, 12), (60, 120, 200)).save(tmp_path / "shop.png")
    (tmp_path / "test.jsonl").write_text(json.dumps({"image": "shop.png", "target": {"name": "Luna", "kind": "cafe"}})
                                         + "\n")
    return run, base


def test_evaluate_chat_against_identical_base(run_and_base, chat_file):
    run, base = run_and_base
    report = evaluate_chat(run, chat_file, max_new_tokens=6)
    assert report["n"] == 3 and report["base"] == str(base)
    assert report["perplexity_drift"] == pytest.approx(0.0, abs=1e-6)
    assert report["json_leak_rate"] == report["base_json_leak_rate"]
    # Same weights, greedy decoding: the answers side by side are identical.
    assert [s["answer"] for s in report["samples"]] == [s["base"] for s in report["samples"]]
    assert [s["question"] for s in report["samples"]] == ["Hello!", "What colour is it?", "Goodbye!"]
    assert report["samples"][1]["image"].endswith("red.png")


def test_cli_eval_with_chat_data(run_and_base, chat_file, tmp_path):
    from vlx.cli import app

    run, _ = run_and_base
    result = CliRunner().invoke(app, ["eval", "--model", str(run), "--data", str(tmp_path / "test.jsonl"),
                                      "--chat-data", str(chat_file), "--out", str(tmp_path / "out"),
                                      "--max-new-tokens", "12"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n"] == 1 and "fields" in metrics  # the extraction metrics are still there
    assert metrics["chat"]["n"] == 3 and metrics["chat"]["perplexity_drift"] == pytest.approx(0.0, abs=1e-6)
    assert "samples" not in metrics["chat"]
    samples = [json.loads(line) for line in (tmp_path / "out" / "chat_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and {"question", "reference", "base", "answer", "leaks_json"} <= set(samples[0])
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Majority baseline" in report and "## Chat retention (3 held-out conversations)" in report
    assert "JSON-leak rate" in result.output


def test_bad_chat_data_is_a_clear_error(run_and_base, tmp_path):
    from vlx.cli import app

    run, _ = run_and_base
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "x", "conversations": [{"from": "gpt", "value": "hi"}]}]))
    result = CliRunner().invoke(app, ["eval", "--model", str(run), "--data", str(tmp_path / "test.jsonl"),
                                      "--chat-data", str(bad), "--max-new-tokens", "12"])
    assert result.exit_code == 2
    assert "bad.json" in result.output
