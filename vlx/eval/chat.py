"""Chat retention of a fine-tuned run: does it still talk, or has it learnt to answer everything in JSON?

    vlx eval --model RUN --data test.jsonl --chat-data chat.jsonl

`chat.jsonl` (or `.json`) holds LLaVA-format conversations without format prompts, e.g.
`vlx data synth --kind chat` with a seed other than the replay set's. Three measurements:

- **JSON leak**: the first human turn of every conversation is answered freely (greedy, no
  grammar, no format prompt); an answer leaks when it starts with `{` or `[` or parses as JSON
  at all (a bare number or quoted string is the terse extraction mode showing through too).
- **Perplexity** of the reference answers, teacher-forced: exp of the mean negative
  log-likelihood over exactly the tokens the training label mask supervises
  (`vlx.data.templates`: every assistant answer and its end-of-turn token, nothing else), for
  the run and for the base model it was fine-tuned from (`vlx_run.json` names it). The drift is
  `run / base - 1`.
- **Answers side by side**: the base model's and the run's answer to the same question.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import torch

from vlx.data.templates import IGNORE_INDEX, answer_prefix
from vlx.run import max_length as run_max_length

SAMPLES_IN_REPORT = 8
"""Conversations shown side by side in `report.md` (all of them go to `chat_samples.jsonl`)."""


def leaks_json(answer: str) -> bool:
    """True when a chat answer is JSON: it starts with `{`/`[`, or the whole answer parses as a JSON
    value other than a number (a quoted string, `null`, `true`/`false`).

    A bare number is an ordinary short chat answer ("How many shapes are there?" -> "1"), not the
    extraction format leaking into chat, even though `json.loads` accepts it.

    >>> leaks_json('{"pois": []}'), leaks_json("null"), leaks_json("42"), leaks_json("The shop is a bakery.")
    (True, True, False, False)
    """
    text = answer.strip()
    if text.startswith(("{", "[")):
        return True
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, bool) or not isinstance(value, (int, float))


def load_chat_rows(data: str | Path, *, limit: int | None = None):
    """Conversations of `data` (LLaVA JSON/JSONL); every structural problem reported at once."""
    from vlx.data.dataset import report_problems
    from vlx.data.formats import DataError, Problem, load_rows
    from vlx.data.templates import SampleError, to_turns

    problems: list = []
    rows = load_rows(data, problems=problems)
    for r in rows:
        try:
            to_turns(r.conversations)
        except SampleError as e:
            problems.append(Problem(r.origin, str(e)))
    if problems:
        raise DataError(report_problems(problems, what=f"chat data {data}"))
    if not rows:
        raise DataError(f"{data}: no conversations; make some with `vlx data synth --kind chat --seed 2`")
    for r in rows:
        r.format_prompt = None  # chat is measured without any response-format prompt
    return rows[:limit]


def _autocast(model):
    from vlx.device import resolve_precision

    if model.device.type == "cpu" and resolve_precision("auto") == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def answer_nll(model, processor, template: str, rows, *, batch_size: int = 4,
               max_length: int = 2048) -> dict:
    """Summed negative log-likelihood of the supervised answer tokens of `rows`, teacher-forced.

    Rows are encoded by `vlx.data.dataset.prepare`, the training code path, so the tokens scored
    are exactly the ones fine-tuning learns from. Rows longer than `max_length` are skipped and
    counted in `skipped`.
    """
    from vlx.data.dataset import Collator, LlavaDataset, prepare

    examples, problems = prepare(rows, processor.tokenizer, template=template,
                                 image_token_id=model.config.image_token_id,
                                 num_image_tokens=model.config.image_seq_length, max_length=max_length)
    dataset = LlavaDataset(examples, processor.image_processor)
    collate = Collator(processor.tokenizer.pad_token_id)
    dtype = next(model.parameters()).dtype
    nll, tokens, per_row = 0.0, 0, []
    with torch.inference_mode(), _autocast(model):
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            labels = batch.pop("labels").to(model.device)
            batch = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            if "pixel_values" in batch:
                batch["pixel_values"] = batch["pixel_values"].to(dtype)
            logits = model(**batch).logits.float()  # (B, L, vocab)
            # Position t predicts token t + 1; only supervised targets count.
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), target,
                                                     ignore_index=IGNORE_INDEX, reduction="none")  # (B, L-1)
            mask = target != IGNORE_INDEX
            nll += float(loss[mask].sum())
            tokens += int(mask.sum())
            per_row += [float(row[m].sum()) / max(int(m.sum()), 1) for row, m in zip(loss, mask)]
    return {"nll": nll, "tokens": tokens, "perplexity": math.exp(nll / tokens) if tokens else float("nan"),
            "per_row_nll": per_row, "skipped": len(problems)}


def chat_answers(extractor, rows, *, max_new_tokens: int = 64, batch_size: int = 8) -> list[str]:
    """Greedy free-form answers to the first human turn of each row (no format prompt, no grammar)."""
    from vlx.api import load_image
    from vlx.decode import generate

    prompts = [extractor.prompt(r.conversations[0]["value"]) for r in rows]
    images = [load_image(r.image) if r.image is not None else None for r in rows]
    texts = []
    # Text-only and image rows in separate batches: the processor takes images for all rows or none.
    order = sorted(range(len(rows)), key=lambda i: images[i] is None)
    out: dict[int, str] = {}
    with _autocast(extractor.model):
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            groups = [[i for i in idx if images[i] is not None], [i for i in idx if images[i] is None]]
            for group in groups:
                if group:
                    texts = generate(extractor.model, extractor.processor, [prompts[i] for i in group],
                                     [images[i] for i in group], max_new_tokens=max_new_tokens, batch_size=len(group))
                    out.update(zip(group, texts))
    prefix = answer_prefix(extractor.template, extractor.processor)
    return [(out[i][len(prefix):] if prefix and out[i].startswith(prefix) else out[i]).strip() for i in range(len(rows))]


def base_of(run: str | Path) -> Path | None:
    """The base model directory a fine-tune run (or its export) was made from, if it names one."""
    from vlx.run import RunInfo

    info = RunInfo.load(run)
    if info is None or not info.base:
        return None
    base = Path(info.base)
    if not base.is_absolute() and not base.exists():
        base = Path(run) / base
    return base if base.is_dir() else None


def evaluate_chat(run, data: str | Path, *, base: str | Path | None = None, limit: int | None = None,
                  max_new_tokens: int = 64, batch_size: int = 8, progress=None) -> dict:
    """Chat retention of `run` (a run directory or a loaded `vlx.Extractor`) on held-out conversations.

    `base` defaults to the base model named in the run's `vlx_run.json`; without one, only the
    run itself is measured. `progress(message)` is called before each phase.

    >>> chat = evaluate_chat("runs/poi", "data/chat-eval/data.json")  # doctest: +SKIP
    >>> chat["json_leak_rate"], chat["perplexity_drift"]  # doctest: +SKIP
    (0.0, 0.04)
    """
    from vlx.api import load

    say = progress or (lambda message: None)
    rows = load_chat_rows(data, limit=limit)
    extractor = load(run)
    base = Path(base) if base is not None else base_of(extractor.path) if extractor.path else None
    max_length = run_max_length(base)

    say("chat: answering held-out questions")
    answers = chat_answers(extractor, rows, max_new_tokens=max_new_tokens, batch_size=batch_size)
    say("chat: perplexity of reference answers")
    tuned = answer_nll(extractor.model, extractor.processor, extractor.template, rows, max_length=max_length)
    report: dict = {"n": len(rows), "json_leak_rate": sum(map(leaks_json, answers)) / len(rows),
                    "perplexity": tuned["perplexity"], "answer_tokens": tuned["tokens"], "skipped": tuned["skipped"]}
    base_answers: list[str | None] = [None] * len(rows)
    if base is not None:
        say(f"chat: the base model {base}")
        base_ex = load(base)
        base_answers = chat_answers(base_ex, rows, max_new_tokens=max_new_tokens, batch_size=batch_size)
        ref = answer_nll(base_ex.model, base_ex.processor, base_ex.template, rows, max_length=max_length)
        del base_ex
        report.update(base=str(base), base_perplexity=ref["perplexity"],
                      base_json_leak_rate=sum(map(leaks_json, base_answers)) / len(rows),
                      perplexity_drift=tuned["perplexity"] / ref["perplexity"] - 1)
    report["samples"] = [
        {"image": str(r.image) if r.image is not None else None, "question": r.conversations[0]["value"]
         .removeprefix("<image>\n"), "reference": r.conversations[1]["value"], "base": b, "answer": a,
         "leaks_json": leaks_json(a)}
        for r, a, b in zip(rows, answers, base_answers)]
    return report


def format_chat(report: dict, *, samples: int = SAMPLES_IN_REPORT) -> str:
    """Markdown: leak rate and perplexity beside the base model's, then answers side by side."""
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    lines = [f"## Chat retention ({report['n']} held-out conversations)", "",
             "| metric | fine-tuned | base |", "| --- | --- | --- |",
             f"| JSON-leak rate | {pct(report['json_leak_rate'])} | {pct(report.get('base_json_leak_rate'))} |",
             f"| answer perplexity | {report['perplexity']:.3f} | "
             f"{report['base_perplexity']:.3f} |" if "base_perplexity" in report else
             f"| answer perplexity | {report['perplexity']:.3f} | n/a |"]
    if "perplexity_drift" in report:
        lines += ["", f"Perplexity drift vs the base model: {100 * report['perplexity_drift']:+.1f}% "
                      f"(over {report['answer_tokens']} answer tokens)."]
    lines += ["", "| question | reference | base | fine-tuned |", "| --- | --- | --- | --- |"]
    cell = lambda s: "n/a" if s is None else s.replace("|", "\\|").replace("\n", " ")[:160]  # noqa: E731
    for s in report["samples"][:samples]:
        lines.append(f"| {cell(s['question'])} | {cell(s['reference'])} | {cell(s['base'])} | {cell(s['answer'])} |")
    return "\n".join(lines) + "\n"


def write_chat(report: dict, out_dir: str | Path) -> None:
    """Add the chat report to an extraction eval directory: `metrics.json["chat"]`, `report.md`,
    `chat_samples.jsonl`. Each file is replaced whole (written aside, then renamed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    metrics["chat"] = {k: v for k, v in report.items() if k != "samples"}
    md = out_dir / "report.md"
    text = (md.read_text() + "\n" if md.exists() else "") + format_chat(report)
    samples = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in report["samples"])
    for path, content in ((metrics_path, json.dumps(metrics, indent=2, default=str) + "\n"), (md, text),
                          (out_dir / "chat_samples.jsonl", samples)):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, path)


__all__ = ["leaks_json", "load_chat_rows", "answer_nll", "chat_answers", "base_of", "evaluate_chat", "format_chat",
           "write_chat"]
