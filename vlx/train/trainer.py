"""transformers' `Trainer`, extended where LLaVA needs what it does not do.

The Trainer brings accelerate (DDP, DeepSpeed ZeRO-2/3, FSDP), mixed precision, gradient
accumulation with token-exact loss normalisation, logging and resumption. LLaVA additionally
needs, and this subclass adds:

- a separate projector learning rate (`mm_projector_lr` in the reference `LLaVATrainer`);
- `group_by_modality_length` batching (`vlx.data.sampler`);
- the frozen-tower feature cache (`vlx.data.feature_cache`): filled before the first step;
- checkpoints that appear atomically: the Trainer writes `checkpoint-N` in place, so a kill
  during a save leaves a directory `--resume` would pick up; here it is written under a staging
  folder and renamed when complete;
- `metrics.jsonl` with the stage name, written by a callback, and the loss of each data source
  (`loss_extraction`, `loss_chat`) when the collator passes `source_ids`;
- a stand-in image on text-only batches when several processes train: a process whose batch holds
  no image would skip the tower and the connector, and DDP (a parameter without a gradient) or
  DeepSpeed ZeRO-3 (the others wait for it to gather the tower's shards) stops. As in LLaVA's own
  `train.py` (a zero image for text-only rows), the tower and connector run on one blank image and
  add zero times their output to the loss: the same loss and gradients, and every process takes part;
- resumption that restores the weights: transformers 5 saves LLaVA checkpoints with its
  key-conversion mapping (`language_model.model.*`) but `Trainer._load_from_checkpoint` loads
  them with a raw `load_state_dict`, so every key misses and training silently continues from
  the in-memory weights. Here the checkpoint is read back through `from_pretrained`, which
  applies the mapping.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PrinterCallback, PreTrainedModel, Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from vlx.data.feature_cache import FEATURE_KWARG, CachedFeatureDataset, fill_feature_cache, vision_feature_input
from vlx.data.sampler import ModalityLengthSampler
from vlx.data.templates import IGNORE_INDEX

PROJECTOR_PREFIX = "multi_modal_projector"
IMAGE_KEYS = ("pixel_values", FEATURE_KWARG)
"""Batch keys that mean the batch runs the tower (or its cached features) through the connector."""


def image_stand_in(processor) -> dict[str, torch.Tensor]:
    """The processor's inputs for one blank image, in the keys the family's `get_image_features`
    reads (`pixel_values`, `image_grid_thw`, `pixel_attention_mask`, `image_sizes`, InstructBLIP's
    `qformer_input_ids`...): what `LlavaTrainer` runs on a batch without images."""
    from PIL import Image

    from vlx.decode.generate import encode_batch
    from vlx.data.vlm_data import image_in_text

    side = getattr(processor.image_processor, "crop_size", None) or {}
    side = side.get("height", 224) if isinstance(side, dict) else 224
    placeholder = getattr(processor, "image_token", None) or "<image>"
    prompt = placeholder if image_in_text(processor) else ""
    enc = encode_batch(processor, [prompt], [Image.new("RGB", (side, side))], "cpu", torch.float32)
    return {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask", "token_type_ids",
                                                        "mm_token_type_ids")}


def _tensors(x) -> list[torch.Tensor]:
    """Every tensor in a model output, tuple, list or dict (what `get_image_features` returns varies by family)."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _tensors(v)]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    return []


def stand_in_term(model, stand_in: dict, device, *, cached: bool = False) -> torch.Tensor:
    """Zero times the tower's and connector's output on `image_stand_in`'s blank image: a graph through
    both, so that every trainable connector weight gets a (zero) gradient and every tower shard is
    gathered. `cached`: the tower's features come from the feature cache, so only the projector runs."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if cached:
        projector = inner.model.multi_modal_projector
        vision = inner.config.vision_config
        tokens = (vision.image_size // vision.patch_size) ** 2
        out = projector(torch.zeros(1, tokens, vision.hidden_size, device=device, dtype=projector.linear_1.weight.dtype))
    else:
        accepts = inspect.signature(inner.get_image_features).parameters
        dtype = next(inner.parameters()).dtype
        kwargs = {k: (v.to(device, dtype) if k == "pixel_values" else v.to(device))
                  for k, v in stand_in.items() if k in accepts or k == "pixel_values"}
        out = inner.get_image_features(**kwargs)
    return sum(t.float().sum() for t in _tensors(out) if t.is_floating_point()) * 0.0


class LlavaTrainer(Trainer):
    def __init__(self, *args, projector_lr: float | None = None, modality_lengths: list[int] | None = None,
                 source_names: tuple[str, ...] | None = None, processor=None, **kwargs):
        """`processor`: the run's, for the stand-in image of text-only batches when several processes
        train (`image_stand_in`, built at the first such batch)."""
        self.projector_lr = projector_lr
        self.processor = processor
        self._stand_in: dict | None = None
        self.modality_lengths = modality_lengths
        self.source_names = source_names
        self._source_loss = torch.zeros(len(source_names or ()), dtype=torch.float64)
        self._source_tokens = torch.zeros(len(source_names or ()), dtype=torch.float64)
        super().__init__(*args, **kwargs)
        if any(isinstance(c, ProgressLines) for c in self.callback_handler.callbacks):
            self.remove_callback(PrinterCallback)  # its raw log dicts would repeat what ProgressLines says

    def train(self, *args, **kwargs):
        """With a `CachedFeatureDataset`, first fill the cache (each process a disjoint slice of the missing
        images), then train with the model reading `vision_features` instead of running the tower."""
        if not isinstance(self.train_dataset, CachedFeatureDataset):
            return super().train(*args, **kwargs)
        fill_feature_cache(self.train_dataset, self.model, device=self.args.device, rank=self.args.process_index,
                           world_size=self.args.world_size, barrier=self.accelerator.wait_for_everyone)
        with vision_feature_input(self.model):
            return super().train(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        source_ids = inputs.pop("source_ids", None)
        weights = inputs.pop("label_weights", None)  # decision tokens (`vlx.data.decisions`)
        labels, kept = inputs.get("labels"), inputs.get("logits_to_keep")  # the Trainer may pop the labels
        text_only = not any(k in inputs for k in IMAGE_KEYS)
        loss_func = self.compute_loss_func
        if weights is not None:
            if loss_func is None:
                raise ValueError("per-token loss weights need compute_loss_func=vlx.data.packing.supervised_loss")
            self.compute_loss_func = functools.partial(loss_func, weights=weights)
        try:
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
        finally:
            self.compute_loss_func = loss_func
        if text_only and model.training and self.processor is not None and self.args.world_size > 1:
            if self._stand_in is None:
                self._stand_in = image_stand_in(self.processor)
            loss = loss + stand_in_term(self.accelerator.unwrap_model(model), self._stand_in, self.args.device,
                                        cached=isinstance(self.train_dataset, CachedFeatureDataset))
        if source_ids is not None and model.training:
            self._track_source_loss(outputs.logits, labels, source_ids, kept)
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def _track_source_loss(self, logits, labels, source_ids, kept=None) -> None:
        """Accumulate each data source's token loss. `source_ids`: one id per row (padded batches) or
        per token (packed rows, `PackingCollator(sources=...)`); `kept`: the logits are those of
        positions `kept` only (`supervised_logits=True`)."""
        if source_ids.dim() == 1:
            source_ids = source_ids[:, None].expand_as(labels)
        targets, sources = labels[:, 1:], source_ids[:, 1:].to(labels.device)  # the source of the predicted token
        if kept is None:
            logits = logits[:, :-1]
        else:
            targets, sources = targets[:, kept], sources[:, kept]
        # Row by row: a (batch, length, vocab) float copy of the logits would double peak memory.
        for row in range(labels.shape[0]):
            mask = targets[row] != IGNORE_INDEX
            if not mask.any():
                continue
            token_loss = F.cross_entropy(logits[row][mask].float(), targets[row][mask], reduction="none")
            src = sources[row][mask].cpu()
            self._source_loss.index_add_(0, src, token_loss.double().cpu())
            self._source_tokens.index_add_(0, src, torch.ones(len(src), dtype=torch.float64))

    def log(self, logs, *args, **kwargs):
        if self.source_names and "loss" in logs:
            for i, name in enumerate(self.source_names):
                if self._source_tokens[i]:
                    logs[f"loss_{name}"] = round((self._source_loss[i] / self._source_tokens[i]).item(), 4)
            self._source_loss.zero_()
            self._source_tokens.zero_()
        super().log(logs, *args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        if self.modality_lengths is None:
            return super()._get_train_sampler(train_dataset)
        megabatch = self.args.train_batch_size * self.args.world_size * self.args.gradient_accumulation_steps
        return ModalityLengthSampler(self.modality_lengths, megabatch, seed=self.args.seed)

    def create_optimizer(self, model=None):
        if self.optimizer is not None or self.projector_lr is None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[bool, bool], list] = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                groups.setdefault((PROJECTOR_PREFIX in name, name in decay), []).append(p)
        # The projector's groups last: the Trainer logs the first group's rate as `learning_rate`,
        # which should be the run's own, not the projector's.
        param_groups = [
            {"params": ps, "weight_decay": self.args.weight_decay if dec else 0.0,
             **({"lr": self.projector_lr} if proj else {})}
            for (proj, dec), ps in sorted(groups.items())
        ]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = self.model if model is None else model
        if (self.is_deepspeed_enabled or self.is_fsdp_enabled
                or not isinstance(model, PreTrainedModel)
                or not os.path.exists(os.path.join(resume_from_checkpoint, "config.json"))):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        saved = type(model).from_pretrained(resume_from_checkpoint, dtype=next(model.parameters()).dtype)
        missing, unexpected = model.load_state_dict(saved.state_dict(), strict=False)
        if unexpected or [k for k in missing if k not in getattr(model, "_tied_weights_keys", {})]:
            raise RuntimeError(f"checkpoint {resume_from_checkpoint} does not match the model: "
                               f"missing {missing[:5]}, unexpected {unexpected[:5]}")

    def _save_checkpoint(self, model, trial):
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = os.path.join(run_dir, ".staging")
        self.args.output_dir, original = staging, self.args.output_dir
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = original
        self.accelerator.wait_for_everyone()
        if self.is_world_process_zero():
            final = os.path.join(run_dir, name)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(os.path.join(staging, name), final)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()


class MetricsLogger(TrainerCallback):
    """Appends every Trainer log entry to `metrics.jsonl`, tagged with the stage."""

    def __init__(self, path: str | Path, stage: str):
        self.path = Path(path)
        self.stage = stage
        self.start = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        entry = {"stage": self.stage, "step": state.global_step, "time_s": round(time.time() - self.start, 3)}
        entry.update({k: (float(v) if isinstance(v, (int, float, torch.Tensor)) else v) for k, v in logs.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")


class ProgressLines(TrainerCallback):
    """The Trainer's progress as plain lines (`vlx.progress`): step, loss, learning rate and ETA at
    least every 30 s, readable in a terminal and in a log file alike (tqdm's bar is turned off)."""

    def __init__(self, description: str, every: float = 30.0):
        self.description, self.every = description, every
        self.bar = None
        self.info = ""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from vlx.progress import Progress

            self.bar = Progress(self.description, state.max_steps, start=state.global_step, every=self.every)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.info = f"loss {float(logs['loss']):.4f} lr {float(logs.get('learning_rate', 0)):.2e}"

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step, self.info)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.done(self.info)
            self.bar = None


def trainable_summary(model) -> dict[str, int]:
    """Trainable parameter counts per top-level part (vision tower, projector, LLM)."""
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            part = ("vision_tower" if "vision_tower" in name else "projector" if PROJECTOR_PREFIX in name
                    else "lora" if "lora_" in name else "llm")
            out[part] = out.get(part, 0) + p.numel()
    return out
