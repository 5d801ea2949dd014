"""Schema-extraction evaluation of a fine-tuned run: field metrics on held-out rows.

    vlx eval --model RUN --data test.jsonl

`test.jsonl` holds extraction rows (`{"image", "target", "prompt"}`, see `vlx.schema.rows`) for
the schema the run was fine-tuned with (`RUN/schema.py`). `evaluate_predictions` scores
predictions against those rows with `vlx.eval.fields` and writes `metrics.json` and `report.md`;
`evaluate_run` produces the predictions with the run's constrained extractor first.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from vlx.eval.fields import field_metrics, format_table
from vlx.run import RunInfo, atomic_dir


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
                         out_dir: str | Path | None = None, seconds: float | None = None) -> dict:
    """Field metrics of `predictions` (instances, dicts, JSON text or None) against `rows`' targets.

    With `out_dir`, writes `metrics.json`, `report.md` (each field beside its majority-class
    baseline) and `predictions.jsonl`.
    """
    report = field_metrics(predictions, [r.target for r in rows], Schema)
    if seconds:
        report["images_per_second"] = len(rows) / seconds
    if out_dir is not None:
        with atomic_dir(out_dir) as tmp:
            (tmp / "metrics.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
            speed = f", {report['images_per_second']:.2f} images/s" if seconds else ""
            (tmp / "report.md").write_text(f"# {Schema.__name__} extraction{speed}\n\n" + format_table(report))
            with (tmp / "predictions.jsonl").open("w") as f:
                for row, pred in zip(rows, predictions):
                    text = pred.model_dump_json() if isinstance(pred, BaseModel) else pred
                    f.write(json.dumps({"row": row.row, "image": str(row.image), "prediction": text,
                                        "target": row.target.model_dump(mode="json")}, ensure_ascii=False) + "\n")
    return report


def evaluate_run(model: str | Path, data: str | Path, *, chat_data: str | Path | None = None,
                 out_dir: str | Path | None = None, limit: int | None = None, batch_size: int = 8) -> dict:
    """Extract from every row of `data` with the run's constrained decoder and score the fields.

    The run and the data are checked first (a run without a schema, or invalid rows, fail here
    with what to give instead). Producing predictions needs the constrained extractor, which
    vlx does not have yet: until then this raises after the checks, and saved predictions are
    scored with `evaluate_predictions`.
    """
    Schema = load_run_schema(model)
    load_gold(data, Schema, limit=limit)
    raise ExtractionEvalError(
        "extraction evaluation of a run needs the constrained extractor, which this version of vlx does not "
        "have yet; score saved predictions with `vlx.eval.extraction.evaluate_predictions`"
    )


__all__ = ["ExtractionEvalError", "load_run_schema", "load_gold", "evaluate_predictions", "evaluate_run"]
