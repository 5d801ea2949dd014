"""The model families vlx knows, as plain data: where each part lives, what LoRA may touch, how it chats.

    family = family_of(config)            # a `Family` row, or `FamilyError` saying what is supported
    template = training_template(processor)   # the vlx template that renders like the checkpoint's

One row per `model_type` of transformers' image-text-to-text models. A row says where the language
model, the connector and the vision tower live, the pattern LoRA targets (linear layers of the
language model only: suffixes such as `q_proj` and `gate_proj` also exist in CLIP, SigLIP and
Qwen vision blocks, so the pattern is anchored at the language model's path), which module trains
fully beside LoRA, and whether vlx can fine-tune and extract with it today. A family that is listed
but not supported for a use (`finetune`, `extract`) is refused at start with one line; the facts are kept so that supporting it is
filling in its row, not writing a special path.

vlx's own LLaVA runs and llava-hf LLaVA-1.5 checkpoints are the `llava` row: the same
`LlavaForConditionalGeneration`, told apart by their chat templates. vlx trains with a template of
its own that renders the checkpoint's generation prompt byte for byte (`training_template`) and
supervises the end-of-turn token, which llava-hf's template leaves out (a model trained on it never
learns to stop).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vlx.model.build import ModelLoadError

_LM_LAYERS = r"\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)$"
# OPT's decoder layers (BLIP-2): attention projections and the two MLP layers.
_OPT_LAYERS = r"\.decoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|fc1|fc2)$"
# Qwen3.5's linear-attention (Gated DeltaNet) layers: their input and output projections beside the above.
_LINEAR_ATTN = r"\.layers\.\d+\.linear_attn\.(in_proj_qkv|in_proj_z|out_proj)$"


class FamilyError(ModelLoadError):
    """A checkpoint of a family vlx cannot fine-tune or extract with yet; the message says which can."""


@dataclass(frozen=True)
class Family:
    model_type: str
    language_model: str
    """Module path of the language model (its decoder layers are LoRA's targets)."""
    connector: str
    """Module trained fully beside LoRA (LLaVA's `--tune_mm_mlp_adapter` counterpart); several are
    comma-separated (Qwen3-VL: the merger and the deepstack mergers)."""
    vision: str
    lora_pattern: str
    """Full-path regex of the Linear layers LoRA wraps: the language model's only."""
    finetune: bool = False
    """`vlx finetune` trains it today (and `vlx export` merges the result)."""
    extract: bool = False
    """`vlx.load` / `vlx extract` / `vlx eval` decode with it today (schema-constrained)."""
    inputs: str = "template"
    """How training samples are built: `template`, by a vlx chat template with `<image>` expanded to the
    config's fixed `image_seq_length` (LLaVA-1.5); `processor`, by the checkpoint's own chat template and
    processor, which expands each image to its size's token count (`vlx.data.vlm_data`)."""
    packing: bool = False
    """`--packing` gives the same per-sample logits as unpacked batches (tested)."""
    mrope: bool = False
    """Multimodal RoPE (Qwen): packed samples need their own 3-row position ids under a text row
    (`vlx.data.packing.mrope_index`)."""
    pixel_budget: bool = False
    """The image processor resizes into a pixel range (`size` = {shortest_edge: min, longest_edge: max}
    pixels), which `--min-pixels` / `--max-pixels` set (Qwen2/2.5-VL)."""
    requires: tuple[tuple[str, object, str], ...] = ()
    """Config values a checkpoint must have, (key, value, what that means), refused by name otherwise."""
    chat_template: str = ""
    """The chat template vlx gives checkpoints that ship none (InstructBLIP, BLIP-2: the instruction, then the
    answer after a space, closed by EOS, as LAVIS trains them; PaliGemma: prefix, then answer and EOS); it is
    saved with a fine-tune run's processor."""
    note: str = ""
    """What is missing, for the one-line refusal."""


# InstructBLIP / BLIP-2 ship no chat template; their processors put the query tokens before the text
# themselves. One instruction, the answer after a space, EOS (LAVIS's `text_input` + `text_output`).
_PREFIX_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}{% endif %}"
    "{% else %}{{ ' ' + (message['content'] if message['content'] is string else message['content'][0]['text'])"
    " + eos_token }}{% endif %}{% endfor %}"
)


# PaliGemma ships no chat template either: `<image>` and the prefix (its processor adds BOS after the image
# tokens and a newline after the prefix), then the answer and EOS, as its `suffix` is trained.
_PALIGEMMA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% else %}{{ (message['content'] if message['content'] is string else message['content'][0]['text'])"
    " + eos_token }}{% endif %}{% endfor %}"
)


def _pattern(*lm_paths: str, layers: str = _LM_LAYERS) -> str:
    return r"^(" + "|".join(re.escape(p) for p in lm_paths) + r")" + layers


FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("llava", "model.language_model", "model.multi_modal_projector", "model.vision_tower",
           _pattern("model.language_model"), finetune=True, extract=True, packing=True,
           note="vlx train-base runs and llava-hf LLaVA-1.5 (template matched by rendering)"),
    Family("llava_next", "model.language_model", "model.multi_modal_projector", "model.vision_tower",
           _pattern("model.language_model"), finetune=True, extract=True, inputs="processor", packing=True),
    Family("qwen2_vl", "model.language_model", "model.visual.merger", "model.visual",
           _pattern("model.language_model"), finetune=True, extract=True, inputs="processor", pixel_budget=True,
           packing=True, mrope=True),
    Family("qwen2_5_vl", "model.language_model", "model.visual.merger", "model.visual",
           _pattern("model.language_model"), finetune=True, extract=True, inputs="processor", pixel_budget=True,
           packing=True, mrope=True),
    Family("qwen3_vl", "model.language_model", "model.visual.merger,model.visual.deepstack_merger_list", "model.visual",
           _pattern("model.language_model"), finetune=True, extract=True, inputs="processor", pixel_budget=True,
           packing=True, mrope=True),
    Family("qwen3_5", "model.language_model", "model.visual.merger", "model.visual",
           _pattern("model.language_model", layers=f"({_LM_LAYERS}|{_LINEAR_ATTN})"), finetune=True, extract=True,
           inputs="processor", pixel_budget=True, mrope=True,
           note="its linear-attention layers carry their state from one packed sample into the next"),
    Family("idefics3", "model.text_model", "model.connector", "model.vision_model",
           _pattern("model.text_model"), finetune=True, extract=True, inputs="processor", packing=True),
    Family("smolvlm", "model.text_model", "model.connector", "model.vision_model",
           _pattern("model.text_model"), finetune=True, extract=True, inputs="processor", packing=True),
    Family("instructblip", "language_model", "qformer,language_projection", "vision_model",
           _pattern("language_model.model", "language_model"), finetune=True, extract=True, inputs="processor",
           chat_template=_PREFIX_TEMPLATE,
           note="its Q-Former queries precede every row's text, so packed rows would need their own image per sample"),
    Family("blip-2", "language_model", "qformer,language_projection", "vision_model",
           _pattern("language_model.model", "language_model", layers=f"({_LM_LAYERS}|{_OPT_LAYERS})"),
           finetune=True, extract=True, inputs="processor", chat_template=_PREFIX_TEMPLATE,
           requires=(("use_decoder_only_language_model", True,
                      "a decoder-only language model (OPT); Flan-T5 BLIP-2 checkpoints are encoder-decoders"),),
           note="its Q-Former queries precede every row's text, so packed rows would need their own image per sample"),
    Family("gemma3", "model.language_model", "model.multi_modal_projector", "model.vision_tower",
           _pattern("model.language_model"), finetune=True, extract=True, inputs="processor",
           note="its image tokens attend to each other both ways, which packed rows would need a block mask for"),
    Family("paligemma", "model.language_model", "model.multi_modal_projector", "model.vision_tower",
           _pattern("model.language_model"), finetune=True, extract=True, inputs="processor", packing=True,
           chat_template=_PALIGEMMA_TEMPLATE),
)}


def supported(use: str = "finetune") -> list[str]:
    """Families vlx runs for `use` (`finetune` or `extract`)."""
    return [name for name, f in FAMILIES.items() if getattr(f, use)]


def family_of(config, use: str = "finetune") -> Family:
    """The row of a checkpoint's config (or `model_type` string); `FamilyError` if vlx cannot `use` it yet."""
    model_type = config if isinstance(config, str) else getattr(config, "model_type", None)
    family = FAMILIES.get(model_type)
    if family is None or not getattr(family, use):
        why = f" ({family.note})" if family is not None and family.note else ""
        verb = {"finetune": "fine-tune", "extract": "extract"}[use]
        raise FamilyError(f"vlx cannot {verb} with {model_type!r} checkpoints yet{why}; it can with: "
                          f"{', '.join(supported(use))}")
    return family


def family_of_checkpoint(path, use: str = "finetune") -> Family:
    """`family_of` a checkpoint directory's `config.json`, read before any weight loads."""
    from pathlib import Path

    from vlx.inputs import read_json

    config = read_json(Path(path) / "config.json")
    family = family_of(config.get("model_type") if isinstance(config, dict) else None, use)
    for key, value, meaning in family.requires:
        if config.get(key, value) != value:
            raise FamilyError(f"vlx cannot {'fine-tune' if use == 'finetune' else use} with this {family.model_type!r} "
                              f"checkpoint: it needs {meaning} ({key}={value!r} in config.json)")
    return family


def lora_targets(model, family: Family) -> list[str]:
    """Names of the Linear layers `family.lora_pattern` selects in `model` (never vision blocks)."""
    import torch

    pattern = re.compile(family.lora_pattern)
    return [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and pattern.match(name)]


def connector_modules(model, family: Family) -> list[str]:
    """`modules_to_save` names of the family's connector(s) in `model`: each module's own name, and for a
    list of modules (Qwen3-VL's deepstack mergers) each entry's (`deepstack_merger_list.0`), which
    peft can wrap where it cannot wrap the list."""
    import torch

    names = []
    for path in family.connector.split(","):
        module = model.get_submodule(path)
        last = path.rsplit(".", 1)[-1]
        if isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict)):
            names += [f"{last}.{key}" for key in module._modules]
        else:
            names.append(last)
    return names


_PROBE_TEXT = "Describe the image."


def training_template(processor) -> str:
    """The vlx template whose generation prompt renders exactly as the checkpoint's chat template does.

    Rendered, not compared as Jinja source: a probe conversation (an image and a question) goes
    through `processor.apply_chat_template` and through every vlx template; the one that produces
    the same text trains the model (with the end-of-turn token supervised) and prompts it.
    """
    from vlx.config import ConfigError
    from vlx.data.templates import TEMPLATES, Turn, prompt_text
    from vlx.model.llava import IMAGE_TOKEN

    chat = getattr(processor, "chat_template", None)
    if not chat:
        raise ConfigError("the base model has no chat template; give a checkpoint with one (vlx train-base "
                          "runs and llava-hf checkpoints have it)")
    probe = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": _PROBE_TEXT}]}]
    try:
        rendered = processor.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # noqa: BLE001 - a template that cannot render is one vlx cannot match
        raise ConfigError(f"the base model's chat template does not render a question with an image ({e})") from None
    rendered = rendered.removeprefix(getattr(processor.tokenizer, "bos_token", None) or "\0")
    for name in TEMPLATES:
        if name != "plain" and prompt_text(name, [Turn(f"{IMAGE_TOKEN}\n{_PROBE_TEXT}", None)]) == rendered:
            return name
    raise ConfigError(f"the base model's chat template renders a question as {rendered[:120]!r}, which no vlx "
                      f"template reproduces ({', '.join(t for t in TEMPLATES if t != 'plain')}); fine-tune a "
                      "`vlx train-base` run or a llava-hf LLaVA-1.5 checkpoint")


__all__ = ["Family", "FamilyError", "FAMILIES", "supported", "family_of", "family_of_checkpoint", "lora_targets",
           "connector_modules", "training_template"]
