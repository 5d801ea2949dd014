"""The `vlx` command line. Each command parses flags, builds a config and calls one recipe or API function."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from vlx.cli_common import (AllowPickle, MaxImagePixels, TrustRemoteCode, fail, policy, quiet_transformers_bars,
                            setup_logging, user_errors)
from vlx.cli_data import data_app

app = typer.Typer(
    help="Train, fine-tune and run vision-language models the LLaVA-1.5 way.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_app, name="data")




# ---- train-base -------------------------------------------------------------------------------

@app.command("train-base")
def train_base_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run directory to write (the final model lands here).")],
    preset: Annotated[str, typer.Option(help="Model preset: tiny, smol, llava-1.5-7b, llava-1.5-13b.")] = "tiny",
    stage1_data: Annotated[Optional[str], typer.Option(help="Stage-1 captions: LLaVA .json/.jsonl, a `datasets` dir or a mixture .yaml.")] = None,
    stage2_data: Annotated[Optional[str], typer.Option(help="Stage-2 instructions: same formats; a mixture .yaml sets per-source format prompts.")] = None,
    stage: Annotated[Optional[str], typer.Option(help="Which stages to run: 1, 2 or both (default: both, or the config's stages).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML with model/data/stage1/stage2 sections (flags override it; it overrides the preset); a run's own config.yaml replays that run.")] = None,
    image_folder: Annotated[Optional[str], typer.Option(help="Folder image paths are relative to (default: each data file's folder).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop each stage after N optimizer steps.")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Epochs per stage (LLaVA-1.5: 1).")] = None,
    stage1_lr: Annotated[Optional[float], typer.Option(help="Stage-1 learning rate (LLaVA-1.5: 1e-3).")] = None,
    stage2_lr: Annotated[Optional[float], typer.Option(help="Stage-2 learning rate (LLaVA-1.5: 2e-5).")] = None,
    projector_lr: Annotated[Optional[float], typer.Option(help="Separate projector learning rate in stage 2.")] = None,
    global_batch_size: Annotated[Optional[int], typer.Option(help="Samples per optimizer step over all processes.")] = None,
    per_device_batch_size: Annotated[Optional[int], typer.Option(help="Samples per forward pass per process.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto (bf16 where native), bf16 or fp32.")] = None,
    gradient_checkpointing: Annotated[Optional[bool], typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations in backward.")] = None,
    report_to: Annotated[Optional[str], typer.Option(help="Experiment tracker: none (default), tensorboard (OUT/tensorboard), wandb or mlflow.")] = None,
    save_steps: Annotated[Optional[int], typer.Option(help="Write a resumable checkpoint every N steps.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Data order seed.")] = None,
    vision: Annotated[Optional[str], typer.Option(help="Vision tower: hub id or local dir of a CLIP or SigLIP vision model (overrides the preset).")] = None,
    llm: Annotated[Optional[str], typer.Option(help="LLM: hub id, local dir, or dir with a GGUF file (overrides the preset).")] = None,
    llm_gguf_file: Annotated[Optional[str], typer.Option(help="GGUF file name inside --llm.")] = None,
    projector: Annotated[Optional[str], typer.Option(help="mlp2x_gelu (LLaVA-1.5) or linear (LLaVA-1).")] = None,
    projector_init: Annotated[Optional[str], typer.Option(help="Start stage 1 from these projector weights (.safetensors; LLaVA's --pretrain_mm_mlp_adapter).")] = None,
    image_aspect_ratio: Annotated[Optional[str], typer.Option(help="pad (LLaVA-1.5), square or crop.")] = None,
    template: Annotated[Optional[str], typer.Option(help="Stage-2 template: vicuna_v1 or chatml.")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Max tokens per sample, image tokens included.")] = None,
    group_by_modality_length: Annotated[Optional[bool], typer.Option("--group-by-modality-length/--no-group-by-modality-length", help="All-image or all-text batches.")] = None,
    skip_invalid: Annotated[bool, typer.Option(help="Train on valid rows; write invalid ones to rejected-stageN.jsonl.")] = False,
    truncate: Annotated[bool, typer.Option(help="Cut over-long samples (never into image tokens) instead of stopping.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue from the last complete checkpoint in --out.")] = False,
    init_from: Annotated[Optional[str], typer.Option(help="Stage 2 only: start from this model dir instead of OUT/stage1.")] = None,
    deepspeed: Annotated[Optional[str], typer.Option(help="DeepSpeed JSON (templates/deepspeed/zero2.json, zero3.json).")] = None,
    fsdp_config: Annotated[Optional[str], typer.Option(help="FSDP config JSON (templates/fsdp/fsdp.json).")] = None,
    num_workers: Annotated[Optional[int], typer.Option(help="DataLoader workers.")] = None,
    feature_cache: Annotated[Optional[str], typer.Option(help="Directory caching the frozen vision tower's features: later epochs, stages and runs skip the tower.")] = None,
    no_feature_cache: Annotated[bool, typer.Option(help="Compute tower features every step even if the config file sets a cache.")] = False,
    packing: Annotated[Optional[bool], typer.Option("--packing/--no-packing", help="Pack each micro-batch without padding (same loss; needs SDPA, eager or flash attention).")] = None,
    allow_pickle: AllowPickle = False,
    trust_remote_code: TrustRemoteCode = False,
    max_image_pixels: MaxImagePixels = None,
):
    """Train a LLaVA-1.5 model: stage 1 aligns the projector, stage 2 tunes projector + LLM."""
    policy(allow_pickle, trust_remote_code, max_image_pixels)
    from vlx.config import ConfigError, DataConfig, ModelConfig, TrainConfig, load_yaml, merge
    from vlx.model.presets import get_preset
    from vlx.train.base import train_base

    setup_logging()
    try:
        yaml_cfg = load_yaml(config, {"model": ModelConfig, "data": DataConfig, "stage1": TrainConfig,
                                      "stage2": TrainConfig}, scalars=("stages",)) if config else {}
        if stage is None and yaml_cfg.get("stages") is not None:
            stages = tuple(str(s) for s in yaml_cfg["stages"])
            if not stages or any(s not in ("1", "2") for s in stages):
                raise ConfigError(f"{config}: stages {yaml_cfg['stages']!r}: give a list of 1 and/or 2")
        else:
            stages = {"1": ("1",), "2": ("2",), "both": ("1", "2")}.get(stage or "both")
            if stages is None:
                raise ConfigError(f"--stage {stage!r}: use 1, 2 or both")
        model_flags = dict(vision=vision, llm=llm, llm_gguf_file=llm_gguf_file, projector=projector,
                           projector_init=projector_init,
                           image_aspect_ratio=image_aspect_ratio, template=template, max_length=max_length)
        model_cfg = merge(ModelConfig, {"preset": preset}, yaml_cfg.get("model", {}), model_flags)
        data_cfg = merge(DataConfig, yaml_cfg.get("data", {}), dict(
            stage1_data=stage1_data, stage2_data=stage2_data, image_folder=image_folder,
            skip_invalid=skip_invalid or None, truncate=truncate or None,
            group_by_modality_length=group_by_modality_length, num_workers=num_workers,
            feature_cache=feature_cache, packing=packing))
        if no_feature_cache:
            data_cfg.feature_cache = None
        p = get_preset(model_cfg.preset)
        shared = dict(max_steps=max_steps, epochs=epochs, global_batch_size=global_batch_size,
                      per_device_batch_size=per_device_batch_size, precision=precision,
                      gradient_checkpointing=gradient_checkpointing, save_steps=save_steps, seed=seed,
                      report_to=report_to)
        stage_cfgs = {
            "1": merge(TrainConfig, p.stage1, yaml_cfg.get("stage1", {}), shared, {"learning_rate": stage1_lr}),
            "2": merge(TrainConfig, p.stage2, yaml_cfg.get("stage2", {}), shared,
                       {"learning_rate": stage2_lr, "projector_lr": projector_lr}),
        }
        run = train_base(model_cfg, data_cfg, stage_cfgs, out, stages=stages, resume=resume,
                         init_from=init_from, deepspeed=deepspeed, fsdp_config=fsdp_config)
    except user_errors() as e:
        fail(str(e))
    if os.environ.get("RANK", "0") == "0":
        typer.echo(f"model written to {run} (loads with LlavaForConditionalGeneration.from_pretrained)")


# ---- finetune, export -------------------------------------------------------------------------

@app.command("finetune")
def finetune_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run directory to write.")],
    schema: Annotated[Optional[Path], typer.Option(help="Python file defining the pydantic schema (templates/poi.py); it is executed, so give only files you would run.")] = None,
    base: Annotated[Optional[Path], typer.Option(help="Base model: a `vlx train-base` run, a llava-hf LLaVA-1.5 or LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5, Idefics3, SmolVLM, Gemma 3, PaliGemma, InstructBLIP or BLIP-2 checkpoint directory, or a hub id (docs/models.md).")] = None,
    data: Annotated[Optional[str], typer.Option(help="JSONL rows {\"image\", \"target\", [\"prompt\"]}.")] = None,
    schema_class: Annotated[Optional[str], typer.Option(help="Class in --schema when it defines several roots.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML with data/train/lora sections and optionally base, schema, schema_class: a run's own config.yaml replays that run (flags override it; its recorded template is the base's and is not read).")] = None,
    val_data: Annotated[Optional[str], typer.Option(help="Held-out rows (default: split off --val-fraction).")] = None,
    val_fraction: Annotated[Optional[float], typer.Option(help="Share of --data held out for validation.")] = None,
    image_folder: Annotated[Optional[str], typer.Option(help="Folder image paths are relative to.")] = None,
    chat_data: Annotated[Optional[str], typer.Option(help="Chat replay conversations (LLaVA format); default: a built-in set.")] = None,
    chat_ratio: Annotated[Optional[float], typer.Option(help="Chat rows per extraction row; 0 disables chat replay.")] = None,
    format_prompt: Annotated[Optional[str], typer.Option(help="Override the schema-derived format prompt ('' trains without one).")] = None,
    task: Annotated[Optional[str], typer.Option(help="Task instruction opening the derived format prompt.")] = None,
    prompt_style: Annotated[Optional[str], typer.Option(help="Derived format prompt: cue (one line: the task, 'Answer in JSON.') or schema (every field spelled out).")] = None,
    packing: Annotated[Optional[bool], typer.Option("--packing/--no-packing", help="Pack each micro-batch without padding (same loss and per-source losses; needs SDPA, eager or flash attention).")] = None,
    spell_fields: Annotated[Optional[str], typer.Option(help="Comma-separated JSON keys whose string values are trained one character per token (e.g. name,street).")] = None,
    decision_weight: Annotated[Optional[float], typer.Option(help="Loss weight of the answer tokens where the JSON branches (null or a value, another list item or the end); 1: plain cross-entropy.")] = None,
    weigh_string_ends: Annotated[Optional[bool], typer.Option("--weigh-string-ends/--no-weigh-string-ends", help="Also give --decision-weight to the token closing each string value (where a copied name stops).")] = None,
    skip_invalid: Annotated[bool, typer.Option(help="Train on valid rows; write the invalid ones to rejected.jsonl.")] = False,
    min_pixels: Annotated[Optional[int], typer.Option(help="Pixel budget, lower end (Qwen2/2.5-VL: image tokens = area / 784; Qwen3-VL, Qwen3.5: area / 1024); kept in the run for eval, extract and export.")] = None,
    max_pixels: Annotated[Optional[int], typer.Option(help="Pixel budget, upper end (e.g. 401408 = 512 tokens); kept in the run for eval, extract and export.")] = None,
    lora_r: Annotated[Optional[int], typer.Option(help="LoRA rank (LLaVA: 128).")] = None,
    lora_alpha: Annotated[Optional[int], typer.Option(help="LoRA alpha (LLaVA: 256).")] = None,
    lora_dropout: Annotated[Optional[float], typer.Option(help="LoRA dropout (LLaVA: 0.05).")] = None,
    train_projector: Annotated[Optional[bool], typer.Option("--train-projector/--freeze-projector", help="Train the projector fully (LLaVA: yes).")] = None,
    load_in_4bit: Annotated[bool, typer.Option(help="QLoRA: 4-bit base (CUDA + bitsandbytes).")] = False,
    learning_rate: Annotated[Optional[float], typer.Option(help="LoRA learning rate (LLaVA: 2e-4).")] = None,
    projector_lr: Annotated[Optional[float], typer.Option(help="Projector learning rate (LLaVA: 2e-5).")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Passes over the data.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after N optimizer steps.")] = None,
    global_batch_size: Annotated[Optional[int], typer.Option(help="Samples per optimizer step over all processes.")] = None,
    per_device_batch_size: Annotated[Optional[int], typer.Option(help="Samples per forward pass per process.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto, bf16 or fp32.")] = None,
    gradient_checkpointing: Annotated[Optional[bool], typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations in backward.")] = None,
    report_to: Annotated[Optional[str], typer.Option(help="Experiment tracker: none (default), tensorboard (OUT/tensorboard), wandb or mlflow.")] = None,
    save_steps: Annotated[Optional[int], typer.Option(help="Resumable checkpoint every N steps.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Data order and split seed.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in --out.")] = False,
    deepspeed: Annotated[Optional[str], typer.Option(help="DeepSpeed JSON config.")] = None,
    allow_pickle: AllowPickle = False,
    trust_remote_code: TrustRemoteCode = False,
    max_image_pixels: MaxImagePixels = None,
):
    """LoRA-fine-tune a base model to answer in SCHEMA's JSON, keeping it fluent in chat."""
    policy(allow_pickle, trust_remote_code, max_image_pixels)
    from vlx.config import ConfigError, FinetuneDataConfig, LoraConfig, TrainConfig, load_yaml, merge
    from vlx.model.presets import PRESETS
    from vlx.schema import SchemaError
    from vlx.train.finetune import finetune

    setup_logging()
    try:
        yaml_cfg = load_yaml(config, {"data": FinetuneDataConfig, "train": TrainConfig, "lora": LoraConfig},
                             scalars=("base", "schema", "schema_class", "template")) if config else {}
        base = base or (Path(yaml_cfg["base"]) if yaml_cfg.get("base") else None)
        schema = schema or (Path(yaml_cfg["schema"]) if yaml_cfg.get("schema") else None)
        schema_class = schema_class or yaml_cfg.get("schema_class")
        for name, value in (("--base", base), ("--schema", schema)):
            if value is None:
                raise ConfigError(f"{name} is required (or a --config that sets {name[2:]}: as a run's config.yaml does)")
        data_cfg = merge(FinetuneDataConfig, yaml_cfg.get("data", {}), dict(
            data=data, val_data=val_data, val_fraction=val_fraction, image_folder=image_folder,
            chat_data=chat_data, chat_ratio=chat_ratio, format_prompt=format_prompt, task=task,
            prompt_style=prompt_style, skip_invalid=skip_invalid or None, packing=packing,
            min_pixels=min_pixels, max_pixels=max_pixels, decision_weight=decision_weight,
            weigh_string_ends=weigh_string_ends,
            spell_fields=tuple(k.strip() for k in spell_fields.split(",") if k.strip()) if spell_fields else None))
        preset = _base_preset(base)
        train_cfg = merge(TrainConfig, PRESETS[preset].finetune, yaml_cfg.get("train", {}), dict(
            learning_rate=learning_rate, projector_lr=projector_lr, epochs=epochs, max_steps=max_steps,
            global_batch_size=global_batch_size, per_device_batch_size=per_device_batch_size,
            precision=precision, gradient_checkpointing=gradient_checkpointing, save_steps=save_steps, seed=seed,
            report_to=report_to))
        lora_cfg = merge(LoraConfig, yaml_cfg.get("lora", {}), dict(
            r=lora_r, alpha=lora_alpha, dropout=lora_dropout, train_projector=train_projector,
            load_in_4bit=load_in_4bit or None))
        run = finetune(base, schema, data_cfg, train_cfg, lora_cfg, out, schema_class=schema_class,
                       resume=resume, deepspeed=deepspeed)
    except (*user_errors(), SchemaError) as e:
        fail(str(e))
    if os.environ.get("RANK", "0") == "0":
        typer.echo(f"adapter written to {run}/adapter; `vlx extract --model {run} IMAGE` uses it")


def _base_preset(base: Path) -> str:
    """The preset a base run was trained from (its finetune defaults apply); LLaVA-1.5's otherwise."""
    from vlx.model.presets import PRESETS
    from vlx.run import model_section

    preset = model_section(base).get("preset")
    return preset if preset in PRESETS else "llava-1.5-7b"


@app.command("export")
def export_cmd(
    model: Annotated[Path, typer.Option(help="A `vlx finetune` run directory.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the merged standalone checkpoint.")],
    lora: Annotated[bool, typer.Option("--lora", help="Instead: OUT/base (the base with the trained connector) and OUT/adapter (the language model's LoRA only), for vLLM --enable-lora (docs/serving.md).")] = False,
    allow_pickle: AllowPickle = False,
    trust_remote_code: TrustRemoteCode = False,
):
    """Merge a fine-tune run's adapter into a standalone transformers checkpoint (or, --lora, a base + LoRA pair)."""
    policy(allow_pickle, trust_remote_code)
    from vlx.export import export_lora, export_merged

    try:
        path = export_lora(model, out) if lora else export_merged(model, out)
    except user_errors() as e:
        fail(str(e))
    if lora:
        typer.echo(f"base with the trained connector in {path}/base, language-model LoRA in {path}/adapter "
                   f"(vllm serve {path}/base --enable-lora --lora-modules task={path}/adapter)")
    else:
        typer.echo(f"merged checkpoint written to {path} (plain transformers loads it; vlx.load keeps its schema)")




# ---- eval -------------------------------------------------------------------------------------

@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Option("--model", help="Run directory (or any llava-hf checkpoint directory).")],
    data: Annotated[str, typer.Option("--data", help="With --benchmark: the benchmark's directory; without: extraction rows (.jsonl).")],
    benchmark: Annotated[Optional[str], typer.Option(help="vqav2, gqa, textvqa, pope, mme, mmbench or scienceqa (see docs/benchmarks.md).")] = None,
    split: Annotated[Optional[str], typer.Option(help="Benchmark split (vqav2: test-dev or val; mmbench: dev or test); default: the paper's.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N questions (a quick look, not comparable with the paper).")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 8,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Token budget per answer (default: the benchmark's, LLaVA's 128; extraction: derived from the schema).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Directory for results (default: MODEL/eval/BENCHMARK or MODEL/eval/extraction).")] = None,
    chat_data: Annotated[Optional[str], typer.Option(help="Extraction mode: held-out chat conversations; adds chat retention (JSON leaks, answer perplexity vs the base).")] = None,
    allow_pickle: AllowPickle = False,
    trust_remote_code: TrustRemoteCode = False,
    max_image_pixels: MaxImagePixels = None,
):
    """Score a model: a paper benchmark (--benchmark) or schema extraction on held-out rows."""
    policy(allow_pickle, trust_remote_code, max_image_pixels)
    from vlx.eval.benchmarks import BenchmarkError, get_benchmark, markdown_table, run_benchmark
    from vlx.eval.extraction import ExtractionEvalError, evaluate_run
    from vlx.eval.fields import format_table
    from vlx.schema import SchemaError

    setup_logging()
    try:
        if benchmark is not None:
            name = get_benchmark(benchmark).name
            target = out or Path(model) / "eval" / name
            result = run_benchmark(model, name, data, split=split, limit=limit, batch_size=batch_size,
                                   max_new_tokens=max_new_tokens, out_dir=target)
            typer.echo(markdown_table(result))
            typer.echo(f"results written to {target}")
        else:
            if split is not None:
                fail("--split applies to --benchmark runs only")
            target = out or Path(model) / "eval" / "extraction"
            report = evaluate_run(model, data, chat_data=chat_data, out_dir=target, limit=limit, batch_size=batch_size,
                                  max_new_tokens=max_new_tokens)
            typer.echo(format_table(report))
            if "chat" in report:
                from vlx.eval.chat import format_chat

                typer.echo(format_chat(report["chat"], samples=3))
            typer.echo(f"results written to {target}")
    except (*user_errors(), BenchmarkError, ExtractionEvalError, SchemaError) as e:
        fail(str(e))


# ---- extract, chat ----------------------------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _image_paths(items: list[Path]) -> list[Path]:
    """Files as given; folders expanded to their image files (by suffix), sorted."""
    paths: list[Path] = []
    for item in items:
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)
    return paths


@app.command("extract")
def extract_cmd(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders (a folder means its image files).")],
    model: Annotated[str, typer.Option("--model", help="A finetune run, an export, or a base model (then give --schema).")],
    schema: Annotated[Optional[Path], typer.Option(help="Pydantic schema file (Python, executed: only files you would run); default: the run's own.")] = None,
    schema_class: Annotated[Optional[str], typer.Option(help="Class name in --schema when it defines several roots.")] = None,
    allow_schema_change: Annotated[bool, typer.Option(help="Decode under --schema even if the run was fine-tuned with another.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per generation batch.")] = 8,
    backend: Annotated[Optional[str], typer.Option(help="Decoding backend: outlines_core (default), outlines, or none (unconstrained ablation).")] = None,
    temperature: Annotated[float, typer.Option(help="0 decodes greedily; above 0 samples.")] = 0.0,
    seed: Annotated[Optional[int], typer.Option(help="Sampling seed.")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Token budget; default: derived from the schema's bounds.")] = None,
    allow_pickle: AllowPickle = False,
    trust_remote_code: TrustRemoteCode = False,
    max_image_pixels: MaxImagePixels = None,
):
    """Print one JSON object per image and line: {"image", "result"} or {"image", "error"}; exit 1 if any failed."""
    policy(allow_pickle, trust_remote_code, max_image_pixels)
    import json

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from vlx.api import load
    from vlx.decode import ExtractionError
    from vlx.schema import SchemaError, load_schema

    paths = _image_paths(images)
    if not paths:
        fail("no image files found in the given paths (looked for " + ", ".join(IMAGE_SUFFIXES) + ")")
    options = {k: v for k, v in dict(backend=backend, temperature=temperature, seed=seed,
                                     max_new_tokens=max_new_tokens).items() if v is not None}
    try:
        Schema = load_schema(schema, schema_class) if schema is not None else None
        extractor = load(model)
        failed = 0
        progress = Progress(TextColumn("extracting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=True, disable=len(paths) < 2)
        with progress:
            task = progress.add_task("extract", total=len(paths))
            for start in range(0, len(paths), batch_size):
                chunk = paths[start:start + batch_size]
                results = extractor.extract_many(chunk, Schema, batch_size=batch_size,
                                                 allow_schema_change=allow_schema_change,
                                                 on_progress=lambda n: progress.advance(task, n), **options)
                for path, result in zip(chunk, results):
                    if isinstance(result, ExtractionError):
                        failed += 1
                        line = {"image": str(path), "error": str(result)}
                    else:
                        line = {"image": str(path), "result": result.model_dump(mode="json")}
                    typer.echo(json.dumps(line, ensure_ascii=False))
    except (*user_errors(), SchemaError, ValueError) as e:
        fail(str(e))
    if failed:
        typer.secho(f"{failed} of {len(paths)} image(s) failed", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)


@app.command("chat")
def chat_cmd(
    message: Annotated[str, typer.Argument(help="What to ask.")],
    model: Annotated[str, typer.Option("--model", help="Run directory or LLaVA checkpoint directory.")],
    image: Annotated[Optional[Path], typer.Option(help="Image the message is about.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 decodes greedily; above 0 samples.")] = 0.0,
    seed: Annotated[Optional[int], typer.Option(help="Sampling seed.")] = None,
    allow_pickle: AllowPickle = False,
    trust_remote_code: TrustRemoteCode = False,
    max_image_pixels: MaxImagePixels = None,
):
    """Ask the model anything, with or without an image: its chat mode (no format prompt, no grammar)."""
    policy(allow_pickle, trust_remote_code, max_image_pixels)
    from vlx.api import ImageError, load

    try:
        answer = load(model).chat(image, message, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    except (*user_errors(), ImageError, ValueError) as e:
        fail(str(e))
    typer.echo(answer)


# ---- demo -------------------------------------------------------------------------------------

@app.command("pretrain-tower")
def pretrain_tower_cmd(
    out: Annotated[Path, typer.Option("--out", help="Directory for the tower (CLIPVisionModel, image processor, metrics.json).")],
    steps: Annotated[int, typer.Option(help="Optimizer steps of 32 images (about 1.4 s each on 2 CPU cores with bf16).")] = 1500,
    seed: Annotated[int, typer.Option(help="Seed of the initial weights and of the synthetic batches.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 32,
    precision: Annotated[str, typer.Option(help="auto (bf16 where the CPU/GPU has it), bf16 or fp32.")] = "auto",
    absent_weight: Annotated[float, typer.Option(help="Weight of the head that tells a storefront's cells that it has no "
                                                      "house-number plate or street plaque (0: no such head).")] = 0.5,
):
    """Pre-train the smol preset's vision tower to read street scenes (dense per-patch labels); resumable.

    Killed or interrupted, the same command continues from its last checkpoint (every 100 steps, in
    OUT/../.OUT.work/). The result is a plain CLIPVisionModel directory.
    """
    from vlx.model.tower import TowerConfig, pretrain

    setup_logging()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    quiet_transformers_bars()
    if out.exists() and any(out.iterdir()):
        fail(f"--out {out} exists and is not empty; give a new directory (the tower is written there when whole)")
    try:
        cfg = TowerConfig(steps=steps, seed=seed, batch_size=batch_size, precision=precision,
                          absent_weight=absent_weight)
    except ValueError as e:
        fail(str(e))
    from vlx.run import atomic_dir

    with atomic_dir(out) as tmp:
        metrics = pretrain(cfg, tmp, work=out.parent / f".{out.name}.work")
    typer.echo(f"tower written to {out}: " + ", ".join(f"{k} {v}" for k, v in metrics.items()))


@app.command("doctor")
def doctor_cmd():
    """Versions, device and precision `auto` will pick, optional packages, the cache; the fix for each problem."""
    from vlx.doctor import diagnose, format_checks

    checks = diagnose()
    typer.echo(format_checks(checks))
    if any(not c.ok for c in checks):
        raise typer.Exit(1)


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", help="Directory for data, runs, evaluations and report.html.")] = Path("demo"),
    quick: Annotated[bool, typer.Option(help="The same pipeline on the tiny preset with small data (under 2 minutes).")] = False,
    ablation: Annotated[bool, typer.Option(help="Also fine-tune without format prompt and chat replay, evaluated side by side.")] = False,
    seed: Annotated[int, typer.Option(help="Draw another synthetic world (data, splits, alignment images).")] = 0,
    retrain_tower: Annotated[bool, typer.Option(help="Pre-train the smol vision tower into the cache (about an hour, resumable) instead of using the shipped one.")] = False,
):
    """Synthesise data, train a LLaVA-1.5 base (smol), fine-tune it on templates/poi.py, evaluate, write report.html."""
    from vlx.demo import run_demo
    from vlx.model.smol import SmolError
    from vlx.schema import SchemaError

    setup_logging()
    for name in ("transformers", "vlx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    quiet_transformers_bars()
    try:
        result = run_demo(out, quick=quick, ablation=ablation, seed=seed, retrain_tower=retrain_tower)
    except (*user_errors(), SchemaError, SmolError) as e:
        fail(str(e))
    typer.echo(result["summary"])
    typer.echo(f"report: {out / 'report.html'}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
