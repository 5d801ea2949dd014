"""Schema-extraction evaluation of a fine-tuned run: field metrics on held-out rows.

    vlx eval --model RUN --data test.jsonl

`test.jsonl` holds extraction rows (`{"image", "target", "prompt"}`, see `vlx.schema.rows`) for
the schema the run was fine-tuned with (`RUN/schema.py`). `evaluate_predictions` scores
predictions against those rows with `vlx.eval.fields` and writes `metrics.json` and `report.md`;
`evaluate_run` first produces the predictions with the run's schema-constrained decoder.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from PIL import Image
from pydantic import BaseModel

from vlx.data.templates import Turn, prompt_text
from vlx.eval.fields import field_metrics, format_table
from vlx.model.llava import IMAGE_TOKEN
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
    baseline) and `predictions.jsonl` (with `errors[i]`, why row i has no valid prediction).
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
                    f.write(json.dumps({"row": row.row, "image": str(row.image), "prediction": text, "error": error,
                                        "target": row.target.model_dump(mode="json")}, ensure_ascii=False) + "\n")
    return report


def load_run_model(run: str | Path):
    """-> (model, processor) of a fine-tune or export run, following the run directory contract
    (`vlx.run`): a merged checkpoint in RUN itself, or a LoRA adapter in RUN/adapter over the base
    model named in `vlx_run.json`."""
    from vlx.model import load_llava

    run = Path(run)
    if (run / "config.json").exists():
        return load_llava(run)
    info = RunInfo.load(run)
    if not (run / "adapter").is_dir() or info is None or not info.base:
        raise ExtractionEvalError(f"{run} holds neither a model (config.json) nor an adapter with its base model; "
                                  "give the directory `vlx finetune` or `vlx export` wrote")
    from peft import PeftModel

    base = Path(info.base)
    if not base.is_absolute() and not base.exists():
        base = run / base
    model, processor = load_llava(base)
    return PeftModel.from_pretrained(model, run / "adapter").eval(), processor


def extraction_prompt(template: str, format_prompt: str, instruction: str | None = None) -> str:
    """The prompt for one row, laid out as LLaVA-1.5's task questions: the image, the row's own
    instruction if it has one, then the task's response-format prompt."""
    user = f"{IMAGE_TOKEN}\n" + (f"{instruction}\n" if instruction else "") + format_prompt
    return prompt_text(template, [Turn(user=user, assistant=None)])


def evaluate_run(model: str | Path, data: str | Path, *, chat_data: str | Path | None = None,
                 out_dir: str | Path | None = None, limit: int | None = None, batch_size: int = 8,
                 max_new_tokens: int | None = None) -> dict:
    """Extract from every row of `data` with the run's constrained decoder and score the fields.

    The schema, the response-format prompt (`RUN/format_prompt.txt`, else derived from the
    schema) and the template come from the run. A row the decoder cannot turn into a valid
    instance counts as schema-invalid and as an empty answer on every field.

    >>> report = evaluate_run("runs/poi", "data/poi/test.jsonl", out_dir="runs/poi/eval")  # doctest: +SKIP
    >>> report["fields"]["pois[].category"]["accuracy"], report["schema_valid_rate"]  # doctest: +SKIP
    """
    from vlx.decode import ConstrainedDecoder, DecodeConfig, ExtractionError
    from vlx.schema import format_prompt

    run = Path(model)
    Schema = load_run_schema(run)
    rows = load_gold(data, Schema, limit=limit)
    info = RunInfo.load(run)
    fmt_file = run / "format_prompt.txt"
    fmt = fmt_file.read_text().strip() if fmt_file.exists() else format_prompt(Schema)
    template = info.template if info and info.template != "plain" else "vicuna_v1"
    llava, processor = load_run_model(run)

    decoder = ConstrainedDecoder(llava, processor, Schema, template=template,
                                 config=DecodeConfig(batch_size=batch_size, max_new_tokens=max_new_tokens))
    prompts = [extraction_prompt(template, fmt, r.prompt) for r in rows]
    started = time.perf_counter()
    results = []
    chunk = batch_size * 8  # images are opened a chunk at a time
    for i in range(0, len(rows), chunk):
        images = [Image.open(r.image).convert("RGB") for r in rows[i:i + chunk]]
        results += decoder.decode(prompts[i:i + chunk], images, sources=[str(r.image) for r in rows[i:i + chunk]])
    seconds = time.perf_counter() - started
    if chat_data is not None:
        log.warning("chat retention (%s) is not measured by this version of `vlx eval`; only extraction is", chat_data)
    # An ExtractionError is no answer at all: schema-invalid, and empty on every field.
    predictions = [None if isinstance(x, ExtractionError) else x for x in results]
    errors = [str(x) if isinstance(x, ExtractionError) else None for x in results]
    return evaluate_predictions(predictions, rows, Schema, out_dir=out_dir, seconds=seconds, errors=errors)


__all__ = ["ExtractionEvalError", "load_run_schema", "load_run_model", "load_gold", "extraction_prompt",
           "evaluate_predictions", "evaluate_run"]
