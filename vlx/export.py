"""`vlx export --model RUN --out DIR [--lora]`: a fine-tune run merged into one standalone checkpoint,
or, with `--lora`, the pair a LoRA server (vLLM `--enable-lora`) takes: `DIR/base`, the base checkpoint
with the connector the run trained, and `DIR/adapter`, the language model's LoRA alone (no
`modules_to_save`, which vLLM refuses). Both give the fine-tuned model's logits (tested).

The LoRA deltas are folded into the LLM weights and the fine-tuned projector replaces the base
one; the result is a plain transformers LLaVA directory (loadable without vlx and servable by
engines such as vLLM, with the schema as `response_format`) that keeps the run's schema and
format prompt beside it so `vlx.load` still applies them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from vlx.model.build import ModelLoadError
from vlx.model.vlm import load_run_base
from vlx.run import RunInfo, atomic_dir

CARRIED = ("schema.py", "schema.json", "format_prompt.txt", "config.yaml")


def _finetune_info(run: Path) -> RunInfo:
    info = RunInfo.load(run)
    if info is None or info.kind != "finetune":
        raise ModelLoadError(f"{run} is not a `vlx finetune` run (vlx_run.json missing or not kind 'finetune')")
    return info


def load_finetune(run: str | Path, *, merge: bool = True):
    """A fine-tune run -> (model, processor, RunInfo): the base with the adapter applied."""
    from peft import PeftModel

    run = Path(run)
    info = _finetune_info(run)
    model, processor = load_run_base(run, info, use="finetune")
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


PREFIX = "base_model.model."
"""peft's prefix on every key of a saved adapter."""


def export_lora(run: str | Path, out: str | Path) -> Path:
    """Write `out/base` (the base with the run's trained connector) and `out/adapter` (LoRA on the
    language model only), atomically."""
    import json

    from safetensors.torch import load_file, save_file

    run = Path(run)
    info = _finetune_info(run)
    model, processor = load_run_base(run, info, use="finetune")
    adapter_dir = run / "adapter"
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise ModelLoadError(f"{run} has no adapter/adapter_model.safetensors; the run did not finish")
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    lora = {k: v for k, v in weights.items() if ".lora_" in k}
    connector = {k.removeprefix(PREFIX): v for k, v in weights.items() if ".lora_" not in k}
    missing = sorted(set(connector) - set(model.state_dict()))
    if missing:
        raise ModelLoadError(f"{adapter_dir}: trained weights {missing[:3]} have no place in the base model {info.base}; "
                             "the run was trained on another base")
    model.load_state_dict(connector, strict=False)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp / "base")
        processor.save_pretrained(tmp / "base")
        (tmp / "adapter").mkdir()
        save_file(lora, str(tmp / "adapter" / "adapter_model.safetensors"))
        config.update(modules_to_save=None, base_model_name_or_path="../base")
        (tmp / "adapter" / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        for name in CARRIED:
            if (run / name).exists():
                shutil.copyfile(run / name, tmp / name)
        RunInfo(kind="export", template=info.template, base=info.base, schema_class=info.schema_class,
                extra={"from_run": str(run.resolve()), "layout": "lora"}).save(tmp)
    return Path(out)

