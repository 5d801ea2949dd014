"""The run directory: what `train-base`, `finetune` and `export` write, and how it is read back.

    RUN/
      config.json, model.safetensors, tokenizer*, processor_config.json, chat_template.jinja
                                  # a plain transformers LLaVA checkpoint (base runs and exports)
      adapter/                    # finetune runs: peft LoRA adapter (+ the projector as modules_to_save)
      vlx_run.json                # RunInfo below
      config.yaml                 # the resolved configuration the run was made with
      schema.py, schema.json      # finetune runs: the schema source and its JSON Schema
      format_prompt.txt           # finetune runs: the task's response-format prompt
      metrics.jsonl, loss.png     # training curves

Directories are written under a temporary name and renamed into place when complete
(`atomic_dir`), so a directory that exists is a directory that is whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

RUN_FILE = "vlx_run.json"


@dataclass
class RunInfo:
    kind: str
    """`base` (train-base), `finetune` (LoRA adapter over `base`) or `export` (merged finetune)."""
    template: str
    """Conversation template the model was trained with (`vicuna_v1`, `chatml`, `plain`)."""
    base: str | None = None
    """Finetune runs: the base model directory the adapter applies to."""
    schema_class: str | None = None
    """Finetune runs: the pydantic class name in `schema.py`."""
    extra: dict = field(default_factory=dict)

    def save(self, directory: str | Path) -> None:
        Path(directory, RUN_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "RunInfo | None":
        from vlx.inputs import InputError, read_json

        path = Path(directory, RUN_FILE)
        if not path.exists():
            return None
        data = read_json(path)
        try:
            return cls(**data)
        except TypeError:
            raise InputError(f"{path}: not a vlx run record (keys {', '.join(map(str, data)) if isinstance(data, dict) else type(data).__name__}); "
                             "give a directory written by `vlx train-base`, `vlx finetune` or `vlx export`") from None


MAX_LENGTH = 2048
"""LLaVA-1.5's `model_max_length`: what a run without a recorded `max_length` trained with."""


def model_section(directory: str | Path) -> dict:
    """The `model:` section of the run's `config.yaml` ({} when the run has none)."""
    from vlx.inputs import InputError, read_yaml

    path = Path(directory, "config.yaml")
    if not path.exists():
        return {}
    data = read_yaml(path) or {}
    section = data.get("model") if isinstance(data, dict) else None
    if section is not None and not isinstance(section, dict):
        raise InputError(f"{path}: 'model' must be a mapping, got {type(section).__name__}")
    return section or {}


def max_length(directory: str | Path | None) -> int:
    """The run's `max_length` (image tokens included), as it trained with."""
    value = model_section(directory).get("max_length") if directory is not None else None
    return int(value) if isinstance(value, int) and value > 0 else MAX_LENGTH


@contextlib.contextmanager
def entry_lock(target: str | Path, what: str | None = None):
    """Hold the lock of a cache entry while it is checked and, if absent, prepared.

    A second process asking for the same entry waits here (saying so, once) and then finds it
    complete instead of preparing it again; the lock is a file beside the entry (`filelock`), so
    a killed holder releases it with its process.
    """
    import logging

    from filelock import FileLock, Timeout

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target.parent / f".{target.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logging.getLogger(__name__).warning("waiting for another process preparing %s", what or target)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def atomic_dir(target: str | Path, *, overwrite: bool = True):
    """Yield a temporary sibling directory; on success it replaces `target` in one rename.

    On an exception the temporary directory is removed and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(f"{target} exists; remove it or choose another --out")
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
