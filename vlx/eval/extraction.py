"""Schema-extraction evaluation of a fine-tuned run: field metrics on held-out rows.

    vlx eval --model RUN --data test.jsonl

`test.jsonl` holds extraction rows (`{"image", "target", "prompt"}`, see `vlx.schema.rows`) for
the schema the run was fine-tuned with (`RUN/schema.py`). `evaluate_predictions` scores
predictions against those rows with `vlx.eval.fields` and writes `metrics.json` and `report.md`;
`evaluate_run` first produces the predictions with `vlx.load(RUN)`, the extraction users get.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from pydantic import BaseModel

from vlx.eval.fields import differing_fields, field_metrics, format_table
from vlx.run import RunInfo, atomic_dir

log = logging.getLogger(__name__)


class ExtractionEvalError(ValueError):
    """A run or data file that extraction evaluation cannot use; the message says what to give."""


def load_run_schema(run: str | Path) -> type[BaseModel]:
    """The schema class a fine-tune run was trained with (`RUN/schema.py`, `vlx_run.json`)."""
    from vlx.schema import load_schema

    run = Path(run)
    info = RunInfo.load(run)
    if info is None or info.schema_class is None or not (run / "schema.py").exists():
        raise ExtractionEvalError(
            f"{run} has no schema: extraction evaluation needs a run made by `vlx finetune --schema FILE` "
            "(or its `vlx export`); to score a base model on the paper's benchmarks use "
            "`vlx eval --model RUN --benchmark NAME --data DIR`"
        )
    return load_schema(run / "schema.py", class_name=info.schema_class)


def load_gold(data: str | Path, Schema: type[BaseModel], *, limit: int | None = None):
    """Validated extraction rows of `data`; every invalid row is reported at once."""
    from vlx.schema import validate_rows

    report = validate_rows(data, Schema)
    if not report.ok:
        raise ExtractionEvalError(report.format())
    if not report.rows:
        raise ExtractionEvalError(f"{data}: no rows to evaluate")
    return report.rows[:limit]


def evaluate_predictions(predictions: list, rows: list, Schema: type[BaseModel], *,
                         out_dir: str | Path | None = None, seconds: float | None = None,
                         errors: list[str | None] | None = None) -> dict:
    """Field metrics of `predictions` (instances, dicts, JSON text or None) against `rows`' targets.

    With `out_dir`, writes `metrics.json`, `report.md` (each field beside its majority-class
    baseline) and `predictions.jsonl` (with `errors[i]`, why row i has no valid prediction, and
    the fields that differ from the target).
    """
    errors = errors or [None] * len(rows)
    report = field_metrics(predictions, [r.target for r in rows], Schema)
    if seconds:
        report["images_per_second"] = len(rows) / seconds
    if out_dir is not None:
        with atomic_dir(out_dir) as tmp:
            (tmp / "metrics.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
            speed = f", {report['images_per_second']:.2f} images/s" if seconds else ""
            (tmp / "report.md").write_text(f"# {Schema.__name__} extraction{speed}\n\n" + format_table(report))
            with (tmp / "predictions.jsonl").open("w") as f:
                for row, pred, error in zip(rows, predictions, errors):
                    text = pred.model_dump_json() if isinstance(pred, BaseModel) else pred
                    target = row.target.model_dump(mode="json")
                    value = pred.model_dump(mode="json") if isinstance(pred, BaseModel) else None
                    f.write(json.dumps({"row": row.row, "image": str(row.image), "prediction": text, "error": error,
                                        "target": target, "differs": differing_fields(value, target)},
                                       ensure_ascii=False) + "\n")
    return report


def evaluate_run(model: str | Path, data: str | Path, *, chat_data: str | Path | None = None,
                 out_dir: str | Path | None = None, limit: int | None = None, batch_size: int = 8,
                 max_new_tokens: int | None = None) -> dict:
    """Extract from every row of `data` the way `vlx.load(RUN).extract_many` does, and score the fields.

    With `chat_data` (held-out conversations), chat retention is measured too (`vlx.eval.chat`)
    and lands in `report["chat"]`.

    The rows are validated against the run's schema before the model is loaded. A row the
    decoder cannot turn into a valid instance counts as schema-invalid and as an empty answer on
    every field.

    >>> report = evaluate_run("runs/poi", "data/poi/test.jsonl", out_dir="runs/poi/eval")  # doctest: +SKIP
    >>> report["fields"]["pois[].category"]["accuracy"], report["schema_valid_rate"]  # doctest: +SKIP
    """
    from vlx.api import load
    from vlx.decode import ExtractionError

    Schema = load_run_schema(model)
    rows = load_gold(data, Schema, limit=limit)
    from vlx.progress import Progress

    extractor = load(model, batch_size=batch_size, max_new_tokens=max_new_tokens)
    started = time.perf_counter()
    bar = Progress(f"eval: extracting {len(rows)} images", len(rows))
    results = extractor.extract_many([r.image for r in rows], on_progress=lambda n: bar.advance(n))
    seconds = time.perf_counter() - started
    bar.done(f"{len(rows) / seconds:.2f} images/s")
    # An ExtractionError is no answer at all: schema-invalid, and empty on every field.
    predictions = [None if isinstance(x, ExtractionError) else x for x in results]
    errors = [str(x) if isinstance(x, ExtractionError) else None for x in results]
    report = evaluate_predictions(predictions, rows, Schema, out_dir=out_dir, seconds=seconds, errors=errors)
    if chat_data is not None:  # chat retention: JSON leaks, answer perplexity vs the base (`vlx.eval.chat`)
        from vlx.eval.chat import evaluate_chat, write_chat

        report["chat"] = evaluate_chat(extractor, chat_data, batch_size=batch_size)
        if out_dir is not None:
            write_chat(report["chat"], out_dir)
    return report


__all__ = ["ExtractionEvalError", "load_run_schema", "load_gold", "evaluate_predictions", "evaluate_run"]
