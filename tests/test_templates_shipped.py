"""Everything shipped in templates/ parses, and the paper presets match their YAML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vlx.config import DataConfig, ModelConfig, TrainConfig, load_yaml, merge
from vlx.data.formats import read_sources
from vlx.model.presets import get_preset

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
SECTIONS = {"model": ModelConfig, "data": DataConfig, "stage1": TrainConfig, "stage2": TrainConfig}


@pytest.mark.parametrize("name", ["llava-1.5-7b", "llava-1.5-13b"])
def test_paper_yaml_matches_preset(name):
    cfg = load_yaml(TEMPLATES / f"{name}.yaml", SECTIONS)
    preset = get_preset(name)
    assert cfg["model"]["preset"] == name
    assert cfg["model"]["vision"] == preset.vision and cfg["model"]["llm"] == preset.llm
    for stage in ("stage1", "stage2"):
        from_yaml = merge(TrainConfig, cfg[stage])
        from_preset = merge(TrainConfig, getattr(preset, stage))
        assert from_yaml == from_preset, stage
    # The paper's numbers, spelled out once more so a typo in both places is caught.
    assert cfg["stage1"]["learning_rate"] == 1e-3 and cfg["stage1"]["global_batch_size"] == 256
    assert cfg["stage2"]["learning_rate"] == 2e-5 and cfg["stage2"]["global_batch_size"] == 128


def test_distributed_configs_parse():
    for path in (TEMPLATES / "deepspeed").glob("*.json"):
        stage = json.loads(path.read_text())["zero_optimization"]["stage"]
        assert path.stem == f"zero{stage}"
    assert "transformer_layer_cls_to_wrap" in json.loads((TEMPLATES / "fsdp" / "fsdp.json").read_text())
    for path in (TEMPLATES / "accelerate").glob("*.yaml"):
        assert yaml.safe_load(path.read_text())["distributed_type"] == "MULTI_GPU"


def test_mix665k_mixture_parses():
    sources = read_sources(TEMPLATES / "mix665k.yaml")
    assert len(sources) == 10
    prompts = {s.name: s.format_prompt for s in sources}
    assert prompts["vqav2_83k"] == "Answer the question using a single word or phrase."
    assert prompts["aokvqa_66k"] == "Answer with the option's letter from the given choices directly."
    assert prompts["llava_158k"] is None
