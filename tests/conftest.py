"""Shared fixtures: the tiny preset and a few hand-written rows with solid-colour images."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from PIL import Image

os.environ.setdefault("VLX_PRECISION", "fp32")  # tests compare numbers: fixed precision
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 20)}


@pytest.fixture(scope="session")
def tiny():
    """(model, processor) of the tiny preset; do not mutate, copy with `copy.deepcopy`."""
    from vlx import ModelConfig, build_llava

    return build_llava(ModelConfig(preset="tiny"))


@pytest.fixture
def trainable(tiny):
    """A trainable copy of the tiny model: everything but the vision tower, as in LLaVA stage 2."""
    model = copy.deepcopy(tiny[0]).train()
    for name, p in model.named_parameters():
        p.requires_grad_("vision_tower" not in name)
    return model


@pytest.fixture(scope="session")
def colour_data(tmp_path_factory):
    """A folder with 16 solid-colour images, caption rows (stage 1) and instruction rows (stage 2)."""
    d = tmp_path_factory.mktemp("colours")
    captions, instruct = [], []
    names = list(COLOURS)
    for i in range(16):
        c = names[i % len(names)]
        Image.new("RGB", (40 + i, 30), COLOURS[c]).save(d / f"img{i}.png")
        captions.append({"id": f"c{i}", "image": f"img{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image briefly."},
            {"from": "gpt", "value": f"a {c} square"}]})
        instruct.append({"id": f"q{i}", "image": f"img{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the image?"},
            {"from": "gpt", "value": c}]})
    instruct += [{"id": f"t{i}", "conversations": [
        {"from": "human", "value": "Say hello."}, {"from": "gpt", "value": "Hello there!"}]} for i in range(4)]
    (d / "captions.json").write_text(json.dumps(captions))
    (d / "instruct.json").write_text(json.dumps(instruct))
    return d


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The test models are tiny: their matmuls are too small to split, and on a busy 2-core machine
    two intra-op threads mostly wait on each other (generation was measured 10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def logits(model, processor, text="USER: <image>\nWhat is it? ASSISTANT:", image=None):
    image = image if image is not None else Image.new("RGB", (36, 28), (200, 50, 50))
    inputs = processor(images=image, text=text, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits
