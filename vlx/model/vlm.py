"""Checkpoints of any image-text-to-text family, loaded the transformers way (`AutoModelForImageTextToText`).

    model, processor = load_vlm("Qwen/Qwen2-VL-2B-Instruct")   # a hub id or a local directory

The processor comes from `AutoProcessor`; where that fails because the checkpoint's processor names
a video processor and this machine has no torchvision (Qwen-family processors do), it is rebuilt
from the checkpoint's image processor, tokenizer and chat template alone (`without_video`): images
work as on the hub, videos are refused.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import torch

from vlx.model import trust


class VideoUnavailable(RuntimeError):
    pass


@functools.cache
def without_video(processor_cls):
    """`processor_cls` with no video processor: its attributes are the image processor and the tokenizer.

    transformers derives a processor's parts from its `__init__` signature; this subclass's takes
    no `video_processor`, so the family's own `__init__` runs unchanged and the missing part is
    neither looked up nor saved.
    """
    # SmolVLM's `__init__` requires a video processor argument (None passes: transformers keeps only the
    # parts the signature names), and its `apply_chat_template` reads the video processor's frame
    # defaults even for a chat without videos: a class-level stand-in answers them (never saved).
    param = inspect.signature(processor_cls.__init__).parameters.get("video_processor")
    required = {"video_processor": None} if param is not None and param.default is inspect.Parameter.empty else {}

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        processor_cls.__init__(self, image_processor=image_processor, tokenizer=tokenizer,
                               chat_template=chat_template, **required, **kwargs)

    # The family's signature less `video_processor`: transformers reads the parts and the settings it
    # saves (SmolVLM's `image_seq_len`) from it.
    signature = inspect.signature(processor_cls.__init__)
    __init__.__signature__ = signature.replace(
        parameters=[p for name, p in signature.parameters.items() if name != "video_processor"])

    # The family's own name: `save_pretrained` records it as `processor_class`, as the hub's files do.
    body = {"__init__": __init__, "__module__": __name__}
    if required:
        body["video_processor"] = _NoVideo()
    return type(processor_cls.__name__, (processor_cls,), body)


class _NoVideo:
    """The video processor of a processor built `without_video`: no frame defaults, and no videos."""

    num_frames = None
    fps = None

    def __call__(self, *args, **kwargs):
        raise VideoUnavailable("videos need torchvision (pip install torchvision matching your torch build)")


def load_processor(path: str | Path):
    """`AutoProcessor.from_pretrained`, or the same processor without its video part (see the module doc).
    A checkpoint that ships no chat template (InstructBLIP, BLIP-2) gets its family's (`Family.chat_template`),
    which a fine-tune run then saves with its processor."""
    processor = _load_processor(path)
    if not getattr(processor, "chat_template", None):
        from vlx.inputs import read_json
        from vlx.model.families import FAMILIES

        saved = Path(path) / "chat_template.jinja"
        config = Path(path) / "config.json"
        model_type = read_json(config).get("model_type") if config.is_file() else None
        family = FAMILIES.get(model_type)
        if saved.is_file():  # InstructBlipProcessor's __init__ drops the template it was saved with
            processor.chat_template = saved.read_text(encoding="utf-8")
        elif family is not None and family.chat_template:
            processor.chat_template = family.chat_template
    return processor


def _load_processor(path: str | Path):
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    kwargs = {"trust_remote_code": trust.trust_remote_code()}
    try:
        processor = AutoProcessor.from_pretrained(path, **kwargs)
        if not hasattr(processor, "image_processor"):  # AutoProcessor falls back to the bare tokenizer
            raise VideoUnavailable(f"AutoProcessor gave a {type(processor).__name__}, not a processor with images")
        return processor
    except Exception as first:  # noqa: BLE001 - any failure: try the image-only build, else report the first
        import transformers

        from vlx.inputs import InputError, read_json

        try:
            # transformers 5 writes processor_config.json; hub repositories of earlier years carry the
            # class in preprocessor_config.json and the template in chat_template.json.
            path = Path(path)
            names = [n for n in ("processor_config.json", "preprocessor_config.json") if (path / n).is_file()]
            configs = [read_json(path / n) for n in names]
            config = next(c for c in configs if isinstance(c, dict) and c.get("processor_class"))
            cls = getattr(transformers, config["processor_class"])
            if (path / "chat_template.jinja").is_file():
                template = (path / "chat_template.jinja").read_text(encoding="utf-8")
            elif (path / "chat_template.json").is_file():
                template = read_json(path / "chat_template.json").get("chat_template")
            else:
                template = config.get("chat_template")
            built = without_video(cls)
            # The processor's own settings (SmolVLM's `image_seq_len`), as `from_pretrained` would pass them.
            accepted = set(inspect.signature(built.__init__).parameters) - {"self", "image_processor", "tokenizer",
                                                                             "chat_template", "kwargs"}
            settings = {k: v for k, v in config.items() if k in accepted}
            return built(image_processor=AutoImageProcessor.from_pretrained(path, **kwargs),
                         tokenizer=AutoTokenizer.from_pretrained(path, **kwargs), chat_template=template, **settings)
        except (InputError, KeyError, AttributeError, TypeError, ValueError, OSError, StopIteration):
            raise first from None


def load_vlm(path: str | Path, *, dtype: torch.dtype = torch.float32, use: str = "extract"):
    """(model, processor) of an image-text-to-text checkpoint of a family in the table (`vlx.model.families`)
    that vlx can `use` (`extract` or `finetune`)."""
    from transformers import AutoModelForImageTextToText

    from vlx.model.build import ModelLoadError, resolve_checkpoint
    from vlx.model.families import family_of_checkpoint

    path = resolve_checkpoint(path)
    trust.check_dir(path, "model")
    family_of_checkpoint(path, use=use)
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, **trust.hub_kwargs())
        processor = load_processor(path)
    except Exception as e:  # noqa: BLE001 - transformers/safetensors raise many types; all mean "cannot load"
        raise ModelLoadError(f"cannot load the checkpoint in {path} ({type(e).__name__}: {' '.join(str(e).split())[:300]}); "
                             "it is incomplete or damaged: copy it again, or rerun the command that wrote it") from None
    return model.eval(), processor


def check_pixel_budget(family, min_pixels: int | None, max_pixels: int | None) -> None:
    """Refuse `--min-pixels` / `--max-pixels` for a family without a pixel budget (before anything loads)."""
    from vlx.config import ConfigError

    if (min_pixels is not None or max_pixels is not None) and not family.pixel_budget:
        raise ConfigError(f"--min-pixels / --max-pixels: {family.model_type!r} checkpoints resize every image to a "
                          "fixed size (no pixel budget to set); drop the flags")


def set_pixel_budget(processor, family, min_pixels: int | None, max_pixels: int | None) -> None:
    """Set the image processor's pixel range (`--min-pixels` / `--max-pixels`) where the family has one."""
    check_pixel_budget(family, min_pixels, max_pixels)
    if min_pixels is None and max_pixels is None:
        return
    from vlx.config import ConfigError

    size = dict(processor.image_processor.size)
    lo = min_pixels if min_pixels is not None else size["shortest_edge"]
    hi = max_pixels if max_pixels is not None else size["longest_edge"]
    if lo > hi:
        raise ConfigError(f"--min-pixels {lo} is above the maximum {hi} (the checkpoint's, or --max-pixels)")
    processor.image_processor.size = {"shortest_edge": lo, "longest_edge": hi}


def load_checkpoint(path: str | Path, *, dtype: torch.dtype = torch.float32, use: str = "extract"):
    """(model, processor) of any checkpoint in the family table: LLaVA ones (vlx runs, llava-hf) through
    `vlx.model.build.load_llava`, every other family through `load_vlm`."""
    from vlx.model.build import load_llava, resolve_checkpoint
    from vlx.model.families import family_of_checkpoint

    path = resolve_checkpoint(path)
    if family_of_checkpoint(path, use=use).inputs == "template":
        return load_llava(path, dtype=dtype)
    return load_vlm(path, dtype=dtype, use=use)


def load_run_base(run: str | Path, info, *, dtype: torch.dtype = torch.float32, use: str = "extract"):
    """(base model, processor) of a fine-tune run: the checkpoint it trained on, with the run's own
    processor where it saved one (its pixel budget and template, as it trained)."""
    from vlx.model.build import ModelLoadError

    run = Path(run)
    if not info.base:
        raise ModelLoadError(f"{run}/vlx_run.json names no base model; the run is incomplete")
    base = Path(info.base)
    if not base.is_absolute() and not base.exists():
        base = run / base
    if not (run / "adapter").is_dir():
        raise ModelLoadError(f"{run} is a finetune run without its adapter/ directory; the run is incomplete")
    model, processor = load_checkpoint(base, dtype=dtype, use=use)
    if (run / "tokenizer_config.json").exists() or (run / "processor_config.json").exists():
        processor = load_processor(run)
    trust.check_dir(run / "adapter", "adapter")
    return model, processor


__all__ = ["without_video", "load_processor", "load_vlm", "load_checkpoint", "check_pixel_budget", "set_pixel_budget", "load_run_base"]
