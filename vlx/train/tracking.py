"""Experiment trackers (`--report-to`): transformers' own integrations, plus the held-out sample table.

    vlx finetune ... --report-to tensorboard      # OUT/tensorboard/, `tensorboard --logdir OUT/tensorboard`
    vlx train-base ... --report-to wandb          # or mlflow; none (the default) writes only metrics.jsonl

Loss, learning rate and gradient norm reach the tracker through transformers' callbacks
(`TensorBoardCallback`, `WandbCallback`, `MLflowCallback`). The fine-tune's held-out evaluation
adds its accuracies as scalars and a sample table (image, prediction, target, the fields that
differ) through `log_samples`, the same rows it appends to `OUT/samples.jsonl`.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from vlx.config import ConfigError
from vlx.eval.fields import differing_fields

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
"""`--report-to` value -> the package its transformers integration needs."""


def check_report_to(report_to: str) -> str:
    """Refuse an unknown tracker, or one whose package is missing, before anything loads."""
    if report_to == "none":
        return report_to
    if report_to not in TRACKERS:
        raise ConfigError(f"--report-to {report_to!r}: use none, {', '.join(TRACKERS)}")
    if importlib.util.find_spec(TRACKERS[report_to]) is None:
        raise ConfigError(f"--report-to {report_to} needs the {TRACKERS[report_to]} package: "
                          f"pip install {TRACKERS[report_to]} (or pip install 'vlx[track]')")
    return report_to


def configure(report_to: str, out: Path, run_name: str) -> None:
    """Where each tracker writes: TensorBoard under OUT/tensorboard/RUN_NAME; W&B and MLflow by their own settings."""
    if report_to == "tensorboard":
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(out) / "tensorboard" / run_name)


def sample_rows(images: list, predictions: list, targets: list, step: int) -> list[dict]:
    """The sample table: one dict per held-out row (predictions: instances, dicts or None)."""
    rows = []
    for image, pred, target in zip(images, predictions, targets):
        pred = pred.model_dump(mode="json") if hasattr(pred, "model_dump") else pred
        target = target.model_dump(mode="json") if hasattr(target, "model_dump") else target
        rows.append({"step": step, "image": str(image), "prediction": pred, "target": target,
                     "differs": differing_fields(pred, target)})
    return rows


def write_samples(rows: list[dict], path: Path) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def log_samples(callbacks, rows: list[dict], scalars: dict[str, float], step: int) -> None:
    """Send the held-out accuracies and sample table to whichever tracker callbacks the trainer runs."""
    columns = ["image", "prediction", "target", "differs"]
    table = [[r["image"], json.dumps(r["prediction"], ensure_ascii=False), json.dumps(r["target"], ensure_ascii=False),
              ", ".join(r["differs"]) or "-"] for r in rows]
    for cb in callbacks:
        name = type(cb).__name__
        if name == "TensorBoardCallback" and getattr(cb, "tb_writer", None) is not None:
            for key, value in scalars.items():
                cb.tb_writer.add_scalar(f"held_out/{key}", value, step)
            header = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
            body = "".join("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |\n" for row in table)
            cb.tb_writer.add_text("held_out/samples", header + body, step)
            cb.tb_writer.flush()
        elif name == "WandbCallback" and getattr(cb, "_wandb", None) is not None and cb._wandb.run is not None:
            cb._wandb.log({**{f"held_out/{k}": v for k, v in scalars.items()},
                           "held_out/samples": cb._wandb.Table(columns=columns, data=table)}, commit=False)
        elif name == "MLflowCallback" and getattr(cb, "_ml_flow", None) is not None and cb._initialized:
            cb._ml_flow.log_metrics({f"held_out/{k}": v for k, v in scalars.items()}, step=step)
            cb._ml_flow.log_table(data={c: [row[i] for row in table] for i, c in enumerate(columns)},
                                  artifact_file=f"held_out/samples-step{step}.json")


__all__ = ["TRACKERS", "check_report_to", "configure", "sample_rows", "write_samples",
           "log_samples"]
