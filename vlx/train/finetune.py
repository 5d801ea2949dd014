"""`vlx finetune --schema templates/poi.py --base runs/base --data rows.jsonl --out runs/poi`

Schema-driven LoRA fine-tuning (LLaVA's `finetune_task_lora.sh`: LoRA r 128, alpha 256 on every
Linear of the LLM at lr 2e-4, the projector trained fully at 2e-5, the vision tower frozen).

The schema is the contract. Every target is validated against it before training and trained
on as its canonical serialization, the exact text the constrained decoder produces. Each
extraction question carries the task's response-format prompt (derived from the schema); chat
conversations replayed alongside carry none, which is what lets one model answer in terse JSON
when asked to extract and in prose otherwise (LLaVA-1.5's format-prompt finding).

Output `OUT/`: `adapter/` (peft; the projector rides along as `modules_to_save`), `schema.py`,
`schema.json`, `format_prompt.txt`, `config.yaml`, `metrics.jsonl` (loss per source, held-out
schema-valid rate and field accuracy), `loss.png`, `vlx_run.json`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import torch
import yaml
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from vlx.config import ConfigError, FinetuneDataConfig, LoraConfig, TrainConfig, to_dict
from vlx.data.dataset import Collator, LlavaDataset, report_problems
from vlx.data.decisions import decision_weights
from vlx.data.formats import DataError, Row, load_rows
from vlx.data.samples import SampleEncoder
from vlx.data.vlm_data import VlmDataset
from vlx.model.vlm import check_pixel_budget, set_pixel_budget
from vlx.device import device, resolve_precision
from vlx.model.build import ModelLoadError, resolve_checkpoint
from vlx.model.families import Family, connector_modules, family_of, family_of_checkpoint, lora_targets, training_template
from vlx.model.llava import IMAGE_TOKEN
from vlx.plot import plot_metrics
from vlx.run import RunInfo
from vlx.run import max_length as run_max_length
from vlx.schema import check_supported, format_prompt, json_schema, load_schema, validate_rows
from vlx.train import tracking
from vlx.train.base import training_args
from vlx.train.dropout import sparse_lora_dropout
from vlx.data.packing import PackingCollator, mrope_index, packs_into_one_row, supervised_loss
from vlx.train.trainer import LlavaTrainer, MetricsLogger, ProgressLines, trainable_summary

log = logging.getLogger(__name__)

SOURCES = ("extraction", "chat")


def attach_lora(model, cfg: LoraConfig, family: Family | None = None, *, frozen_dtype=None):
    """LoRA on the language model's Linear layers (the family's pattern: never the vision tower, the
    connector or lm_head), the connector trained fully beside it (`modules_to_save`). `frozen_dtype`
    (bf16 training): the frozen weights under LoRA are kept in it (`cast_frozen_bases`)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    family = family or family_of(model.config)
    targets = lora_targets(model, family)
    if not targets:
        raise ModelLoadError(f"found no Linear layers matching {family.lora_pattern} to put LoRA on")
    peft_cfg = PeftLoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, bias="none",
        modules_to_save=connector_modules(model, family) if cfg.train_projector else None,
    )
    for p in model.parameters():
        p.requires_grad_(False)
    model = get_peft_model(model, peft_cfg)
    sparse_lora_dropout(model)
    if frozen_dtype is not None:
        cast_frozen_bases(model, frozen_dtype)
    return model


def cast_frozen_bases(model, dtype) -> None:
    """The frozen Linear weights under LoRA in `dtype`. Under bf16 autocast every matmul casts them to bf16
    anyway (the same numbers, the same loss and gradients: tested); kept there, the step skips that copy
    of the whole language model and holds half their memory. The model then runs under autocast only."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer) and isinstance(module.base_layer, torch.nn.Linear):
            module.base_layer.weight.data = module.base_layer.weight.data.to(dtype)


def _check_qlora(cfg: LoraConfig) -> None:
    if not cfg.load_in_4bit:
        return
    import importlib.util

    if device() != "cuda" or importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("--load-in-4bit (QLoRA) needs a CUDA GPU and `pip install bitsandbytes`; "
                          "drop the flag to fine-tune in full precision here")


def _load_base(base: Path, lora: LoraConfig):
    if lora.load_in_4bit:
        from transformers import AutoProcessor, BitsAndBytesConfig, LlavaForConditionalGeneration
        from peft import prepare_model_for_kbit_training

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=["vision_tower",
                                                                                                 "multi_modal_projector",
                                                                                                 "lm_head"])
        from vlx.model import trust

        trust.check_dir(base, "base model")
        model = LlavaForConditionalGeneration.from_pretrained(base, quantization_config=quant, **trust.hub_kwargs())
        return (prepare_model_for_kbit_training(model),
                AutoProcessor.from_pretrained(base, trust_remote_code=trust.trust_remote_code()))
    from vlx.model.vlm import load_checkpoint

    return load_checkpoint(base, use="finetune")


def _extraction_rows(report, fmt: str) -> list[Row]:
    """Validated targets -> LLaVA rows: `<image>\\n[prompt\\n]format prompt` -> canonical JSON.

    The human turn is built exactly as `Extractor.prompt` builds it at inference.
    """
    rows = []
    for r in report.rows:
        question = "\n".join(p for p in (r.prompt, fmt) if p)
        rows.append(Row(origin=f"{report.source}:row {r.row}", image=str(r.image), source="extraction",
                        conversations=[{"from": "human", "value": f"{IMAGE_TOKEN}\n{question}"},
                                       {"from": "gpt", "value": r.text}]))
    return rows


def weigh_decisions(examples: list, rows: list[Row], tokenizer, weight: float, string_ends: bool = False) -> None:
    """Give the extraction examples' decision tokens (`vlx.data.decisions`; with `string_ends`, also the
    tokens that close string values) loss weight `weight`; chat rows keep plain cross-entropy.
    `examples` are `rows` encoded, in order."""
    for ex, row in zip(examples, rows, strict=True):
        if row.source != "extraction":
            continue
        if ex.origin != row.origin:
            raise RuntimeError(f"example {ex.origin} out of step with row {row.origin}")
        answer = row.conversations[-1]["value"]
        try:
            ex.weights = decision_weights(tokenizer, ex.input_ids, ex.labels, answer, weight, string_ends)
        except ValueError as e:
            raise DataError(f"{row.origin}: cannot place the decision weights: {e}") from None


def _chat_rows(cfg: FinetuneDataConfig, n_extraction: int, out: Path, seed: int, *,
               images_only: bool = False) -> list[Row]:
    """Chat-replay rows: `--chat-data`, else vlx's own synthetic chat (its rows with an image alone where
    the checkpoint reads an image with every text, `images_only`: InstructBLIP)."""
    n = round(cfg.chat_ratio * n_extraction)
    if n == 0:
        return []
    path = cfg.chat_data
    if path is None:
        from vlx.data.synth import synth_chat

        # Half of vlx's chat sources carry an image (`CHAT_SOURCES`): drawing four times as many rows leaves
        # about twice `n` of them to sample from.
        path = synth_chat(out / "chat-replay", max(n, 16) * (4 if images_only else 1), seed=seed + 1, image_size=224)
    rows = load_rows(path, problems=(problems := []))
    if problems:
        raise DataError(report_problems(problems, what=f"chat data {path}"))
    if images_only and cfg.chat_data is None:
        rows = [r for r in rows if r.image is not None]
        log.info("chat replay: %d of vlx's chat rows with an image (this checkpoint reads one with every text)",
                 len(rows))
    for r in rows:
        r.source, r.format_prompt = "chat", None
    rng = random.Random(seed)
    return rng.sample(rows, n) if n <= len(rows) else [rng.choice(rows) for _ in range(n)]


class ExtractionEval(TrainerCallback):
    """Schema-valid rate and per-field accuracy on held-out rows, each epoch and at the end; beside
    them, every row's prediction, target and differing fields in `OUT/samples.jsonl` (and the tracker).

    Decoding is capped at 1.5x the longest held-out answer (in tokens): the schema's own budget
    admits thousands of tokens, which an undertrained model spends on rambling strings. A row
    that cannot close within the cap counts as not schema-valid.
    """

    def __init__(self, processor, Schema, fmt: str, template: str, rows, out: Path, *, precision: str = "fp32"):
        self.processor, self.Schema, self.fmt, self.template = processor, Schema, fmt, template
        self.precision = precision  # bf16: the frozen weights are bf16 (`cast_frozen_bases`), decode under autocast
        self.rows, self.metrics_path, self.samples_path = rows, out / "metrics.jsonl", out / "samples.jsonl"
        self.extractor = None
        self.last_step = -1
        self.trackers: list = []
        """The trainer's callbacks (set once it is built): tracker integrations get the sample table."""

    def _run(self, model, step: int, is_main: bool) -> None:
        from vlx.api import Extractor
        from vlx.decode.generate import answer_cap
        from vlx.eval.fields import field_metrics

        if not self.rows or not is_main or step == self.last_step:
            return
        self.last_step = step
        if self.extractor is None:
            self.extractor = Extractor(model, self.processor, template=self.template, Schema=self.Schema,
                                       format_prompt=self.fmt,
                                       max_new_tokens=answer_cap(self.processor.tokenizer, [r.text for r in self.rows]))
        import contextlib

        was_training = model.training
        model.eval()
        autocast = (torch.autocast(model.device.type, dtype=torch.bfloat16) if self.precision == "bf16"
                    else contextlib.nullcontext())
        with autocast:
            preds = self.extractor.extract_many([str(r.image) for r in self.rows])
        model.train(was_training)
        report = field_metrics([p if isinstance(p, self.Schema) else None for p in preds],
                               [r.target for r in self.rows], self.Schema)
        entry = {"stage": "finetune-eval", "step": step, "schema_valid_rate": report["schema_valid_rate"]}
        for path, f in report["fields"].items():
            if "accuracy" in f:
                entry[f"acc/{path}"] = round(f["accuracy"], 4)
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
        samples = tracking.sample_rows([r.image for r in self.rows], [p if isinstance(p, self.Schema) else None
                                                                      for p in preds], [r.target for r in self.rows], step)
        tracking.write_samples(samples, self.samples_path)
        tracking.log_samples(self.trackers, samples, {k: v for k, v in entry.items() if k not in ("stage", "step")}, step)
        log.info("held-out: schema-valid %.1f%%, %s", 100 * entry["schema_valid_rate"],
                 ", ".join(f"{k[4:]} {v:.2f}" for k, v in entry.items() if k.startswith("acc/")))

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._run(model, state.global_step, state.is_world_process_zero)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._run(model, state.global_step, state.is_world_process_zero)


def finetune(base: str | Path, schema: str | Path, data_cfg: FinetuneDataConfig, train_cfg: TrainConfig,
             lora_cfg: LoraConfig, out: str | Path, *, schema_class: str | None = None,
             resume: bool = False, deepspeed: str | None = None) -> Path:
    """LoRA-fine-tune `base` on schema extraction rows with chat replay; returns the run directory."""
    # 1. Config and schema: the contract is checked before anything heavy loads.
    base, out, schema = resolve_checkpoint(base).resolve(), Path(out), Path(schema)
    _check_qlora(lora_cfg)
    tracking.check_report_to(train_cfg.report_to)
    Schema = load_schema(schema, schema_class)
    check_supported(Schema)
    fmt = data_cfg.format_prompt if data_cfg.format_prompt is not None else format_prompt(Schema, data_cfg.task, style=data_cfg.prompt_style)
    if not data_cfg.data:
        raise ConfigError("--data is required: a JSONL file of {\"image\", \"target\"} rows")
    if out.exists() and (out / "vlx_run.json").exists() and not resume:
        raise FileExistsError(f"{out} already holds a finished run; choose another --out or pass --resume")
    base_info = RunInfo.load(base)
    if base_info is None and not (base / "config.json").exists():
        raise ModelLoadError(f"--base {base}: not a vlx run or LLaVA checkpoint (no config.json)")
    family = family_of_checkpoint(base)  # a family vlx cannot fine-tune yet is refused before the data is read
    check_pixel_budget(family, data_cfg.min_pixels, data_cfg.max_pixels)
    if data_cfg.packing and not family.packing:
        raise ConfigError(f"--packing is not available for {family.model_type!r} checkpoints yet ({family.note}); "
                          "drop the flag to train with padded batches")

    # 2. Data: every extraction row validated (all problems at once), then tokenized with the chat rows.
    report = validate_rows(data_cfg.data, Schema, image_folder=data_cfg.image_folder)
    out.mkdir(parents=True, exist_ok=True)
    if report.errors:
        if not data_cfg.skip_invalid:
            raise DataError(report.format() + "\nFix them, or pass --skip-invalid to train on the rest "
                                              "(the rejects are written to rejected.jsonl).")
        with open(out / "rejected.jsonl", "w", encoding="utf-8") as f:
            for e in report.errors:
                f.write(json.dumps(e.to_dict() | {"line": report.bad_lines.get(e.row)}, ensure_ascii=False) + "\n")
        log.warning("skipped %d invalid row(s) of %s; see %s", len({e.row for e in report.errors}),
                    data_cfg.data, out / "rejected.jsonl")
    if not report.rows:
        raise DataError(f"{data_cfg.data}: no valid rows to train on")
    if data_cfg.val_data:
        val_report = validate_rows(data_cfg.val_data, Schema, image_folder=data_cfg.image_folder)
        if val_report.errors:
            raise DataError(val_report.format())
        train_rows, val_rows = report.rows, val_report.rows[: data_cfg.val_max]
    else:
        shuffled = random.Random(train_cfg.seed).sample(report.rows, len(report.rows))
        n_val = min(data_cfg.val_max, int(len(shuffled) * data_cfg.val_fraction))
        train_rows, val_rows = shuffled[n_val:], shuffled[:n_val]
    report.rows = train_rows

    # 3. Model: the base, frozen, with LoRA on the LLM and the projector trainable.
    model, processor = _load_base(base, lora_cfg)
    family = family_of(model.config)
    set_pixel_budget(processor, family, data_cfg.min_pixels, data_cfg.max_pixels)
    # `processor` families train on the checkpoint's own template (template None, as `vlx extract` prompts).
    template = base_info.template if base_info else training_template(processor) if family.inputs == "template" else None
    from transformers import set_seed

    set_seed(train_cfg.seed)  # LoRA's initial A matrices: the same adapter for the same seed, in any process
    precision = resolve_precision(train_cfg.precision)
    model = attach_lora(model, lora_cfg, family, frozen_dtype=torch.bfloat16 if precision == "bf16" else None)
    one_row = packs_into_one_row(model) if data_cfg.packing else False  # an unsupported attention fails here
    log.info("trainable parameters: %s", trainable_summary(model))

    from vlx.data.vlm_data import needs_image

    images_only = family.inputs == "processor" and needs_image(processor)
    rows = _extraction_rows(report, fmt) + _chat_rows(data_cfg, len(train_rows), out, train_cfg.seed,
                                                      images_only=images_only)
    max_length = run_max_length(base)
    encoder = SampleEncoder.for_model(model, processor, template=template, max_length=max_length)
    examples, problems = encoder.prepare(rows, spell=tuple(data_cfg.spell_fields))
    if problems:
        raise DataError(report_problems(problems, what="fine-tuning data") +
                        f"\n(max_length={max_length} from the base run; the format prompt is "
                        f"{len(processor.tokenizer(fmt)['input_ids'])} tokens)")
    if data_cfg.decision_weight != 1:
        weigh_decisions(examples, rows, processor.tokenizer, data_cfg.decision_weight, data_cfg.weigh_string_ends)
    dataset = (VlmDataset(examples, processor) if family.inputs == "processor"
               else LlavaDataset(examples, processor.image_processor))
    log.info("%d extraction rows, %d chat rows, %d held out", len(train_rows),
             len(examples) - len(train_rows), len(val_rows))

    # 4. Files that describe the run, written before training so a crashed run still says what it was.
    # Absolute paths: `vlx finetune --config RUN/config.yaml --out NEW` replays the run from any folder.
    recorded = to_dict(data_cfg)
    for key in ("data", "val_data", "chat_data", "image_folder"):
        if recorded.get(key) and Path(recorded[key]).exists():
            recorded[key] = str(Path(recorded[key]).resolve())
    (out / "config.yaml").write_text(yaml.safe_dump(
        {"base": str(base), "schema": str(schema.resolve()), "schema_class": Schema.__name__, "template": template,
         "data": recorded, "train": to_dict(train_cfg), "lora": to_dict(lora_cfg)}, sort_keys=False))
    shutil.copyfile(schema, out / "schema.py")
    (out / "schema.json").write_text(json.dumps(json_schema(Schema), indent=2, ensure_ascii=False) + "\n")
    (out / "format_prompt.txt").write_text(fmt, encoding="utf-8")
    if family.inputs == "processor":  # its pixel budget and template travel with the run (eval, extract, export)
        processor.save_pretrained(out)

    # 5. Train.
    tracking.configure(train_cfg.report_to, out, "finetune")
    evaluator = ExtractionEval(processor, Schema, fmt, template, val_rows, out, precision=precision)
    ckpt_dir = out / "checkpoints"
    args = training_args(train_cfg, ckpt_dir, deepspeed=deepspeed)
    trainer = LlavaTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        # Logits only where the next token is supervised: the answers, a small share of each sample.
        data_collator=(PackingCollator(processor.tokenizer.pad_token_id, one_row, supervised_logits=True, sources=SOURCES,
                                       rope_index=mrope_index(model) if family.mrope else None)
                       if data_cfg.packing else
                       Collator(processor.tokenizer.pad_token_id, sources=SOURCES, supervised_logits=True)),
        compute_loss_func=supervised_loss,
        projector_lr=train_cfg.projector_lr,
        processor=processor,
        modality_lengths=dataset.lengths,
        source_names=SOURCES,
        callbacks=[MetricsLogger(out / "metrics.jsonl", "finetune"), ProgressLines("finetune"),
                   evaluator],
    )
    evaluator.trackers = trainer.callback_handler.callbacks
    last = get_last_checkpoint(str(ckpt_dir)) if resume and ckpt_dir.is_dir() else None
    trainer.train(resume_from_checkpoint=last)

    # 6. Save the adapter (staged, renamed into place), then vlx_run.json last: the run is complete.
    if trainer.is_world_process_zero():
        staging = out / ".staging-adapter"
        shutil.rmtree(staging, ignore_errors=True)
        trainer.model.save_pretrained(str(staging))
        if (out / "adapter").exists():
            shutil.rmtree(out / "adapter")
        os.replace(staging, out / "adapter")
        plot_metrics(out / "metrics.jsonl", out / "loss.png", title=f"vlx finetune ({Schema.__name__})")
        RunInfo(kind="finetune", template=template, base=str(base), schema_class=Schema.__name__,
                extra={"format_prompt": "override" if data_cfg.format_prompt is not None else "derived",
                       "chat_ratio": data_cfg.chat_ratio}).save(out)
    trainer.accelerator.wait_for_everyone()
    return out

