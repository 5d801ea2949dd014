"""Assemble a `LlavaForConditionalGeneration` from any CLIP-like vision tower and any causal LM.

    model, processor = build_llava(ModelConfig(preset="tiny"))

The result is a plain transformers model: `save_pretrained` writes a directory that
`LlavaForConditionalGeneration.from_pretrained` and `AutoProcessor.from_pretrained` load without
vlx. Text-only logits of the assembled model equal those of the standalone LM.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    CLIPVisionModel,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from vlx.config import ModelConfig
from vlx.model import smol, tiny, trust
from vlx.model.llava import IMAGE_TOKEN, init_projector, llava_config, llava_processor
from vlx.model.presets import get_preset

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A vision tower, LLM or checkpoint that cannot be loaded; the message says what to give instead."""


def resolve(cfg: ModelConfig) -> ModelConfig:
    """Fill every unset field from the preset."""
    preset = get_preset(cfg.preset)
    values = dataclasses.asdict(cfg)
    for name in ("vision", "llm", "llm_gguf_file", "projector", "image_aspect_ratio", "template", "max_length"):
        if values[name] is None:
            values[name] = getattr(preset, name)
    return ModelConfig(**values)


def _check_path(source: str, what: str) -> None:
    """A source that is written as a path but does not exist: say so before the hub is tried."""
    if source.startswith(("/", "./", "../", "~")) and not Path(source).expanduser().exists():
        raise ModelLoadError(f"cannot load {what} {source!r}: no such directory. Give a local directory with "
                             f"the {what} (config.json + weights), a hub id, or the preset name 'tiny'.")


def _smol_dir(make) -> str:
    """The `smol` preset's cached weights (`vlx.model.smol`), fetched or trained on first use."""
    try:
        return str(make())
    except smol.SmolError as e:
        raise ModelLoadError(str(e)) from e


def _vision_class(source: str):
    """CLIPVisionModel, or SiglipVisionModel for a SigLIP checkpoint (a whole SigLIP or its vision part)."""
    from transformers import SiglipVisionModel

    from vlx.inputs import InputError, read_json

    config = Path(source) / "config.json"
    if config.is_file():
        try:
            model_type = read_json(config).get("model_type", "")
        except (InputError, AttributeError):
            model_type = ""
    else:  # a hub id: its name says
        model_type = "siglip" if "siglip" in source.lower() else ""
    return SiglipVisionModel if str(model_type).startswith("siglip") else CLIPVisionModel


def _load_vision(source: str, seed: int):
    """-> (CLIPVisionModel or SiglipVisionModel, image_mean, image_std)."""
    if source == "tiny":
        with torch.random.fork_rng():
            torch.manual_seed(seed + 1)
            return CLIPVisionModel(tiny.tiny_vision_config()).eval(), None, None
    if source == "smol-clip":
        source = _smol_dir(smol.vision_dir)
    _check_path(source, "vision tower")
    trust.check_dir(source, "vision tower")
    try:
        tower = _vision_class(source).from_pretrained(source, **trust.hub_kwargs())
    except Exception as e:  # noqa: BLE001 - transformers raises many types; all mean "cannot load"
        raise ModelLoadError(
            f"cannot load vision tower {source!r}: {e}\n"
            "Give a local directory with a CLIP or SigLIP vision model (config.json + weights), a hub id on a machine "
            "with network access, or the preset name 'tiny'."
        ) from e
    try:
        proc = CLIPImageProcessorPil.from_pretrained(source, trust_remote_code=trust.trust_remote_code())
        return tower.eval(), proc.image_mean, proc.image_std  # the tower's own statistics (SigLIP: 0.5, 0.5)
    except Exception:  # noqa: BLE001 - no preprocessor config: CLIP's own statistics
        return tower.eval(), None, None


def _load_llm(source: str, gguf_file: str | None, seed: int):
    """-> (causal LM, tokenizer)."""
    if source == "tiny":
        tokenizer = tiny.tiny_tokenizer()
        with torch.random.fork_rng():
            torch.manual_seed(seed + 2)
            lm = AutoModelForCausalLM.from_config(tiny.tiny_text_config(len(tokenizer)))
        return lm, tokenizer
    if source == "smol":
        source = _smol_dir(smol.llm_dir)
    _check_path(source, "LLM")
    if not gguf_file:  # a GGUF file holds tensors and metadata, no pickle and no code
        trust.check_dir(source, "LLM")
    kwargs = {"gguf_file": gguf_file} if gguf_file else trust.hub_kwargs()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust.trust_remote_code(),
                                                  **({"gguf_file": gguf_file} if gguf_file else {}))
        lm = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(
            f"cannot load LLM {source!r}{f' (gguf_file={gguf_file!r})' if gguf_file else ''}: {e}\n"
            "Give a local directory with a causal LM (config.json + weights, or a GGUF file with --llm-gguf-file), "
            "a hub id on a machine with network access, or the preset name 'tiny'."
        ) from e
    if getattr(lm.config, "quantization_config", None) is not None and gguf_file:
        # A GGUF-loaded model keeps its quantization_config and refuses save_pretrained:
        # rebuild from a clean config and copy the (dequantized) weights.
        config = lm.config
        del config.quantization_config
        clean = AutoModelForCausalLM.from_config(config)
        clean.load_state_dict(lm.state_dict())
        lm = clean
    return lm, tokenizer


def _add_tokens(lm, tokenizer) -> None:
    """Add `<image>` (and a pad token) if missing; new embedding rows start at the mean row."""
    added = []
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        added.append(IMAGE_TOKEN)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]} if added else {})
    if tokenizer.pad_token is None:
        # The reference uses unk as pad for Vicuna; Qwen/SmolLM2 have no unk and get a new token.
        if tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
    old = lm.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old:
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            emb = lm.get_input_embeddings().weight
            emb[old:] = emb[:old].mean(0, keepdim=True)
            out = lm.get_output_embeddings()
            if out is not None and out.weight.data_ptr() != emb.data_ptr():
                out.weight[old:] = out.weight[:old].mean(0, keepdim=True)


def build_llava(cfg: ModelConfig) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Build a LLaVA model and its processor from `cfg` (preset defaults fill unset fields)."""
    cfg = resolve(cfg)
    tower, mean, std = _load_vision(cfg.vision, cfg.seed)
    lm, tokenizer = _load_llm(cfg.llm, cfg.llm_gguf_file, cfg.seed)
    _add_tokens(lm, tokenizer)

    config = llava_config(tower.config, lm.config, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                          projector=cfg.projector)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        projector = LlavaMultiModalProjector(config)  # nn.Linear default init, as the reference
    init_projector(projector, cfg.projector)

    # Assemble on the meta device and move the loaded weights in: no second copy of a 7B model.
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(tower.state_dict(), assign=True)
    model.model.language_model.load_state_dict(lm.model.state_dict(), assign=True)
    model.model.multi_modal_projector.load_state_dict(projector.state_dict(), assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    else:
        model.lm_head.load_state_dict(lm.lm_head.state_dict(), assign=True)
    _materialize_buffers(model, tower, lm)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = _eos_ids(tokenizer, cfg.template)

    from vlx.data.templates import JINJA  # vlx.data.templates imports vlx.model: resolve at call time

    processor = llava_processor(tokenizer, tower.config, aspect_ratio=cfg.image_aspect_ratio,
                                chat_template=JINJA[cfg.template], image_mean=mean, image_std=std)
    return model.eval(), processor


def _materialize_buffers(model, tower, lm) -> None:
    """Non-persistent buffers (rotary inv_freq, CLIP position ids) are not in state dicts."""
    sources = {"model.vision_tower.": tower, "model.language_model.": lm.model}
    for name, buf in list(model.named_buffers()):
        if buf.device.type != "meta":
            continue
        for prefix, src in sources.items():
            if name.startswith(prefix):
                module_name, _, attr = name[len(prefix):].rpartition(".")
                src_buf = getattr(src.get_submodule(module_name), attr)
                owner = model.get_submodule(name.rpartition(".")[0])
                owner.register_buffer(attr, src_buf.clone(), persistent=False)
                break
        else:
            raise RuntimeError(f"buffer {name} was not initialised")


def _eos_ids(tokenizer, template: str) -> list[int]:
    ids = [tokenizer.eos_token_id]
    if template == "chatml" and "<|im_end|>" in tokenizer.get_vocab():
        ids.append(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return sorted(set(i for i in ids if i is not None))


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_checkpoint(source: str | Path) -> Path:
    """A local checkpoint directory as it is, or a hub id (`llava-hf/llava-1.5-7b-hf`) downloaded into
    the Hugging Face cache (safetensors, configs and tokenizer files; pickle weights only with
    `--allow-pickle`) -> its local directory."""
    path = Path(source).expanduser()
    if path.exists() or not HUB_ID.match(str(source)):
        return path
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
    if trust.allow_pickle():
        patterns.append("*.bin")
    try:
        return Path(snapshot_download(str(source), allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, gated: all mean "cannot fetch"
        raise ModelLoadError(f"cannot fetch {source!r} from the Hugging Face hub ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:200]}); on a machine with access run "
                             f"`huggingface-cli download {source} --local-dir DIR` and give DIR") from None


def load_llava(path: str | Path, *, dtype: torch.dtype = torch.float32):
    """Load a saved LLaVA directory or hub id (vlx run or any llava-hf checkpoint) -> (model, processor)."""
    path = resolve_checkpoint(path)
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} is not a model directory (no config.json); give a `vlx train-base` output "
                             "directory or a llava-hf checkpoint")
    trust.check_dir(path, "model")
    from vlx.inputs import InputError, read_json

    try:
        model_type = read_json(path / "config.json").get("model_type")
    except (InputError, AttributeError) as e:
        raise ModelLoadError(f"{path}/config.json is not a model config ({e}); the checkpoint is damaged: "
                             "copy it again or re-save it with save_pretrained") from None
    from vlx.model.families import family_of

    family_of(model_type)  # a family vlx cannot run yet is refused here, in one line
    if model_type != "llava":
        raise ModelLoadError(f"{path} holds a {model_type!r} model, not a LLaVA checkpoint")
    try:
        model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype, **trust.hub_kwargs())
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust.trust_remote_code())
    except Exception as e:  # noqa: BLE001 - transformers/safetensors raise many types; all mean "cannot load"
        raise ModelLoadError(f"cannot load the checkpoint in {path} ({type(e).__name__}: {' '.join(str(e).split())[:300]}); "
                             "it is incomplete or damaged: copy it again, or rerun the command that wrote it") from None
    return model.eval(), processor
