"""Configuration dataclasses, one per concern.

Values are resolved in this order: preset defaults < YAML file (`--config`) < command-line flags.
Each field names the LLaVA-1.5 value where vlx's default differs.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vlx.inputs import InputError, read_yaml


class ConfigError(ValueError):
    """A configuration value or key that cannot be used; the message names it and the fix."""


@dataclass
class ModelConfig:
    preset: str = "tiny"
    """Named preset (`vlx.model.PRESETS`): `tiny`, `smol` (the embedded default), `llava-1.5-7b`, `llava-1.5-13b`."""
    vision: str | None = None
    """Vision tower: a hub id or local directory of a CLIP-like vision model; default from the preset."""
    llm: str | None = None
    """Causal LM: a hub id, a local directory, or a directory holding a GGUF file; default from the preset."""
    llm_gguf_file: str | None = None
    """File name inside `llm` when the LM is a GGUF file (dequantized on load)."""
    projector: str | None = None
    """`mlp2x_gelu` (LLaVA-1.5) or `linear` (LLaVA-1, the paper's ablation)."""
    image_aspect_ratio: str | None = None
    """`pad` (LLaVA-1.5: mean-colour square), `square` (stretch) or `crop` (CLIP default)."""
    template: str | None = None
    """Stage-2 / fine-tune conversation template: `vicuna_v1` (LLaVA-1.5) or `chatml`."""
    max_length: int | None = None
    """Maximum tokens per sample, image tokens included (LLaVA-1.5: 2048)."""
    seed: int = 0
    """Seed for randomly initialised parts (projector, and every weight of `tiny`)."""
    projector_init: str | None = None
    """Safetensors file of projector weights to start stage 1 from (LLaVA's `--pretrain_mm_mlp_adapter`),
    e.g. the projector alignment of `vlx.model.align`; default: a fresh projector."""

    def __post_init__(self):
        if self.projector_init is not None and not Path(self.projector_init).is_file():
            raise ConfigError(f"--projector-init {self.projector_init}: no such file; give the .safetensors file "
                              f"written by vlx.model.align.save_projector, or leave it out")
        if self.projector is not None and self.projector not in ("mlp2x_gelu", "linear"):
            raise ConfigError(f"--projector {self.projector!r}: use mlp2x_gelu (LLaVA-1.5) or linear (LLaVA-1)")
        if self.image_aspect_ratio is not None and self.image_aspect_ratio not in ("pad", "square", "crop"):
            raise ConfigError(f"--image-aspect-ratio {self.image_aspect_ratio!r}: use pad, square or crop")
        if self.max_length is not None and self.max_length < 8:
            raise ConfigError(f"--max-length {self.max_length}: must be at least 8 (LLaVA-1.5 uses 2048)")


@dataclass
class DataConfig:
    stage1_data: str | None = None
    """Stage-1 caption data: LLaVA JSON/JSONL, a `datasets` directory, or a mixture YAML."""
    stage2_data: str | None = None
    """Stage-2 instruction data, same formats; a mixture YAML sets per-source format prompts."""
    image_folder: str | None = None
    """Folder image paths are relative to; default: each data file's own folder."""
    skip_invalid: bool = False
    """Train on the valid rows and write the invalid ones to `rejected.jsonl` instead of stopping."""
    truncate: bool = False
    """Cut over-long samples at `max_length` (never into image tokens) instead of stopping."""
    group_by_modality_length: bool = True
    """Batches are all-image or all-text (LLaVA-1.5's `group_by_modality_length`)."""
    num_workers: int = 0
    """DataLoader worker processes."""
    feature_cache: str | None = None
    """Directory caching the frozen vision tower's features (`vlx.data.feature_cache`); None computes them
    every step (LLaVA-1.5 does). Epochs, stages and runs over the same images then skip the tower."""
    packing: bool = False
    """Pack each micro-batch's samples without padding (`vlx.data.packing`); loss unchanged."""


@dataclass
class TrainConfig:
    learning_rate: float = 2e-5
    """Peak learning rate (LLaVA-1.5: 1e-3 stage 1, 2e-5 stage 2)."""
    projector_lr: float | None = None
    """Separate projector learning rate; None uses `learning_rate`."""
    global_batch_size: int = 128
    """Samples per optimizer step over all processes (LLaVA-1.5: 256 stage 1, 128 stage 2)."""
    per_device_batch_size: int = 16
    """Samples per forward pass on one process; accumulation makes up the rest."""
    epochs: float = 1.0
    """Passes over the data (LLaVA-1.5: 1)."""
    max_steps: int = -1
    """Stop after this many optimizer steps; -1 runs `epochs`."""
    warmup_ratio: float = 0.03
    """Linear warmup as a fraction of all steps (LLaVA-1.5: 0.03)."""
    weight_decay: float = 0.0
    """AdamW weight decay (LLaVA-1.5: 0)."""
    lr_scheduler: str = "cosine"
    """transformers scheduler name (LLaVA-1.5: cosine)."""
    precision: str = "auto"
    """`auto` (bf16 where the hardware has it), `bf16` or `fp32`."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (LLaVA-1.5 on GPU: on)."""
    save_steps: int = 0
    """Write a resumable checkpoint every N steps; 0 only at the end."""
    logging_steps: int = 1
    """Log loss every N optimizer steps."""
    seed: int = 42
    """Data order and dropout seed."""
    report_to: str = "none"
    """Experiment tracker: `none`, `tensorboard`, `wandb` or `mlflow` (`vlx.train.tracking`)."""

    def __post_init__(self):
        if self.report_to not in ("none", "tensorboard", "wandb", "mlflow"):
            raise ConfigError(f"report_to={self.report_to!r}: use none, tensorboard, wandb or mlflow")
        for name in ("global_batch_size", "per_device_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"precision={self.precision!r}: use auto, bf16 or fp32")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio={self.warmup_ratio}: must be in [0, 1)")

    def gradient_accumulation_steps(self, world_size: int) -> int:
        per_step = self.per_device_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"global_batch_size={self.global_batch_size} is not a multiple of per_device_batch_size "
                f"({self.per_device_batch_size}) x processes ({world_size}); change one of them"
            )
        return self.global_batch_size // per_step


@dataclass
class LoraConfig:
    r: int = 128
    """LoRA rank (LLaVA `finetune_task_lora.sh`: 128)."""
    alpha: int = 256
    """LoRA alpha (LLaVA: 256)."""
    dropout: float = 0.05
    """LoRA dropout (LLaVA: 0.05)."""
    train_projector: bool = True
    """Train the projector fully alongside the adapter (LLaVA: yes, at `projector_lr`)."""
    load_in_4bit: bool = False
    """QLoRA: quantize the frozen base to 4 bit (needs a CUDA GPU and bitsandbytes)."""

    def __post_init__(self):
        if self.r < 1 or self.alpha < 1:
            raise ConfigError(f"lora r={self.r}, alpha={self.alpha}: both must be >= 1 (LLaVA: 128 and 256)")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora dropout={self.dropout}: must be in [0, 1)")


@dataclass
class FinetuneDataConfig:
    data: str | None = None
    """Extraction rows: JSONL of `{"image", "target", ["prompt"]}`."""
    val_data: str | None = None
    """Held-out rows for schema-valid rate and per-field accuracy; default: split off `val_fraction`."""
    val_fraction: float = 0.1
    """Share of `data` held out when no `val_data` is given (at most `val_max` rows)."""
    val_max: int = 32
    """Most held-out rows decoded per evaluation (constrained decoding costs one generation each)."""
    image_folder: str | None = None
    """Folder image paths are relative to; default: the data file's folder."""
    chat_data: str | None = None
    """Chat replay: LLaVA-format conversations mixed in without a format prompt; default: a built-in set."""
    chat_ratio: float = 0.5
    """Chat rows per extraction row (0 turns chat replay off)."""
    format_prompt: str | None = None
    """Override the schema-derived format prompt; the empty string trains without one (the ablation)."""
    task: str | None = None
    """Task instruction opening the derived format prompt; default: the schema's docstring."""
    spell_fields: tuple[str, ...] = ()
    """JSON keys whose string values are tokenized one character per token in the training targets
    (`vlx.data.templates.encode_spelled`), e.g. `("name",)`: a tower that reads glyph by glyph hands
    the LLM characters, and an answer in the same characters is a copy. Decoding is unchanged."""
    decision_weight: float = 1.0
    """Loss weight of the answer tokens where the JSON branches (`vlx.data.decisions`: whether a nullable
    value is there, whether a list goes on, true or false); 1 is plain cross-entropy. A small fine-tune
    learns to copy long before it learns when to: the demo's model wrote every street and phone as
    null at 1, and read the streets at 5 (bench/RESULTS.md)."""
    weigh_string_ends: bool = False
    """Give the token that closes each string value `decision_weight` as well: whether a copied name
    stops there or runs on (into the awning's word, past the sign's first line) is a choice too."""
    prompt_style: str = "cue"
    """Derived format prompt: `cue` (one line, the task and "Answer in JSON.", as LLaVA-1.5 writes
    its format prompts) or `schema` (the task and every field spelled out, about 250 tokens for
    `templates/poi.py`); measured side by side in bench/RESULTS.md."""
    skip_invalid: bool = False
    """Train on the valid rows and write the invalid ones to `rejected.jsonl` instead of stopping."""
    packing: bool = False
    """Pack each micro-batch's samples without padding (`vlx.data.packing`); loss and per-source
    losses unchanged."""
    min_pixels: int | None = None
    """Smallest image area the processor resizes to (families with a pixel budget, e.g. Qwen2-VL:
    tokens = area / 28^2); None keeps the checkpoint's. Stored in the run's processor config, so the
    fine-tune's evaluation, `vlx eval`, `vlx extract` and the export use the same."""
    max_pixels: int | None = None
    """Largest image area the processor resizes to (see `min_pixels`)."""

    def __post_init__(self):
        for name in ("min_pixels", "max_pixels"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"--{name.replace('_', '-')} {value}: give a positive number of pixels")
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ConfigError(f"--min-pixels {self.min_pixels} is above --max-pixels {self.max_pixels}")
        if self.chat_ratio < 0:
            raise ConfigError(f"--chat-ratio {self.chat_ratio}: must be >= 0")
        if not self.decision_weight > 0:
            raise ConfigError(f"--decision-weight {self.decision_weight}: must be > 0 (1: plain cross-entropy)")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"--val-fraction {self.val_fraction}: must be in [0, 1)")
        if self.prompt_style not in ("cue", "schema"):
            raise ConfigError(f"--prompt-style {self.prompt_style!r}: use cue or schema")


def _check_keys(section: str, data: dict, cls) -> None:
    names = [f.name for f in fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown key '{section}.{key}' in the config file; {hint}")


def load_yaml(path: str | Path, sections: dict[str, type], scalars: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a YAML config whose top-level keys are `sections` (mappings) or `scalars` (plain values or lists,
    such as a run's `base:` or `stages:`); unknown keys are errors."""
    path = Path(path)
    try:
        data = read_yaml(path) or {}
    except InputError as e:
        raise ConfigError(f"cannot read config {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections ({', '.join(sections)})")
    for key, value in data.items():
        if key in scalars:
            if isinstance(value, dict):
                raise ConfigError(f"{path}: '{key}' must be a value or a list, not a mapping")
            continue
        if key not in sections:
            valid = list(sections) + list(scalars)
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"valid sections: {', '.join(valid)}"
            raise ConfigError(f"{path}: unknown section '{key}'; {hint}")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: section '{key}' must be a mapping")
        _check_keys(key, value, sections[key])
    return data


def merge(cls, *layers: dict[str, Any]):
    """Build `cls` from dict layers, later layers winning; None values in a layer do not override."""
    values: dict[str, Any] = {}
    for layer in layers:
        _check_keys(cls.__name__, layer, cls)
        values.update({k: v for k, v in layer.items() if v is not None})
    return cls(**values)


def to_dict(obj) -> dict[str, Any]:
    return dataclasses.asdict(obj)


__all__ = ["ConfigError", "ModelConfig", "DataConfig", "TrainConfig", "LoraConfig", "FinetuneDataConfig", "load_yaml", "merge", "to_dict", "field"]
