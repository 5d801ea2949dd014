"""Model assembly: presets, LLaVA-1.5 quirks, building and loading."""

from vlx.model.build import ModelLoadError, build_llava, load_llava, resolve
from vlx.model.llava import IMAGE_TOKEN, image_processor, num_image_tokens
from vlx.model.presets import PRESETS, Preset, get_preset

__all__ = ["ModelLoadError", "build_llava", "load_llava", "resolve", "IMAGE_TOKEN", "image_processor",
           "num_image_tokens", "PRESETS", "Preset", "get_preset"]
