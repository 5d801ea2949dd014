"""`vlx export --model RUN --out DIR`: a fine-tune run merged into one standalone checkpoint.

The LoRA deltas are folded into the LLM weights and the fine-tuned projector replaces the base
one; the result is a plain transformers LLaVA directory (loadable without vlx and servable by
engines such as vLLM, with the schema as `response_format`) that keeps the run's schema and
format prompt beside it so `vlx.load` still applies them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from vlx.model import trust
from vlx.model.build import ModelLoadError
from vlx.model.vlm import load_checkpoint
from vlx.run import RunInfo, atomic_dir

CARRIED = ("schema.py", "schema.json", "format_prompt.txt", "config.yaml")


def load_finetune(run: str | Path, *, merge: bool = True):
    """A fine-tune run -> (model, processor, RunInfo): the base with the adapter applied."""
    from peft import PeftModel

    run = Path(run)
    info = RunInfo.load(run)
    if info is None or info.kind != "finetune":
        raise ModelLoadError(f"{run} is not a `vlx finetune` run (vlx_run.json missing or not kind 'finetune')")
    if not (run / "adapter").is_dir():
        raise ModelLoadError(f"{run} has no adapter/ directory; the run did not finish")
    model, processor = load_checkpoint(info.base, use="finetune")
    if (run / "processor_config.json").exists():
        from vlx.model.vlm import load_processor

        processor = load_processor(run)  # the run's own: its pixel budget, as it trained
    trust.check_dir(run / "adapter", "adapter")
    model = PeftModel.from_pretrained(model, run / "adapter")
    return (model.merge_and_unload() if merge else model), processor, info


def export_merged(run: str | Path, out: str | Path) -> Path:
    """Write the merged standalone checkpoint of fine-tune `run` to `out` (atomically)."""
    model, processor, info = load_finetune(run)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        for name in CARRIED:
            if (Path(run) / name).exists():
                shutil.copyfile(Path(run) / name, tmp / name)
        RunInfo(kind="export", template=info.template, base=info.base, schema_class=info.schema_class,
                extra={"from_run": str(Path(run).resolve())}).save(tmp)
    return Path(out)
