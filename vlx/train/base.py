"""`vlx train-base --preset tiny --stage1-data captions.json --stage2-data mixture.yaml --out runs/base`

LLaVA-1.5's two training stages on transformers' Trainer (multi-GPU through
`accelerate launch`, with `--deepspeed templates/deepspeed/zero2.json` or `zero3.json`):

- stage 1, alignment: the `plain` template on caption pairs; only the projector trains.
- stage 2, visual instruction tuning: the model's conversation template (`vicuna_v1` for
  LLaVA-1.5) on a mixture of sources, each with its response-format prompt; the projector and
  the LLM train.

The vision tower is frozen throughout. Every stage's data is validated before the first
optimizer step. Output: `OUT/` is a plain transformers LLaVA checkpoint (the last stage),
`OUT/stage1/` the aligned model, plus `config.yaml`, `metrics.jsonl`, `loss.png`, `vlx_run.json`.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import yaml
from transformers import TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from vlx.config import ConfigError, DataConfig, ModelConfig, TrainConfig, to_dict
from vlx.data.dataset import Collator, LlavaDataset, prepare, report_problems, write_rejects
from vlx.data.feature_cache import CachedFeatureDataset, FeatureCache
from vlx.data.packing import PackingCollator, packs_into_one_row, supervised_loss
from vlx.data.formats import DataError, load_rows
from vlx.device import attn_implementation, device, resolve_precision
from vlx.model.align import load_projector
from vlx.model.build import build_llava, load_llava, resolve
from vlx.plot import plot_metrics
from vlx.run import RunInfo
from vlx.train import tracking
from vlx.train.trainer import LlavaTrainer, MetricsLogger, ProgressLines, trainable_summary

log = logging.getLogger(__name__)

STAGES = {"1": "stage1", "2": "stage2"}


def set_trainable(model, stage: str) -> None:
    """Stage 1: projector only. Stage 2: projector + LLM. The vision tower never trains."""
    for name, p in model.named_parameters():
        if "vision_tower" in name:
            p.requires_grad_(False)
        elif "multi_modal_projector" in name:
            p.requires_grad_(True)
        else:
            p.requires_grad_(stage == "2")


def training_args(cfg: TrainConfig, output_dir: Path, *, num_workers: int = 0, deepspeed: str | None = None,
                  fsdp_config: str | None = None) -> TrainingArguments:
    """TrainConfig -> TrainingArguments; shared by the train-base and finetune recipes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    precision = resolve_precision(cfg.precision)
    on_cpu = device() == "cpu"
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps(world),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of all steps
        weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=precision == "bf16",
        use_cpu=on_cpu,
        ddp_backend="gloo" if on_cpu and world > 1 else None,
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        dataloader_num_workers=num_workers,
        remove_unused_columns=False,
        report_to=cfg.report_to,
        run_name=output_dir.name,
        disable_tqdm=True,  # ProgressLines prints progress that log files can show too
        deepspeed=deepspeed,
        fsdp="full_shard auto_wrap" if fsdp_config else "",
        fsdp_config=fsdp_config,
    )


def _prepare_stage(stage: str, data: str, model, processor, model_cfg: ModelConfig, data_cfg: DataConfig,
                   out: Path) -> LlavaDataset:
    template = "plain" if stage == "1" else model_cfg.template
    problems: list = []
    rows = load_rows(data, image_folder=data_cfg.image_folder, problems=problems)
    examples, bad = prepare(rows, processor.tokenizer, template=template,
                            image_token_id=model.config.image_token_id,
                            num_image_tokens=model.config.image_seq_length,
                            max_length=model_cfg.max_length, truncate=data_cfg.truncate)
    problems += bad
    if problems:
        if not data_cfg.skip_invalid:
            raise DataError(report_problems(problems, what=f"stage {stage} data {data}"))
        write_rejects(problems, out / f"rejected-stage{stage}.jsonl")
        log.warning("stage %s: skipped %d invalid row(s); see %s", stage, len(problems),
                    out / f"rejected-stage{stage}.jsonl")
    if not examples:
        raise DataError(f"stage {stage} data {data}: no usable rows")
    log.info("stage %s: %d rows (%d with images)", stage, len(examples), sum(e.has_image for e in examples))
    return LlavaDataset(examples, processor.image_processor)


def _save_model(trainer, processor, target: Path, info: RunInfo, *, into_existing: bool = False) -> None:
    """Write a model directory so that no reader ever sees a half-written one.

    Every process calls `trainer.save_model` (ZeRO-3 and FSDP gather shards there) into one
    staging folder; the main process then renames a fresh directory into place, or, for the run
    root (`into_existing`, which already holds checkpoints and metrics), moves the files in one
    by one, weights first and `config.json`, `vlx_run.json` last: `config.json` never exists
    without its weights.
    """
    main = trainer.is_world_process_zero()
    staging = target / ".staging-model" if into_existing else target.parent / f".{target.name}.staging"
    if main:
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))
    trainer.accelerator.wait_for_everyone()
    if main:
        processor.save_pretrained(str(staging))
        info.save(staging)
        if into_existing:
            for name in sorted(os.listdir(staging), key=lambda n: (n == "config.json", n == "vlx_run.json")):
                os.replace(staging / name, target / name)
            shutil.rmtree(staging)
        else:
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
    trainer.accelerator.wait_for_everyone()


def train_base(model_cfg: ModelConfig, data_cfg: DataConfig, stage_cfgs: dict[str, TrainConfig], out: str | Path,
               *, stages: tuple[str, ...] = ("1", "2"), resume: bool = False, init_from: str | None = None,
               deepspeed: str | None = None, fsdp_config: str | None = None) -> Path:
    """Run the requested LLaVA-1.5 stages; returns the output directory."""
    # 1. Config: resolved and written first, so a run directory always says how it was made.
    out = Path(out)
    model_cfg = resolve(model_cfg)
    data_for = {"1": data_cfg.stage1_data, "2": data_cfg.stage2_data}
    for s in stages:
        if not data_for[s]:
            raise ConfigError(f"stage {s} needs --stage{s}-data")
        tracking.check_report_to(stage_cfgs[s].report_to)
    if out.exists() and (out / "vlx_run.json").exists() and not resume:
        raise FileExistsError(f"{out} already holds a finished run; choose another --out or pass --resume")
    out.mkdir(parents=True, exist_ok=True)
    # Absolute paths: `vlx train-base --config RUN/config.yaml --out NEW` replays the run from any folder.
    data_recorded = to_dict(data_cfg)
    for key in ("stage1_data", "stage2_data", "image_folder", "feature_cache"):
        if data_recorded.get(key) and Path(data_recorded[key]).exists():
            data_recorded[key] = str(Path(data_recorded[key]).resolve())
    resolved = {"model": to_dict(model_cfg), "data": data_recorded,
                **{STAGES[s]: to_dict(c) for s, c in stage_cfgs.items()}, "stages": list(stages)}
    (out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))

    # 2. Model and processor: built from the preset, or the aligned stage-1 model for stage 2.
    stage1_dir = out / "stage1"
    if "1" in stages and not (resume and (stage1_dir / "vlx_run.json").exists()):
        model, processor = build_llava(model_cfg)
        if model_cfg.projector_init:
            try:
                load_projector(model, model_cfg.projector_init)
            except ValueError as e:
                raise ConfigError(str(e)) from e
    else:
        source = Path(init_from) if init_from else stage1_dir
        if not (source / "config.json").exists():
            raise ConfigError(f"stage 2 starts from a stage-1 model: {source} has none; run stage 1 first "
                              "(--stage both) or pass --init-from DIR")
        model, processor = load_llava(source)
        stages = tuple(s for s in stages if s != "1") if "1" in stages else stages
    if model.config._attn_implementation != attn_implementation():
        model.set_attn_implementation(attn_implementation())

    # 3. Data: every stage validated and tokenized before any training starts.
    datasets = {s: _prepare_stage(s, data_for[s], model, processor, model_cfg, data_cfg, out) for s in stages}
    one_row = packs_into_one_row(model) if data_cfg.packing else False  # an unsupported attention fails here

    # 4. One Trainer per stage; checkpoints under OUT/checkpoints/stageN.
    for s in stages:
        set_trainable(model, s)
        log.info("stage %s trainable parameters: %s", s, trainable_summary(model))
        cfg = stage_cfgs[s]
        tracking.configure(cfg.report_to, out, STAGES[s])
        ckpt_dir = out / "checkpoints" / STAGES[s]
        args = training_args(cfg, ckpt_dir, num_workers=data_cfg.num_workers, deepspeed=deepspeed,
                             fsdp_config=fsdp_config)
        dataset = datasets[s]
        if data_cfg.feature_cache:  # filled by LlavaTrainer.train: one tower pass per new image
            dataset = CachedFeatureDataset(dataset, FeatureCache(data_cfg.feature_cache, model, processor.image_processor,
                                                                 precision=resolve_precision(cfg.precision)))
        trainer = LlavaTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            # Logits only where the next token is supervised, packed or not (the same loss, tested).
            data_collator=(PackingCollator(processor.tokenizer.pad_token_id, one_row, supervised_logits=True)
                           if data_cfg.packing else Collator(processor.tokenizer.pad_token_id, supervised_logits=True)),
            compute_loss_func=supervised_loss,
            projector_lr=cfg.projector_lr,
            processor=processor,
            modality_lengths=dataset.lengths if data_cfg.group_by_modality_length else None,
            callbacks=[MetricsLogger(out / "metrics.jsonl", STAGES[s]), ProgressLines(f"train-base stage {s}")],
        )
        last = get_last_checkpoint(str(ckpt_dir)) if resume and ckpt_dir.is_dir() else None
        trainer.train(resume_from_checkpoint=last)
        model = trainer.model

        # 5. Save: stage 1 to OUT/stage1, the last stage also to OUT itself.
        template = "plain" if s == "1" else model_cfg.template
        if s == "1":
            _save_model(trainer, processor, stage1_dir, RunInfo(kind="base", template=model_cfg.template,
                                                                 extra={"stage": 1}))
        if s == stages[-1]:
            _save_model(trainer, processor, out, RunInfo(kind="base", template=model_cfg.template,
                                                         extra={"stage": int(s), "trained_template": template}),
                        into_existing=True)

    if (out / "metrics.jsonl").exists():
        plot_metrics(out / "metrics.jsonl", out / "loss.png", title=f"vlx train-base ({model_cfg.preset})")
    return out
