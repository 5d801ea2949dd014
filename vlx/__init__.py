"""vlx: train, fine-tune and run vision-language models the LLaVA-1.5 way."""

from vlx.config import DataConfig, ModelConfig, TrainConfig
from vlx.model import PRESETS, build_llava, load_llava
from vlx.api import Extractor, ImageError, extract, load
from vlx.decode import ExtractionError
from vlx.schema import canonical_json, format_prompt, load_schema

__version__ = "0.1.0"
__all__ = ["DataConfig", "ModelConfig", "TrainConfig", "PRESETS", "build_llava", "load_llava", "__version__",
           "Extractor", "ImageError", "extract", "load", "ExtractionError", "canonical_json", "format_prompt",
           "load_schema"]
