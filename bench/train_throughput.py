"""`python bench/train_throughput.py [--quick] [--steps 6] [--samples 96]`

Training throughput, vlx against TRL's `SFTTrainer`, on the same model, data, global batch and
number of steps, in one invocation. Every configuration runs in its own process (so peak memory is
its own) from the same saved initial weights:

- stage 2 (visual instruction tuning: projector + LLM train), on a synthetic LLaVA-style mixture
  (multi-turn conversations, short answers, multiple choice, text-only rows):
  - `trl`: `SFTTrainer` on conversational rows with images, configured as TRL's VLM docs say
    (`max_length=None` so image tokens are never cut, the processor as processing class,
    `assistant_only_loss=True` with a `{% generation %}` template so the same answer tokens are
    supervised); gradient checkpointing and precision set like vlx's (TRL's defaults would turn
    checkpointing on, which only slows it down here);
  - `vlx`: `LlavaTrainer` as `vlx train-base` runs it by default (modality-length grouping);
  - `vlx+packing`: the same with `--packing`;
  - `vlx+packing+cache`: also `--feature-cache`, the cache filled beforehand (its fill time is printed);
- the LoRA fine-tune (LoRA on every Linear of the LLM, the projector trained fully beside it), on
  street-scene extraction rows for `templates/poi.py` rendered as `vlx finetune` renders them, from
  the same initial weights:
  - `trl-lora`: `SFTTrainer` with `peft_config` (the same LoRA targets, rank, alpha and dropout,
    `modules_to_save=["multi_modal_projector"]`), answers supervised as above;
  - `vlx-lora`: `LlavaTrainer` as `vlx finetune` runs it (supervised-only logits, per-source loss);
  - `vlx-lora+packing`: the same with `--packing`;
  - `vlx-lora-dense-dropout`: `vlx-lora` with peft's own `nn.Dropout` before each adapter instead of
    vlx's masks drawn as geometric gaps (`vlx.train.dropout`): what that change alone is worth;
- the same LoRA fine-tune on a Qwen2-VL shape (`--qwen`: SmolLM2-135M's text shape and 49k
  tokenizer in a Qwen2-VL with a 4-block vision tower, random weights, 448 px images: 256 image
  tokens through the processor, as the smol LLaVA has), the connector `visual.merger` trained beside:
  - `trl-qwen-lora`: `SFTTrainer` with `peft_config`, the checkpoint's chat template with
    `{% generation %}` marks so the same answers and `<|im_end|>` are supervised;
  - `vlx-qwen-lora`: as `vlx finetune` runs a Qwen checkpoint (processor-side samples, supervised-only logits);
  - `vlx-qwen-lora+packing`: the same with `--packing` (4-row mRoPE position ids);
  - `--qwen-images mixed`: the same rows with their images resized to photo-like sizes and aspect ratios
    (64-300 image tokens each), as dynamic resolution hands a Qwen fine-tune real photos;
- stage 1 (alignment: only the projector trains) over several epochs, with and without the feature
  cache (and with cache and packing); throughput is taken from the second epoch on.

Samples/s and tokens/s (real tokens, image tokens included, no padding) are measured from the end of
the first optimizer step to the end of the last, so model loading and warm-up are excluded for
every contender alike. Samples per CPU-second (the process's CPU time over the same span) is the
steadier figure on a machine shared with other jobs, where wall time depends on their load; run
with `OMP_NUM_THREADS=1` there so that it counts one thread's work. Peak memory is the process's maximum RSS (CPU) or CUDA peak allocation.
The final loss is the mean of the last three logged steps (each over a different batch, so it is
compared with its spread across those steps).

The model is the `smol` preset (SmolLM2-135M + the 5-layer CLIP at 224 px that ships with vlx,
256 image tokens). `--quick` uses the `tiny` preset.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

STAGE2 = ("trl", "vlx", "vlx+packing", "vlx+packing+cache")
FINETUNE = ("trl-lora", "vlx-lora", "vlx-lora+packing")
FINETUNE_EXTRA = ("vlx-lora-dense-dropout",)  # by --only
LORA = dict(r=64, alpha=128, dropout=0.05)  # the demo's LoRA for the 135M smol LLM
STAGE1 = ("stage1", "stage1+cache", "stage1+packing+cache")
QWEN = ("trl-qwen-lora", "vlx-qwen-lora", "vlx-qwen-lora+packing")
QWEN_PIXELS = 448 * 448  # 32 x 32 patches, merged 2 x 2: 256 image tokens, as many as the smol LLaVA's
# `--qwen-images mixed`: the street scenes resized to photo-like sizes and aspect ratios, as a Qwen fine-tune
# sees them under dynamic resolution: 64 to 300 image tokens (28 px each), mean about 200.
QWEN_MIXED_SIZES = [(224, 224), (448, 448), (672, 336), (336, 672), (560, 420), (280, 280), (420, 560), (392, 308)]
QWEN_MIXED_PIXELS = (224 * 224, 672 * 336)


# --- shared setup (parent process) -------------------------------------------------------------


def make_model(work: Path, quick: bool) -> Path:
    """Build the preset once and save it: every run starts from these exact weights."""
    from vlx import ModelConfig, build_llava

    init = work / "init"
    if (init / "config.json").exists():
        return init
    if quick:
        model, processor = build_llava(ModelConfig(preset="tiny"))
    else:
        model, processor = build_llava(ModelConfig(preset="smol", vision=smol_vision(work)))
    model.save_pretrained(init)
    processor.save_pretrained(init)
    return init


def make_qwen_model(work: Path, quick: bool, images: str = "fixed") -> Path:
    """A random Qwen2-VL of SmolLM2-135M's text shape around its tokenizer (tiny with `--quick`), saved once;
    its pixel budget admits `images` (`fixed`: 448 x 448 only; `mixed`: QWEN_MIXED_SIZES)."""
    from vlx.model.tiny_families import save_qwen2_vl, tiny_qwen2_vl

    path = work / ("init-qwen" if images == "fixed" else f"init-qwen-{images}")
    if (path / "config.json").exists():
        return path
    if quick:
        return tiny_qwen2_vl(path)
    from transformers import AutoTokenizer

    from vlx.model import smol

    tokenizer = AutoTokenizer.from_pretrained(smol.llm_dir())
    low, high = (QWEN_PIXELS, QWEN_PIXELS) if images == "fixed" else QWEN_MIXED_PIXELS
    return save_qwen2_vl(path, tokenizer, min_pixels=low, max_pixels=high,
                         text=dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                                   num_key_value_heads=3, mrope_section=[16, 8, 8]),
                         vision=dict(depth=4, hidden_size=256, num_heads=4, mlp=1024))


def qwen_training_template() -> str:
    """The tiny Qwen chat template with `{% generation %}` around each answer and its `<|im_end|>`."""
    from vlx.model.tiny_families import QWEN_CHAT_TEMPLATE

    old = "{{ '<|im_start|>' + message['role'] + '\n' }}{% if message['content'] is string %}"
    assert old in QWEN_CHAT_TEMPLATE
    return (QWEN_CHAT_TEMPLATE
            .replace("{{ '<|im_end|>\n' }}{% endfor %}",
                     "{% if message['role'] == 'assistant' %}{% generation %}{{ '<|im_end|>' }}{% endgeneration %}"
                     "{{ '\n' }}{% else %}{{ '<|im_end|>\n' }}{% endif %}{% endfor %}")
            .replace("{% elif part['type'] == 'text' %}{{ part['text'] }}",
                     "{% elif part['type'] == 'text' %}{% if message['role'] == 'assistant' %}{% generation %}"
                     "{{ part['text'] }}{% endgeneration %}{% else %}{{ part['text'] }}{% endif %}"))


def smol_vision(work: Path) -> str:
    """The smol tower that ships with vlx (`vlx.model.smol.shipped_tower`)."""
    from vlx.model import smol

    return str(smol.shipped_tower())


def make_data(work: Path, samples: int, image_size: int) -> dict[str, Path]:
    from vlx.data.synth import synth

    out = {}
    for kind in ("captions", "instruct"):
        d = work / kind
        if not (d / "data.json").exists():
            synth(kind, d, samples, seed=0, image_size=image_size)
        out[kind] = d / ("mixture.yaml" if kind == "instruct" else "data.json")
    if not (work / "poi" / "train.jsonl").exists():
        synth("poi", work / "poi", samples, seed=0, image_size=224, splits=(1.0, 0.0, 0.0))
    out["poi"] = work / "poi" / "train.jsonl"
    return out


def mixed_size_rows(poi: Path, out: Path) -> Path:
    """The POI rows with each image resized to the next of QWEN_MIXED_SIZES (written once under `out`)."""
    from PIL import Image

    rows_path = out / "train.jsonl"
    if rows_path.exists():
        return rows_path
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, line in enumerate(poi.read_text().splitlines()):
        row = json.loads(line)
        name = f"images/{i:05d}.png"
        Image.open(poi.parent / row["image"]).convert("RGB").resize(QWEN_MIXED_SIZES[i % len(QWEN_MIXED_SIZES)],
                                                                     Image.BICUBIC).save(out / name)
        lines.append(json.dumps({**row, "image": name}))
    rows_path.write_text("".join(line + "\n" for line in lines))
    return rows_path


def extraction_rows(path: Path):
    """The POI rows as `vlx finetune` turns them into conversations (canonical JSON answers, cue prompt)."""
    from vlx.schema import format_prompt, load_schema, validate_rows
    from vlx.train.finetune import _extraction_rows

    Schema = load_schema(Path(__file__).resolve().parent.parent / "templates" / "poi.py")
    report = validate_rows(path, Schema)
    assert report.ok, report.format()
    return _extraction_rows(report, format_prompt(Schema, style="cue"))


# --- one configuration (child process) ---------------------------------------------------------


class Clock:
    """Trainer callback: wall time and samples/tokens per optimizer step, and per epoch."""

    def __init__(self):
        self.step_end: list[float] = []
        self.step_cpu: list[float] = []
        self.epoch_start: list[float] = []
        self.epoch_end: list[float] = []
        self.epoch_cpu: list[float] = []
        self.losses: list[float] = []

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class _CB(TrainerCallback):
            def on_epoch_begin(self, args, state, control, **kw):
                clock.epoch_start.append(time.perf_counter())

            def on_epoch_end(self, args, state, control, **kw):
                clock.epoch_end.append(time.perf_counter())
                clock.epoch_cpu.append(time.process_time())

            def on_step_end(self, args, state, control, **kw):
                clock.step_end.append(time.perf_counter())
                clock.step_cpu.append(time.process_time())

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs:
                    clock.losses.append(float(logs["loss"]))

        return _CB()


def counting(trainer_cls, pad_token_id: int):
    """A subclass of `trainer_cls` that counts the real tokens of every micro-batch it trains on."""

    class Counting(trainer_cls):
        tokens_per_step: list[int] = []
        _pending = 0

        def compute_loss(self, model, inputs, *a, **kw):
            if "attention_mask" in inputs:
                self._pending += int(inputs["attention_mask"].sum())
            else:  # packed: no mask, pad tokens only in the short tails
                self._pending += int((inputs["input_ids"] != pad_token_id).sum())
            return super().compute_loss(model, inputs, *a, **kw)

    def on_step(trainer):
        trainer.tokens_per_step.append(trainer._pending)
        trainer._pending = 0

    return Counting, on_step


def run_one(name: str, args) -> dict:
    if name in QWEN:
        return run_qwen(name, args)
    from vlx.config import TrainConfig
    from vlx.data.dataset import LlavaDataset, prepare
    from vlx.data.feature_cache import CachedFeatureDataset, FeatureCache, fill_feature_cache
    from vlx.data.formats import load_rows
    from vlx.device import device, resolve_precision
    from vlx.model.build import load_llava
    from vlx.train.base import set_trainable

    torch.manual_seed(0)
    model, processor = load_llava(args.init)
    info = json.loads((Path(args.init) / "bench.json").read_text())
    template, max_length = info["template"], info["max_length"]
    stage = "1" if name.startswith("stage1") else "lora" if name in FINETUNE + FINETUNE_EXTRA else "2"
    precision = resolve_precision(args.precision)
    if stage == "lora":
        from vlx.config import LoraConfig
        from vlx.train.finetune import attach_lora

        if name == "trl-lora":
            for p in model.parameters():
                p.requires_grad_(False)
        else:  # as `vlx finetune` attaches it: in bf16, the frozen weights under LoRA kept in bf16
            model = attach_lora(model, LoraConfig(**LORA), frozen_dtype=torch.bfloat16 if precision == "bf16" else None)
            if name == "vlx-lora-dense-dropout":
                from vlx.train.dropout import SparseDropout

                for module in model.modules():
                    for key, drop in getattr(module, "lora_dropout", {}).items():
                        if isinstance(drop, SparseDropout):
                            module.lora_dropout[key] = torch.nn.Dropout(drop.p)
    else:
        set_trainable(model, stage)
    epochs = args.stage1_epochs if stage == "1" else 1
    cfg = TrainConfig(learning_rate={"1": 1e-3, "2": 5e-5, "lora": 1e-3}[stage], global_batch_size=args.global_batch,
                      per_device_batch_size=args.micro_batch, epochs=epochs,
                      max_steps=-1 if stage == "1" else args.steps, warmup_ratio=0.0, precision=precision,
                      logging_steps=1, seed=0)
    clock = Clock()
    pad = processor.tokenizer.pad_token_id
    work = Path(args.work)
    out_dir = work / "out" / name
    data = {"1": args.captions, "2": args.instruct, "lora": args.poi}[stage]
    fill_s = None
    rows = extraction_rows(Path(data)) if stage == "lora" else load_rows(data)

    if name in ("trl", "trl-lora"):
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        from vlx.data.dataset import open_image, row_turns

        records = []
        for row in rows:
            turns = row_turns(row, template)
            messages = []
            for k, t in enumerate(turns):
                user = t.user
                if k == 0 and row.image is not None:
                    user = user.replace("<image>\n", "", 1).replace("<image>", "", 1)
                    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user}]})
                else:
                    messages.append({"role": "user", "content": [{"type": "text", "text": user}]})
                messages.append({"role": "assistant", "content": [{"type": "text", "text": t.assistant}]})
            records.append({"messages": messages,
                            "images": [open_image(row.image)] if row.image is not None else []})
        dataset = Dataset.from_list(records)
        processor.chat_template = training_template(template)
        sft = SFTConfig(
            output_dir=str(out_dir), per_device_train_batch_size=cfg.per_device_batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps(1), learning_rate=cfg.learning_rate,
            max_steps=cfg.max_steps, num_train_epochs=cfg.epochs, lr_scheduler_type=cfg.lr_scheduler,
            warmup_steps=0, weight_decay=0.0, logging_steps=1, save_strategy="no", seed=0, data_seed=0,
            bf16=precision == "bf16", use_cpu=device() == "cpu", report_to="none",
            max_length=None, assistant_only_loss=True, gradient_checkpointing=cfg.gradient_checkpointing,
            dataloader_num_workers=0,
        )
        peft = None
        if stage == "lora":
            from peft import LoraConfig as PeftLoraConfig

            targets = [n for n, m in model.named_modules()
                       if isinstance(m, torch.nn.Linear) and ".language_model." in f".{n}."]
            peft = PeftLoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                  target_modules=targets, bias="none", modules_to_save=["multi_modal_projector"])
        cls, on_step = counting(SFTTrainer, pad)
        trainer = cls(model=model, args=sft, train_dataset=dataset, processing_class=processor,
                      callbacks=[clock.callback()], peft_config=peft)
    else:
        template_used = "plain" if stage == "1" else template
        examples, bad = prepare(rows, processor.tokenizer, template=template_used,
                                image_token_id=model.config.image_token_id,
                                num_image_tokens=model.config.image_seq_length, max_length=max_length)
        assert not bad, bad[:3]
        dataset = LlavaDataset(examples, processor.image_processor)
        if "cache" in name:
            cache = FeatureCache(work / "features", model, processor.image_processor, precision=precision)
            dataset = CachedFeatureDataset(dataset, cache)
            t0 = time.perf_counter()
            fill_feature_cache(dataset, model)
            fill_s = time.perf_counter() - t0
        sources = ("extraction", "chat") if stage == "lora" else None  # vlx finetune logs the loss per source
        trainer, on_step = vlx_trainer(model, cfg, out_dir, dataset, clock, pad, sources, packing="packing" in name)

    return _measure(name, trainer, on_step, clock, args, epochs=epochs, stage=stage, precision=precision, fill_s=fill_s)


def _measure(name, trainer, on_step, clock, args, *, epochs: int, stage: str, precision: str, fill_s) -> dict:
    """Train, then the figures of the measured span (see the module doc)."""
    from transformers import TrainerCallback

    from vlx.device import device

    class StepTokens(TrainerCallback):
        def on_step_end(self, *a, **kw):
            on_step(trainer)

    trainer.add_callback(StepTokens())
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()

    steps = len(clock.step_end)
    gb = args.global_batch
    if stage == "1":  # from the second epoch on
        per_epoch = steps // epochs
        span = clock.epoch_end[-1] - clock.epoch_end[0]
        cpu = clock.epoch_cpu[-1] - clock.epoch_cpu[0]
        measured_steps = steps - per_epoch
        tokens = sum(trainer.tokens_per_step[per_epoch:])
        first_epoch_s = clock.epoch_end[0] - clock.epoch_start[0]
    else:
        span = clock.step_end[-1] - clock.step_end[0]
        cpu = clock.step_cpu[-1] - clock.step_cpu[0]
        measured_steps = steps - 1
        tokens = sum(trainer.tokens_per_step[1:])
        first_epoch_s = None
    peak = (torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    last = clock.losses[-3:]
    return {"name": name, "steps": steps, "measured_steps": measured_steps, "seconds": span,
            "samples_per_s": measured_steps * gb / span, "tokens_per_s": tokens / span,
            "cpu_seconds": cpu, "samples_per_cpu_s": measured_steps * gb / cpu,
            "peak_mb": peak, "final_loss": sum(last) / len(last),
            "loss_spread": (max(last) - min(last)) / 2, "losses": clock.losses, "fill_s": fill_s,
            "first_epoch_s": first_epoch_s, "precision": precision, "device": device()}


def vlx_trainer(model, cfg, out_dir, dataset, clock, pad: int, sources, *, packing: bool, rope_index=None):
    """`LlavaTrainer` as vlx runs it by default: logits only at supervised positions, padded or packed."""
    from vlx.data.dataset import Collator
    from vlx.data.packing import PackingCollator, packs_into_one_row, supervised_loss
    from vlx.train.base import training_args
    from vlx.train.trainer import LlavaTrainer

    collator = (PackingCollator(pad, packs_into_one_row(model), supervised_logits=True, sources=sources,
                                rope_index=rope_index) if packing
                else Collator(pad, sources=sources, supervised_logits=True))
    cls, on_step = counting(LlavaTrainer, pad)
    trainer = cls(model=model, args=training_args(cfg, out_dir), train_dataset=dataset, data_collator=collator,
                  modality_lengths=dataset.lengths, callbacks=[clock.callback()],
                  compute_loss_func=supervised_loss, source_names=sources)
    trainer.args.save_strategy = "no"
    return trainer, on_step


def run_qwen(name: str, args) -> dict:
    """The LoRA fine-tune on the Qwen2-VL shape: TRL or vlx, from the same saved weights."""
    from vlx.config import LoraConfig, TrainConfig
    from vlx.data.packing import mrope_index
    from vlx.data.samples import SampleEncoder
    from vlx.data.vlm_data import VlmDataset
    from vlx.device import device, resolve_precision
    from vlx.model.families import FAMILIES, lora_targets
    from vlx.model.vlm import load_vlm
    from vlx.train.finetune import attach_lora

    torch.manual_seed(0)
    model, processor = load_vlm(args.init_qwen)
    family = FAMILIES[model.config.model_type]
    precision = resolve_precision(args.precision)
    cfg = TrainConfig(learning_rate=1e-3, global_batch_size=args.global_batch, per_device_batch_size=args.micro_batch,
                      epochs=1, max_steps=args.steps, warmup_ratio=0.0, precision=precision, logging_steps=1, seed=0)
    clock = Clock()
    pad = processor.tokenizer.pad_token_id
    out_dir = Path(args.work) / "out" / name
    rows = extraction_rows(Path(args.poi) if args.qwen_images == "fixed" else Path(args.work) / "poi-mixed" / "train.jsonl")
    if name == "trl-qwen-lora":
        from datasets import Dataset
        from peft import LoraConfig as PeftLoraConfig
        from trl import SFTConfig, SFTTrainer

        from vlx.data.dataset import open_image, row_turns
        from vlx.data.vlm_data import messages

        for p in model.parameters():
            p.requires_grad_(False)
        records = [{"messages": messages(row_turns(row, "processor")), "images": [open_image(row.image)]} for row in rows]
        processor.chat_template = qwen_training_template()
        sft = SFTConfig(
            output_dir=str(out_dir), per_device_train_batch_size=cfg.per_device_batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps(1), learning_rate=cfg.learning_rate,
            max_steps=cfg.max_steps, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=0, weight_decay=0.0,
            logging_steps=1, save_strategy="no", seed=0, data_seed=0, bf16=precision == "bf16",
            use_cpu=device() == "cpu", report_to="none", max_length=None, assistant_only_loss=True,
            gradient_checkpointing=cfg.gradient_checkpointing, dataloader_num_workers=0)
        peft = PeftLoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                              target_modules=lora_targets(model, family), bias="none", modules_to_save=["merger"])
        cls, on_step = counting(SFTTrainer, pad)
        trainer = cls(model=model, args=sft, train_dataset=Dataset.from_list(records), processing_class=processor,
                      callbacks=[clock.callback()], peft_config=peft)
    else:
        model = attach_lora(model, LoraConfig(**LORA), family,
                            frozen_dtype=torch.bfloat16 if precision == "bf16" else None)
        encoder = SampleEncoder.for_model(model.get_base_model(), processor, template=None, max_length=4096)
        examples, bad = encoder.prepare(rows)
        assert not bad, bad[:3]
        trainer, on_step = vlx_trainer(model, cfg, out_dir, VlmDataset(examples, processor), clock, pad,
                                       ("extraction", "chat"), packing=name.endswith("packing"),
                                       rope_index=mrope_index(model))
    return _measure(name, trainer, on_step, clock, args, epochs=1, stage="lora", precision=precision, fill_s=None)


def training_template(template: str) -> str:
    """vlx's chat template with `{% generation %}` around each answer and its end-of-turn token, so
    TRL's `assistant_only_loss` supervises the same tokens vlx's label masking does."""
    from vlx.data.templates import CHATML_SYSTEM, VICUNA_SYSTEM, _CONTENT

    if template == "chatml":
        return ("{%- if messages[0]['role'] != 'system' -%}{{ '<|im_start|>system\\n" + CHATML_SYSTEM
                + "<|im_end|>\\n' }}{%- endif -%}"
                "{%- for message in messages -%}{{ '<|im_start|>' + message['role'] + '\\n' }}"
                "{%- if message['role'] == 'assistant' -%}{%- generation -%}" + _CONTENT
                + "{{ '<|im_end|>' }}{%- endgeneration -%}{{ '\\n' }}"
                "{%- else -%}" + _CONTENT + "{{ '<|im_end|>\\n' }}{%- endif -%}{%- endfor -%}"
                "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}")
    if template == "vicuna_v1":
        return ("{%- for message in messages -%}"
                "{%- if loop.first -%}{{ (message['content'] if message['role'] == 'system' else '"
                + VICUNA_SYSTEM.replace("'", "\\'") + "') + ' ' }}{%- endif -%}"
                "{%- if message['role'] == 'user' -%}{{ 'USER: ' }}" + _CONTENT + "{{ ' ASSISTANT:' }}"
                "{%- elif message['role'] == 'assistant' -%}{{ ' ' }}{%- generation -%}" + _CONTENT
                + "{{ '</s>' }}{%- endgeneration -%}{%- endif -%}{%- endfor -%}")
    raise ValueError(f"no training template for {template!r}")


# --- orchestration -----------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny preset (seconds) instead of smol")
    p.add_argument("--steps", type=int, default=6, help="stage-2 optimizer steps per contender (first is warm-up)")
    p.add_argument("--samples", type=int, default=96, help="synthetic rows per stage")
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--stage1-epochs", type=int, default=3)
    p.add_argument("--image-size", type=int, default=336, help="synthetic image side (LLaVA's data: 336 and up)")
    p.add_argument("--only", default=",".join(STAGE2 + FINETUNE + STAGE1 + QWEN), help="comma-separated subset of the runs")
    p.add_argument("--precision", default="auto", help="auto (what vlx picks on this CPU), bf16 or fp32, for every contender")
    p.add_argument("--qwen-images", choices=("fixed", "mixed"), default="fixed",
                   help="Qwen contenders' images: all 448 x 448 (256 tokens each), or photo-like sizes and aspect "
                        "ratios (64-300 tokens) as dynamic resolution gives them")
    p.add_argument("--work", help="working directory (default: a temporary one)")
    p.add_argument("--json", help="write all results here")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--init", help=argparse.SUPPRESS)
    p.add_argument("--captions", help=argparse.SUPPRESS)
    p.add_argument("--instruct", help=argparse.SUPPRESS)
    p.add_argument("--poi", help=argparse.SUPPRESS)
    p.add_argument("--init-qwen", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.one:
        result = run_one(args.one, args)
        print("RESULT " + json.dumps(result))
        return 0

    work = Path(args.work or tempfile.mkdtemp(prefix="vlx-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = make_data(work, args.samples, args.image_size)
    names = args.only.split(",")
    known = STAGE2 + FINETUNE + FINETUNE_EXTRA + STAGE1 + QWEN
    if unknown := [n for n in names if n not in known]:
        p.error(f"--only: unknown run(s) {', '.join(unknown)}; known: {', '.join(known)}")
    init = make_model(work, args.quick)
    init_qwen = make_qwen_model(work, args.quick, args.qwen_images) if any(n in QWEN for n in names) else init
    if args.qwen_images == "mixed":
        mixed_size_rows(data["poi"], work / "poi-mixed")
    from vlx.model.build import resolve
    from vlx.config import ModelConfig

    preset = resolve(ModelConfig(preset="tiny" if args.quick else "smol"))
    (init / "bench.json").write_text(json.dumps({"template": preset.template, "max_length": preset.max_length}))
    print(f"setup {time.time() - t0:.0f} s; work dir {work}", file=sys.stderr)

    results = {}
    for name in names:
        cmd = [sys.executable, __file__, "--one", name, "--init", str(init), "--init-qwen", str(init_qwen), "--work", str(work),
               "--captions", str(data["captions"]), "--instruct", str(data["instruct"]), "--poi", str(data["poi"]),
               "--steps", str(args.steps), "--global-batch", str(args.global_batch),
               "--micro-batch", str(args.micro_batch), "--stage1-epochs", str(args.stage1_epochs),
               "--precision", args.precision, "--qwen-images", args.qwen_images]
        t = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"{name}: failed\n{proc.stderr[-4000:]}", file=sys.stderr)
            return 1
        results[name] = json.loads(lines[-1][len("RESULT "):])
        print(f"{name}: done in {time.time() - t:.0f} s", file=sys.stderr)

    report(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def report(results: dict, args) -> None:
    from vlx.device import cpu_flags, cpu_has_bf16

    any_result = next(iter(results.values()))
    flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in cpu_flags()) or "no AVX2"
    print(f"\npreset {'tiny' if args.quick else 'smol'}, {any_result['device']}; CPU {os.cpu_count()} cores, flags "
          f"{flags} (native bf16: {'yes' if cpu_has_bf16() else 'no'}); global batch {args.global_batch} "
          f"(micro-batch {args.micro_batch}); {args.samples} rows per stage")
    header = (f"{'run':<22}{'precision':>10}{'samples/s':>10}{'tokens/s':>10}{'samples/cpu-s':>15}{'peak MB':>9}"
              f"{'final loss':>16}  notes")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        notes = []
        if r["fill_s"] is not None:
            notes.append(f"cache fill {r['fill_s']:.1f} s")
        if r["first_epoch_s"] is not None:
            notes.append(f"epoch 1 {r['first_epoch_s']:.1f} s; measured epochs 2+")
        loss = f"{r['final_loss']:.3f}±{r['loss_spread']:.3f}"
        print(f"{name:<22}{r['precision']:>10}{r['samples_per_s']:>10.2f}{r['tokens_per_s']:>10.0f}{r['samples_per_cpu_s']:>15.2f}"
              f"{r['peak_mb']:>9.0f}{loss:>16}  " + "; ".join(notes))
    if "trl" in results:
        for name in ("vlx", "vlx+packing", "vlx+packing+cache"):
            if name in results:
                print(f"{name} / trl: {results[name]['samples_per_s'] / results['trl']['samples_per_s']:.2f}x samples/s, "
                      f"{results[name]['samples_per_cpu_s'] / results['trl']['samples_per_cpu_s']:.2f}x samples/cpu-s")
    if "trl-lora" in results:
        for name in ("vlx-lora", "vlx-lora+packing", "vlx-lora-dense-dropout"):
            if name in results:
                print(f"{name} / trl-lora: {results[name]['samples_per_s'] / results['trl-lora']['samples_per_s']:.2f}x "
                      f"samples/s, {results[name]['samples_per_cpu_s'] / results['trl-lora']['samples_per_cpu_s']:.2f}x "
                      "samples/cpu-s")
    if "trl-qwen-lora" in results:
        for name in ("vlx-qwen-lora", "vlx-qwen-lora+packing"):
            if name in results:
                print(f"{name} / trl-qwen-lora: "
                      f"{results[name]['samples_per_s'] / results['trl-qwen-lora']['samples_per_s']:.2f}x samples/s, "
                      f"{results[name]['samples_per_cpu_s'] / results['trl-qwen-lora']['samples_per_cpu_s']:.2f}x samples/cpu-s")
    if "vlx-qwen-lora" in results and "vlx-qwen-lora+packing" in results:
        print(f"vlx-qwen-lora+packing / vlx-qwen-lora: "
              f"{results['vlx-qwen-lora+packing']['samples_per_s'] / results['vlx-qwen-lora']['samples_per_s']:.2f}x samples/s")
    if "vlx-lora" in results and "vlx-lora+packing" in results:
        print(f"vlx-lora+packing / vlx-lora: "
              f"{results['vlx-lora+packing']['samples_per_s'] / results['vlx-lora']['samples_per_s']:.2f}x samples/s")
    if "vlx-lora" in results and "vlx-lora-dense-dropout" in results:
        print(f"vlx-lora / vlx-lora-dense-dropout: "
              f"{results['vlx-lora']['samples_per_s'] / results['vlx-lora-dense-dropout']['samples_per_s']:.2f}x samples/s")
    if "stage1" in results and "stage1+cache" in results:
        ratio = results["stage1+cache"]["samples_per_s"] / results["stage1"]["samples_per_s"]
        cpu_ratio = results["stage1+cache"]["samples_per_cpu_s"] / results["stage1"]["samples_per_cpu_s"]
        print(f"stage 1 with / without the feature cache (epochs 2+): {ratio:.2f}x samples/s, "
              f"{cpu_ratio:.2f}x samples/cpu-s")


if __name__ == "__main__":
    sys.exit(main())
