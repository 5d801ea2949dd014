"""`python bench/gpu_stage2.py [--tiny]`: LLaVA-1.5-7B-shaped stage-2 training and extraction throughput.

Run by `bench/gpu.sh` on one GPU; `--tiny` runs the same code on a CPU with tiny shapes. Nothing is
downloaded: the model is built from configs with random weights (CLIP ViT-L/14-336 + a 7B Llama,
vocab 32000, 576 image tokens). All 32 LLM layers are used when they fit on the GPU with AdamW
state (fp32 weights, gradients and two moments: 16 bytes per trainable parameter); otherwise fewer
layers of the same shape, and every number below is for the model actually built.

Stage 2 as `vlx train-base` runs it: vision tower frozen, projector + LLM trained, bf16 autocast,
gradient checkpointing, SDPA attention (flash attention 2 if installed), AdamW (fused), samples of
576 image tokens + 150-550 text tokens (LLaVA-1.5's mix665k averages roughly 800-1000 tokens per
sample with the image) with answers supervised, packed without padding (`vlx.data.packing`).

Reported: tokens/s, model-FLOPs utilisation (6 N FLOPs per token for the LLM layers and projector, N
their parameter count; 6 N_head per position whose logits are computed, which packing limits to the
supervised ones; 2 N_vision per vision token for the frozen tower's forward; attention scores not
counted, as in the usual MFU definition), peak memory; then constrained extraction
throughput through `vlx.load(...)` / `Extractor.extract_many` on the same weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}
"""Dense bf16 tensor-core peaks (NVIDIA datasheets, no sparsity)."""


def configs(tiny: bool, layers: int):
    from transformers import CLIPVisionConfig, LlamaConfig

    from vlx.model import tiny as tiny_parts

    if tiny:
        return tiny_parts.tiny_vision_config(), tiny_parts.tiny_text_config(vocab_size=640)
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    text = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, tie_word_embeddings=False)
    return vision, text


def build(tiny: bool, layers: int, device: str):
    """Random-weight LLaVA of the requested shape on `device` -> (model, processor)."""
    from transformers import LlavaForConditionalGeneration

    from vlx.data.templates import JINJA
    from vlx.device import attn_implementation
    from vlx.model.llava import IMAGE_TOKEN, llava_config, llava_processor
    from vlx.model.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    vision, text = configs(tiny, layers)
    text.vocab_size = max(text.vocab_size, len(tokenizer))
    text.pad_token_id, text.bos_token_id, text.eos_token_id = (tokenizer.pad_token_id, tokenizer.bos_token_id,
                                                               tokenizer.eos_token_id)
    config = llava_config(vision, text, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    with torch.device(device):
        model = LlavaForConditionalGeneration(config)
    model.set_attn_implementation(attn_implementation() if device == "cuda" else "sdpa")  # every sub-model
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id]
    processor = llava_processor(tokenizer, vision, chat_template=JINJA["vicuna_v1"])
    return model, processor


def fitting_layers(total_bytes: int) -> int:
    """32 if the 7B model with AdamW fits in about 90% of the GPU, else the most layers that do."""
    per_layer = 202_383_360 * 16  # one Llama-7B decoder layer: params x (fp32 weight, grad, 2 moments)
    fixed = 2 * 32000 * 4096 * 16 + 304_000_000 * 4 + 21_000_000 * 16 + 12 * 2**30  # embeddings, lm_head, tower, projector, activations
    return max(1, min(32, int((0.9 * total_bytes - fixed) // per_layer)))


def synthetic_batch(model, n_samples: int, tokens_per_image: int, image_size: int, text_range, device, one_row: bool,
                    generator):
    """`n_samples` LLaVA-style samples packed (vlx.data.packing) -> a training batch on `device`."""
    from vlx.data.packing import PackingCollator

    vocab = model.config.text_config.vocab_size
    image_id = model.config.image_token_id
    items = []
    for _ in range(n_samples):
        n_text = int(torch.randint(text_range[0], text_range[1] + 1, (1,), generator=generator))
        text = torch.randint(10, min(vocab, 30000), (n_text,), generator=generator).tolist()
        text = [t if t != image_id else t + 1 for t in text]
        ids = text[:8] + [image_id] * tokens_per_image + text[8:]
        answer_from = len(ids) - n_text // 3  # the last third of the text is the supervised answer
        labels = [-100] * answer_from + ids[answer_from:]
        items.append({"input_ids": ids, "labels": labels,
                       "pixel_values": torch.randn(3, image_size, image_size, generator=generator)})
    batch = PackingCollator(model.config.text_config.pad_token_id, one_row=one_row, supervised_logits=True)(items)
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def param_counts(model) -> tuple[int, int, int]:
    """(LLM layers + projector, lm_head, vision tower) parameter counts; embeddings do no matmuls."""
    llm = sum(p.numel() for n, p in model.named_parameters()
              if "vision_tower" not in n and "embed_tokens" not in n and "lm_head" not in n)
    head = model.lm_head.weight.numel()
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    return llm, head, vision


def train_steps(model, args, device) -> dict:
    from vlx.data.packing import packs_into_one_row, supervised_loss
    from vlx.train.base import set_trainable

    set_trainable(model, "2")
    model.train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.0, fused=device == "cuda")
    vision_cfg = model.config.vision_config
    tokens_per_image = (vision_cfg.image_size // vision_cfg.patch_size) ** 2
    g = torch.Generator().manual_seed(0)
    one_row = packs_into_one_row(model)
    autocast = torch.autocast(device, dtype=torch.bfloat16)
    times, tokens, kept = [], [], []
    for step in range(args.warmup + args.steps):
        batch = synthetic_batch(model, args.samples_per_step, tokens_per_image, vision_cfg.image_size, args.text_tokens,
                                device, one_row, g)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        labels = batch.pop("labels")
        with autocast:
            loss = supervised_loss(model(**batch), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
            tokens.append(int((batch["input_ids"] != model.config.text_config.pad_token_id).sum()))
            kept.append(batch["input_ids"].shape[0] * batch["logits_to_keep"].numel())
        print(f"step {step}: loss {loss.item():.3f} {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    del optimizer
    n_llm, n_head, n_vision = param_counts(model)
    seconds = sum(times)
    tok_s = sum(tokens) / seconds
    images_s = args.samples_per_step * len(times) / seconds
    # The vocabulary projection runs only where a label needs it (vlx.data.packing), so it is counted there.
    flops_s = 6 * n_llm * tok_s + 6 * n_head * sum(kept) / seconds + 2 * n_vision * (tokens_per_image + 1) * images_s
    return {"llm_layers": model.config.text_config.num_hidden_layers, "llm_params": n_llm, "lm_head_params": n_head,
            "vision_params": n_vision,
            "samples_per_step": args.samples_per_step, "steps": len(times), "tokens_per_s": tok_s,
            "samples_per_s": images_s, "model_tflops_per_s": flops_s / 1e12, "final_loss": loss.item()}


def extraction(model, processor, args, device) -> dict:
    from PIL import Image
    from pydantic import BaseModel, ConfigDict, Field

    import vlx
    from vlx.api import Extractor

    class Sign(BaseModel):
        model_config = ConfigDict(extra="forbid")
        name: str = Field(max_length=24)
        open: bool
        floors: int = Field(ge=0, le=99)

    model.eval()
    model.activation_checkpointing_disable()
    ex = vlx.load(Extractor(model, processor, template="vicuna_v1", path="random-7b-shape"))
    size = model.config.vision_config.image_size
    images = [Image.new("RGB", (size + 17 * i, size), (40 * i % 255, 90, 160)) for i in range(args.extract_images)]
    ex.extract_many(images[:args.extract_batch], Sign, batch_size=args.extract_batch)  # compile and warm up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    results = ex.extract_many(images, Sign, batch_size=args.extract_batch)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    valid = sum(isinstance(r, Sign) for r in results)
    return {"images": len(images), "batch_size": args.extract_batch, "seconds": seconds,
            "images_per_s": len(images) / seconds, "schema_valid": valid}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny shapes on any device (checks the script on a CPU)")
    p.add_argument("--layers", type=int, default=0, help="LLM layers (0: 32 if they fit, else as many as fit)")
    p.add_argument("--samples-per-step", type=int, default=16, help="samples per optimizer step (packed)")
    p.add_argument("--text-tokens", type=int, nargs=2, default=(150, 550), help="text tokens per sample: min max")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--extract-images", type=int, default=32)
    p.add_argument("--extract-batch", type=int, default=16)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.tiny:
        args.text_tokens = (20, 60)
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    layers = args.layers or (fitting_layers(torch.cuda.get_device_properties(0).total_memory)
                             if device == "cuda" else 32)
    while True:
        model, processor = build(args.tiny, layers, device)
        try:
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            train = train_steps(model, args, device)
            break
        except torch.cuda.OutOfMemoryError:
            if layers <= 2:
                raise
            layers = max(2, layers - 4)
            print(f"out of memory: retrying with {layers} layers", file=sys.stderr)
            del model
            torch.cuda.empty_cache()
    train["peak_memory_gb"] = (torch.cuda.max_memory_allocated() / 2**30) if device == "cuda" else None
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in gpu), None)
    train["mfu"] = train["model_tflops_per_s"] / peak if peak else None
    extract = extraction(model, processor, args, device)
    result = {"device": gpu, "shape": "tiny" if args.tiny else "llava-1.5-7b", "train_stage2": train,
              "extraction": extract}
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    mfu = f"{100 * train['mfu']:.1f}%" if train["mfu"] else "n/a (CPU)"
    print(f"\nstage 2, {train['llm_layers']} LLM layers: {train['tokens_per_s']:.0f} tokens/s, MFU {mfu}, "
          f"peak {train['peak_memory_gb'] or 0:.1f} GB; extraction {extract['images_per_s']:.2f} images/s "
          f"({extract['schema_valid']}/{extract['images']} schema-valid)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
