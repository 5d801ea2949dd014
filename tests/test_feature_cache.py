"""Frozen-tower feature cache: same loss and gradients as the tower, keyed and invalidated correctly,
one writer per key, and `train-base --feature-cache` logging the losses of the uncached run."""

from __future__ import annotations

import copy
import json
import shutil
import threading

import pytest
import torch
from PIL import Image

from vlx.data.dataset import Collator, LlavaDataset, prepare
from vlx.data.feature_cache import (
    FEATURE_KWARG,
    CachedFeatureDataset,
    FeatureCache,
    fill_feature_cache,
    image_key,
    vision_feature_input,
)
from vlx.data.formats import load_rows


def _dataset(tiny, data_file, image_processor=None) -> LlavaDataset:
    model, processor = tiny
    rows = load_rows(str(data_file))
    examples, bad = prepare(rows, processor.tokenizer, template="vicuna_v1", image_token_id=model.config.image_token_id,
                            num_image_tokens=model.config.image_seq_length, max_length=256)
    assert not bad
    return LlavaDataset(examples, image_processor or processor.image_processor)


def test_cached_features_give_the_same_loss_and_gradients(tiny, trainable, colour_data, tmp_path):
    dataset = _dataset(tiny, colour_data / "instruct.json")
    cached = CachedFeatureDataset(dataset, FeatureCache(tmp_path, trainable, tiny[1].image_processor))
    assert fill_feature_cache(cached, trainable) == 16
    rows = [0, 5, 16, 2]  # image rows and a text-only row
    collate = Collator(tiny[1].tokenizer.pad_token_id)
    plain, from_cache = collate([dataset[i] for i in rows]), collate([cached[i] for i in rows])
    assert "pixel_values" in plain and "pixel_values" not in from_cache
    assert from_cache[FEATURE_KWARG].shape == (3, trainable.config.image_seq_length,
                                               trainable.config.vision_config.hidden_size)

    def loss_and_grads(batch):
        trainable.zero_grad()
        loss = trainable(**batch).loss
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in trainable.named_parameters() if p.grad is not None}

    loss_a, grads_a = loss_and_grads(plain)
    with vision_feature_input(trainable):
        loss_b, grads_b = loss_and_grads(from_cache)
    assert loss_b == pytest.approx(loss_a, rel=1e-6)
    assert set(grads_a) == set(grads_b)
    projector = [n for n in grads_a if "multi_modal_projector" in n]
    assert len(projector) == 4 and all(grads_a[n].abs().sum() > 0 for n in projector)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-7, msg=name)
    # Outside the context the model is untouched: a stray `vision_features` reaches no projector.
    assert not trainable.model._forward_pre_hooks


def test_each_image_is_computed_once_across_runs_and_duplicates(tiny, colour_data, tmp_path):
    model = tiny[0]
    dataset = _dataset(tiny, colour_data / "captions.json")
    dataset.examples = dataset.examples + dataset.examples[:3]  # the same image files again
    first = CachedFeatureDataset(dataset, FeatureCache(tmp_path, model, tiny[1].image_processor))
    assert len(first.missing()) == 16
    assert fill_feature_cache(first, model) == 16
    again = CachedFeatureDataset(dataset, FeatureCache(tmp_path, model, tiny[1].image_processor))
    assert again.missing() == [] and fill_feature_cache(again, model) == 0
    assert torch.equal(again[17][FEATURE_KWARG], again[1][FEATURE_KWARG])
    # No temporary files left; the fill's (empty) lock file beside the cache is kept by filelock.
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".") and not (p.suffix == ".lock" and not p.stat().st_size)]


def test_changed_tower_processor_or_image_is_a_miss(tiny, colour_data, tmp_path):
    model, processor = tiny
    images = tmp_path / "data"
    shutil.copytree(colour_data, images)
    dataset = _dataset(tiny, images / "captions.json")
    base = FeatureCache(tmp_path / "cache", model, processor.image_processor)
    fill_feature_cache(CachedFeatureDataset(dataset, base), model)

    other_tower = copy.deepcopy(model)
    with torch.no_grad():
        other_tower.model.vision_tower.encoder.layers[0].layer_norm1.weight.add_(0.5)
    assert FeatureCache(tmp_path / "cache", other_tower, processor.image_processor).dir != base.dir
    assert FeatureCache(tmp_path / "cache", model, processor.image_processor, precision="bf16").dir != base.dir
    other_processor = copy.deepcopy(processor.image_processor)
    other_processor.image_mean = [0.5, 0.5, 0.5]
    moved = FeatureCache(tmp_path / "cache", model, other_processor)
    assert moved.dir != base.dir and len(moved) == 0
    with pytest.raises(ValueError, match="preprocesses images differently"):
        CachedFeatureDataset(dataset, moved)  # features of one preprocessing never serve another

    Image.new("RGB", (40, 30), (1, 2, 3)).save(images / "img4.png")  # same path, new content
    again = CachedFeatureDataset(dataset, FeatureCache(tmp_path / "cache", model, processor.image_processor))
    assert [again.examples[i].image for _, i in again.missing()] == [str(images / "img4.png")]
    assert image_key(images / "img4.png") == image_key((images / "img4.png").read_bytes())


def test_processes_fill_disjoint_slices_and_ignore_partial_files(tiny, colour_data, tmp_path):
    model = tiny[0]
    dataset = _dataset(tiny, colour_data / "captions.json")
    cache0 = FeatureCache(tmp_path, model, tiny[1].image_processor)
    (cache0.dir / ".deadbeef.safetensors.tmp").write_bytes(b"half a shard")  # a writer killed mid-write
    cache0.refresh()
    assert len(cache0) == 0

    barrier = threading.Barrier(2)
    computed, errors = {}, []

    def rank(r):
        try:
            cached = CachedFeatureDataset(dataset, FeatureCache(tmp_path, model, tiny[1].image_processor))
            computed[r] = fill_feature_cache(cached, model, rank=r, world_size=2, barrier=barrier.wait)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert computed == {0: 8, 1: 8}
    writers: dict[str, int] = {}
    from safetensors import safe_open

    for shard in cache0.dir.glob("*.safetensors"):
        with safe_open(shard, framework="pt") as f:
            for key in f.keys():
                writers[key] = writers.get(key, 0) + 1
    assert len(writers) == 16 and set(writers.values()) == {1}  # one writer per key


def test_train_base_with_cache_and_packing_logs_the_uncached_losses(colour_data, tmp_path):
    from typer.testing import CliRunner

    from vlx.cli import app

    runner = CliRunner()
    common = ["train-base", "--preset", "tiny", "--stage1-data", str(colour_data / "captions.json"),
              "--stage2-data", str(colour_data / "instruct.json"), "--max-steps", "2",
              "--global-batch-size", "4", "--per-device-batch-size", "4"]
    losses = {}
    for name, extra in (("plain", []), ("fast", ["--feature-cache", str(tmp_path / "features"), "--packing"])):
        result = runner.invoke(app, [*common, "--out", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output + repr(result.exception)
        losses[name] = [(e["stage"], e["step"], e["loss"]) for e in
                        map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines()) if "loss" in e]
    assert [k[:2] for k in losses["plain"]] == [("stage1", 1), ("stage1", 2), ("stage2", 1), ("stage2", 2)]
    for (_, _, a), (_, _, b) in zip(losses["plain"], losses["fast"]):
        assert b == pytest.approx(a, rel=1e-5)
    assert len(list((tmp_path / "features").glob("*/*.safetensors"))) >= 1


def test_no_feature_cache_overrides_the_config_file(colour_data, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import vlx.train.base
    from vlx.cli import app

    seen = {}
    monkeypatch.setattr(vlx.train.base, "train_base", lambda model_cfg, data_cfg, *a, **kw: seen.setdefault("data", data_cfg) and tmp_path)
    (tmp_path / "c.yaml").write_text(f"data:\n  feature_cache: {tmp_path / 'features'}\n  packing: true\n")
    args = ["train-base", "--stage1-data", str(colour_data / "captions.json"), "--stage", "1", "--out",
            str(tmp_path / "o"), "--config", str(tmp_path / "c.yaml")]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert seen.pop("data").feature_cache == str(tmp_path / "features")
    assert CliRunner().invoke(app, [*args, "--no-feature-cache", "--no-packing"]).exit_code == 0
    data = seen.pop("data")
    assert data.feature_cache is None and data.packing is False


def test_a_partitioned_tower_is_refused(tiny, tmp_path):
    from vlx.config import ConfigError

    model = copy.deepcopy(tiny[0])
    next(model.model.vision_tower.parameters()).ds_id = 0  # what DeepSpeed ZeRO-3 marks its partitioned weights with
    with pytest.raises(ConfigError, match="--stage 2 --init-from"):
        FeatureCache(tmp_path, model, tiny[1].image_processor)


@pytest.mark.slow
def test_two_processes_fill_once_and_match_one_process(colour_data, tmp_path):
    """accelerate + gloo DDP on CPU: each process fills half the cache, then both train from it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    common = ["train-base", "--preset", "tiny", "--stage1-data", str(colour_data / "captions.json"), "--stage", "1",
              "--max-steps", "3", "--global-batch-size", "4", "--per-device-batch-size", "2", "--packing"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLX_PRECISION": "fp32"}
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    config = Path(__file__).resolve().parent.parent / "templates" / "accelerate" / "cpu_2proc.yaml"
    two = subprocess.run([accelerate, "launch", "--config_file", str(config), "-m", "vlx.cli", *common,
                          "--feature-cache", str(tmp_path / "features"), "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "vlx.cli", *common, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]

    def losses(run):
        return [e["loss"] for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in e]

    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    shards = list((tmp_path / "features").glob("*/*.safetensors"))
    assert len(shards) == 2  # one shard per process, each with its own half of the 16 images
