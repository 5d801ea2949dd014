"""Frozen-tower feature cache: the vision tower runs once per image, not once per epoch, stage or run.

    cache = FeatureCache("~/.cache/vlx-features", model, processor.image_processor, precision="bf16")
    dataset = CachedFeatureDataset(llava_dataset, cache)     # rows carry `vision_features`, no pixels
    fill_feature_cache(dataset, model)                        # computes only what is missing
    with vision_feature_input(model):                         # the model accepts `vision_features=`
        loss = model(**collator([dataset[0], dataset[1]])).loss

The vision tower is frozen in both LLaVA-1.5 stages and in task fine-tuning, so what the projector
consumes (the second-to-last layer, CLS dropped: 576 x 1024 per image for ViT-L/14-336) is a pure
function of the image bytes, the tower weights and the preprocessing. It is stored once and read back
in every later epoch; the projector (trainable) still runs in every step, so its gradients are the
same as without the cache.

Layout: `ROOT/<namespace>/*.safetensors` plus `ROOT/<namespace>/meta.json`. The namespace is a hash
of the tower (weights, config, feature layer and selection), the image-processor configuration, the
compute precision and the stored dtype: change any of them and lookups go to a fresh, empty namespace
(the old one can be deleted). Inside, each tensor is named by the SHA-256 of the image's bytes, so an
edited image is a miss too. Shards are written under a temporary name and renamed into place when
complete; each process writes only its own shards, and in a distributed fill each process computes a
disjoint slice of the missing keys, so no two writers ever touch one file. Two runs filling one cache
at the same time can at worst compute an image twice; any copy is valid.

Size: 2 bytes x tokens x width per image in bf16 (1.2 MB for LLaVA-1.5: 660 GB for the 558K
stage-1 images), 4 bytes in fp32.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from transformers.modeling_outputs import BaseModelOutputWithPooling

from vlx.config import ConfigError
from vlx.data.dataset import LlavaDataset, open_image

log = logging.getLogger(__name__)

FEATURE_KWARG = "vision_features"
"""Batch key and model keyword for cached tower features: (n_images, tokens, width)."""

SHARD_BYTES = 512 << 20
"""A shard is written once this many feature bytes are buffered (and at the end of a fill)."""

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


# --- keys -------------------------------------------------------------------------------------


def image_key(image: Any) -> str:
    """SHA-256 of an image's content: the file's bytes, raw bytes, or a PIL image's mode, size and pixels."""
    h = hashlib.sha256()
    if isinstance(image, Image.Image):
        h.update(f"{image.mode}:{image.width}x{image.height}:".encode())
        h.update(image.tobytes())
    elif isinstance(image, (bytes, bytearray)):
        h.update(image)
    else:
        with open(image, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def tower_fingerprint(model) -> str:
    """Hash of what decides the features: tower weights and config, feature layer and selection."""
    config = model.config
    if any(hasattr(p, "ds_id") for p in model.model.vision_tower.parameters()):
        # DeepSpeed ZeRO-3 has partitioned the weights: each process holds a slice, so neither the hash nor
        # the features would be those of the tower.
        raise ConfigError("the feature cache needs the vision tower's full weights, but DeepSpeed ZeRO-3 has "
                         "partitioned them; run stage 2 as its own command (--stage 2 --init-from OUT/stage1)")
    h = hashlib.sha256()
    h.update(json.dumps({"vision_config": config.vision_config.to_dict(),
                         "layer": config.vision_feature_layer,
                         "select": config.vision_feature_select_strategy}, sort_keys=True, default=str).encode())
    for name, t in sorted(model.model.vision_tower.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def processor_fingerprint(image_processor) -> str:
    return hashlib.sha256(json.dumps(image_processor.to_dict(), sort_keys=True, default=str).encode()).hexdigest()


# --- the features themselves -------------------------------------------------------------------


@torch.no_grad()
def select_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(n, 3, S, S) pixels -> (n, tokens, width): exactly what `LlavaModel.get_image_features` feeds its
    projector (hidden state `vision_feature_layer`, CLS dropped under the `default` strategy; several
    layers concatenated along the width). Kept in step with transformers by the cache's equality test."""
    config = model.config
    tower = model.model.vision_tower
    hidden = tower(pixel_values.to(tower.dtype), output_hidden_states=True, return_dict=True).hidden_states
    layers = config.vision_feature_layer if isinstance(config.vision_feature_layer, (list, tuple)) \
        else [config.vision_feature_layer]
    chosen = [hidden[i][:, 1:] if config.vision_feature_select_strategy == "default" else hidden[i] for i in layers]
    return torch.cat(chosen, dim=-1)


# --- the store ---------------------------------------------------------------------------------


class FeatureCache:
    """Cached tower features for one (tower, preprocessing, precision) under `root`."""

    def __init__(self, root: str | Path, model, image_processor, *, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}: use one of {', '.join(PRECISIONS)}")
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.processor_hash = processor_fingerprint(image_processor)
        meta = {"tower": tower_fingerprint(model), "image_processor": self.processor_hash,
                "precision": precision, "dtype": str(self.dtype), "format": 1}
        namespace = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:20]
        self.dir = Path(root).expanduser() / namespace
        self.dir.mkdir(parents=True, exist_ok=True)
        meta_path = self.dir / "meta.json"
        if not meta_path.exists():
            tmp = self.dir / f".meta.{uuid.uuid4().hex}.tmp"
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
            os.replace(tmp, meta_path)
        self.index: dict[str, str] = {}
        self._handles: dict[str, Any] = {}
        self.refresh()

    def refresh(self) -> None:
        """Re-read which keys the shards on disk hold (after a fill by this or another process)."""
        index: dict[str, str] = {}
        for shard in sorted(self.dir.glob("*.safetensors")):
            with safe_open(shard, framework="pt") as f:
                for key in f.keys():
                    index.setdefault(key, shard.name)
        self.index = index

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def __len__(self) -> int:
        return len(self.index)

    def get(self, key: str) -> torch.Tensor:
        """(tokens, width) features of the image with content hash `key`."""
        shard = self.index.get(key)
        if shard is None:
            raise KeyError(f"image {key[:12]}... is not in the feature cache {self.dir}; was it filled?")
        handle = self._handles.get(shard)
        if handle is None:
            handle = self._handles[shard] = safe_open(self.dir / shard, framework="pt")
        return handle.get_tensor(key)

    def write(self, features: dict[str, torch.Tensor]) -> Path | None:
        """Write one shard atomically: a temporary name, then a rename; readers never see a partial file."""
        if not features:
            return None
        name = f"{uuid.uuid4().hex}.safetensors"
        tmp = self.dir / f".{name}.tmp"
        save_file({k: v.to("cpu", self.dtype).contiguous() for k, v in features.items()}, str(tmp))
        os.replace(tmp, self.dir / name)
        for key in features:
            self.index.setdefault(key, name)
        return self.dir / name

    def __getstate__(self):  # DataLoader workers open their own memory maps
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state


class CachedFeatureDataset(torch.utils.data.Dataset):
    """A `LlavaDataset` whose image rows carry cached `vision_features` instead of `pixel_values`.

    Image content hashes are computed once here (threads: hashing releases the GIL), so `__getitem__`
    reads no image at all: one memory-mapped tensor per image row.
    """

    def __init__(self, dataset: LlavaDataset, cache: FeatureCache, *, hash_threads: int = 8):
        if processor_fingerprint(dataset.image_processor) != cache.processor_hash:
            raise ValueError("the dataset preprocesses images differently from the feature cache's image processor")
        self.dataset = dataset
        self.cache = cache
        images = [(i, ex.image) for i, ex in enumerate(dataset.examples) if ex.has_image]
        with ThreadPoolExecutor(hash_threads) as pool:
            keys = list(pool.map(image_key, (img for _, img in images)))
        self.keys: dict[int, str] = {i: k for (i, _), k in zip(images, keys)}

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def examples(self):
        return self.dataset.examples

    @property
    def lengths(self) -> list[int]:
        return self.dataset.lengths

    def missing(self) -> list[tuple[str, int]]:
        """(key, example index) for each distinct image not yet cached, in a stable order."""
        seen, out = set(), []
        for i, key in sorted(self.keys.items()):
            if key not in self.cache and key not in seen:
                seen.add(key)
                out.append((key, i))
        return out

    def __getitem__(self, i: int) -> dict:
        ex = self.dataset.examples[i]
        item = {"input_ids": ex.input_ids, "labels": ex.labels, "pixel_values": None, "source": ex.source}
        if ex.has_image:
            item[FEATURE_KWARG] = self.cache.get(self.keys[i])
        return item


def fill_feature_cache(dataset: CachedFeatureDataset, model, *, batch_size: int = 32, device: str | None = None,
                       rank: int = 0, world_size: int = 1, barrier: Callable[[], None] | None = None) -> int:
    """Compute and store the features of every image not yet cached -> how many this process computed.

    With `world_size` processes each computes every `world_size`-th missing image (one writer per
    key), then `barrier` waits for all and every process re-reads the index. The tower runs under
    bf16 autocast when the cache's precision is bf16, like the training forward it replaces.
    """
    if world_size == 1 and dataset.missing():
        # Another process filling the same cache (a second run on the same data): one computes,
        # the other waits and then reads its shards. Ranks of one job split the work instead.
        from vlx.run import entry_lock

        with entry_lock(dataset.cache.dir, f"the feature cache {dataset.cache.dir}"):
            dataset.cache.refresh()
            return _fill(dataset, model, batch_size, device, rank, world_size, barrier)
    return _fill(dataset, model, batch_size, device, rank, world_size, barrier)


def _fill(dataset, model, batch_size, device, rank, world_size, barrier) -> int:
    cache = dataset.cache
    todo = dataset.missing()[rank::world_size]
    tower = model.model.vision_tower
    home = next(tower.parameters()).device
    device = torch.device(device) if device is not None else home
    if todo:
        log.info("feature cache %s: computing %d image(s) on %s", cache.dir, len(todo), device)
        tower.to(device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cache.precision == "bf16" \
            else contextlib.nullcontext()
        buffered: dict[str, torch.Tensor] = {}
        nbytes = 0
        try:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                pixels = torch.stack([_pixels(dataset.dataset, i) for _, i in chunk]).to(device)
                with autocast:
                    feats = select_features(model, pixels)
                for (key, _), f in zip(chunk, feats):
                    buffered[key] = f.to("cpu", cache.dtype)
                    nbytes += buffered[key].numel() * buffered[key].element_size()
                if nbytes >= SHARD_BYTES:
                    cache.write(buffered)
                    buffered, nbytes = {}, 0
            cache.write(buffered)
        finally:
            tower.to(home)
    if barrier is not None:
        barrier()
    cache.refresh()
    absent = len(dataset.missing())
    if absent:
        raise RuntimeError(f"feature cache {cache.dir}: {absent} image(s) still missing after the fill; "
                           "is the directory shared by every process?")
    return len(todo)


def _pixels(dataset: LlavaDataset, i: int) -> torch.Tensor:
    ex = dataset.examples[i]
    img = open_image(ex.image, origin=ex.origin)
    return dataset.image_processor(img, return_tensors="pt")["pixel_values"][0]


# --- feeding cached features to the model ------------------------------------------------------


def _project_cached(module, args, kwargs):
    """Forward pre-hook on `LlavaModel`: `vision_features=` -> the projector -> `mm_encoder_outputs`.

    transformers' `LlavaModel.forward` accepts precomputed *projected* image features as
    `mm_encoder_outputs` but has no input for tower features, so the projector is applied here. The
    hook sits on the inner `LlavaModel`, so it runs inside the outer forward: under the same autocast
    as the uncached path, and inside DDP's / DeepSpeed's forward, so the projector's gradients are
    reduced (and, under ZeRO-3, its weights gathered) as usual.
    """
    feats = kwargs.pop(FEATURE_KWARG, None)
    if feats is None:
        return args, kwargs
    projector = module.multi_modal_projector
    projected = projector(feats.to(projector.linear_1.weight.dtype))  # (n_images, tokens, hidden)
    kwargs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=list(projected))}
    return args, kwargs


@contextlib.contextmanager
def vision_feature_input(model):
    """While active, `model(..., vision_features=F)` uses F (n_images, tokens, width) in place of the tower."""
    inner = model.model
    handle = inner.register_forward_pre_hook(_project_cached, with_kwargs=True)
    try:
        yield model
    finally:
        handle.remove()
