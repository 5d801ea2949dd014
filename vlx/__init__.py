"""vlx: train, fine-tune and run vision-language models the LLaVA-1.5 way.

    import vlx
    scene = vlx.extract("shop.jpg", model="runs/poi")          # a validated pydantic object
    vlx.train_base(...), vlx.finetune(...), vlx.run_demo(...)  # the recipes behind the CLI
"""

import importlib

from vlx.api import Extractor, ImageError, extract, load
from vlx.config import DataConfig, FinetuneDataConfig, LoraConfig, ModelConfig, TrainConfig
from vlx.decode import ExtractionError
from vlx.model import PRESETS, build_llava, load_llava
from vlx.schema import canonical_json, format_prompt, load_schema, validate_rows

__version__ = "0.1.0"

# Recipes and evaluation pull in the Trainer and friends: imported on first use.
_LAZY = {
    "train_base": "vlx.train.base",
    "finetune": "vlx.train.finetune",
    "export_merged": "vlx.export",
    "run_demo": "vlx.demo",
    "run_benchmark": "vlx.eval.benchmarks",
    "evaluate_run": "vlx.eval.extraction",
    "evaluate_chat": "vlx.eval.chat",
    "field_metrics": "vlx.eval.fields",
    "synth_captions": "vlx.data.synth",
    "synth_instruct": "vlx.data.synth",
    "synth_poi": "vlx.data.synth",
    "synth_chat": "vlx.data.synth",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlx' has no attribute {name!r}")


__all__ = ["DataConfig", "FinetuneDataConfig", "LoraConfig", "ModelConfig", "TrainConfig", "PRESETS",
           "build_llava", "load_llava", "Extractor", "ImageError", "extract", "load", "ExtractionError",
           "canonical_json", "format_prompt", "load_schema", "validate_rows", "__version__", *_LAZY]
