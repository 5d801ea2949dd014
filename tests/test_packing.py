"""Padding-free packing: packed and padded micro-batches give the same loss and the same gradients."""

from __future__ import annotations

import copy
import json
import types

import pytest
import torch

from vlx.data.dataset import Collator, LlavaDataset, prepare
from vlx.data.formats import load_rows
from vlx.data.packing import PackingCollator, PackingError, pack_rows, packs_into_one_row
from vlx.data.templates import IGNORE_INDEX


@pytest.fixture(scope="module")
def items(tiny, colour_data):
    """Six rows of different lengths: image rows with longer and longer answers, and two text-only rows."""
    model, processor = tiny
    rows = load_rows(str(colour_data / "instruct.json"))
    examples, bad = prepare(rows, processor.tokenizer, template="vicuna_v1", image_token_id=model.config.image_token_id,
                            num_image_tokens=model.config.image_seq_length, max_length=256)
    assert not bad
    picked = [examples[i] for i in (0, 1, 2, 3, 16, 17)]
    # Longer answers make the lengths differ, so padding and the packing order both matter.
    for repeats, ex in zip((0, 3, 6, 20), picked[:4]):  # the longest row then has room for both text rows
        extra = processor.tokenizer(" and more" * repeats, add_special_tokens=False)["input_ids"]
        ex.input_ids = ex.input_ids + extra
        ex.labels = ex.labels + extra
    dataset = LlavaDataset(picked, processor.image_processor)
    return [dataset[i] for i in range(len(dataset))]


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attn, one_row", [("sdpa", True), ("sdpa", False), ("eager", False)])
def test_packed_equals_padded(trainable, tiny, items, attn, one_row):
    trainable.set_attn_implementation(attn)
    pad = tiny[1].tokenizer.pad_token_id
    padded = Collator(pad)(items)
    packed = PackingCollator(pad, one_row)(items)
    assert "attention_mask" not in packed
    if one_row:
        assert packed["input_ids"].shape == (1, sum(len(b["input_ids"]) for b in items))  # no padding at all
    else:  # rows as wide as the padded batch, but fewer: short samples share a row
        assert packed["input_ids"].shape[1] == padded["input_ids"].shape[1]
        assert 1 < packed["input_ids"].shape[0] < padded["input_ids"].shape[0]
    # Same supervised tokens, so the token-mean losses are comparable term by term.
    assert (packed["labels"] != IGNORE_INDEX).sum() == (padded["labels"] != IGNORE_INDEX).sum()

    loss_a, grads_a = _loss_and_grads(trainable, padded)
    loss_b, grads_b = _loss_and_grads(trainable, packed)
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    assert set(grads_a) == set(grads_b) and any("multi_modal_projector" in n for n in grads_a)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)


def test_positions_restart_and_images_follow_their_samples(tiny, items):
    pad = tiny[1].tokenizer.pad_token_id
    packed = PackingCollator(pad)(items)
    rows = pack_rows([len(b["input_ids"]) for b in items], max(len(b["input_ids"]) for b in items))
    expected_images = [i for row in rows for i in row if items[i]["pixel_values"] is not None]
    stacked = torch.stack([items[i]["pixel_values"] for i in expected_images])
    assert torch.equal(packed["pixel_values"], stacked)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            n = len(items[i]["input_ids"])
            assert packed["position_ids"][r, start:start + n].tolist() == list(range(n))
            assert packed["input_ids"][r, start:start + n].tolist() == items[i]["input_ids"]
            assert packed["labels"][r, start] == IGNORE_INDEX  # nothing is predicted across a boundary
            start += n


def test_pack_rows_first_fit_decreasing():
    lengths = [50, 120, 80, 30, 100, 70]
    rows = pack_rows(lengths, 150)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 150 for row in rows)
    assert len(rows) == 3  # 450 tokens fill three rows of 150 exactly
    assert pack_rows(lengths, None) == [list(range(len(lengths)))]
    assert pack_rows([300, 10], 150) == [[0], [1]]  # an over-long sample gets a row of its own


def test_packing_with_an_unsupported_attention_fails_with_the_reason():
    text = types.SimpleNamespace(_attn_implementation="paged_attention")
    model = types.SimpleNamespace(config=types.SimpleNamespace(get_text_config=lambda: text,
                                                               _attn_implementation="paged_attention"))
    with pytest.raises(PackingError, match="drop --packing") as e:
        packs_into_one_row(model)
    assert "\n" not in str(e.value)


def test_rows_follow_the_attention(tiny):
    model = copy.deepcopy(tiny[0])
    assert packs_into_one_row(model) is False
    model.config.get_text_config()._attn_implementation = "flash_attention_2"
    assert packs_into_one_row(model) is True  # flash attention finds packed rows only in a batch of one


@pytest.mark.slow
def test_train_base_with_packing_logs_the_same_losses(colour_data, tmp_path):
    from typer.testing import CliRunner

    from vlx.cli import app

    common = ["train-base", "--preset", "tiny", "--stage2-data", str(colour_data / "instruct.json"), "--stage", "2",
              "--init-from", "", "--max-steps", "3", "--global-batch-size", "4", "--per-device-batch-size", "4"]
    runner = CliRunner()
    from vlx import ModelConfig, build_llava

    base, processor = build_llava(ModelConfig(preset="tiny"))
    base.save_pretrained(tmp_path / "init")
    processor.save_pretrained(tmp_path / "init")
    common[common.index("--init-from") + 1] = str(tmp_path / "init")
    losses = {}
    for name, extra in (("padded", []), ("packed", ["--packing"])):
        result = runner.invoke(app, [*common, "--out", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output + repr(result.exception)
        losses[name] = [json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                        if "loss" in json.loads(line)]
    assert len(losses["padded"]) == 3
    assert losses["packed"] == pytest.approx(losses["padded"], rel=1e-5)


def test_supervised_logits_only_give_the_same_loss_and_gradients(trainable, tiny, items):
    from vlx.data.packing import supervised_loss

    pad = tiny[1].tokenizer.pad_token_id
    full = PackingCollator(pad)(items)
    kept = PackingCollator(pad, supervised_logits=True)(items)
    n_kept = kept["logits_to_keep"].numel()
    assert 0 < n_kept < full["input_ids"].shape[1]  # image and prompt positions need no logits

    loss_a, grads_a = _loss_and_grads(trainable, full)
    labels = kept.pop("labels")
    trainable.zero_grad()
    outputs = trainable(**kept)
    assert outputs.logits.shape[1] == n_kept
    for num_items in (None, int((labels != IGNORE_INDEX).sum())):
        trainable.zero_grad()
        outputs = trainable(**kept)
        loss = supervised_loss(outputs, labels, num_items_in_batch=num_items)
        loss.backward()
        assert loss.item() == pytest.approx(loss_a, rel=1e-5)
    for name, p in trainable.named_parameters():
        if name in grads_a:
            torch.testing.assert_close(p.grad, grads_a[name], rtol=1e-4, atol=1e-6, msg=name)


def test_padded_batches_with_supervised_logits_give_the_same_loss_and_gradients(trainable, tiny, items):
    """The default path of train-base and finetune: padded rows, logits only at supervised positions."""
    from vlx.data.packing import supervised_loss

    pad = tiny[1].tokenizer.pad_token_id
    full = Collator(pad)(items)
    kept = Collator(pad, supervised_logits=True)(items)
    assert 0 < kept["logits_to_keep"].numel() < full["input_ids"].shape[1]
    loss_a, grads_a = _loss_and_grads(trainable, full)
    labels = kept.pop("labels")
    trainable.zero_grad()
    outputs = trainable(**kept)
    assert outputs.logits.shape[:2] == (len(items), kept["logits_to_keep"].numel())
    loss = supervised_loss(outputs, labels)
    loss.backward()
    assert loss.item() == pytest.approx(loss_a, rel=1e-5)
    for name, p in trainable.named_parameters():
        if name in grads_a:
            torch.testing.assert_close(p.grad, grads_a[name], rtol=1e-4, atol=1e-6, msg=name)


def test_weighted_tokens_keep_their_weights_packed_and_padded(trainable, tiny, items):
    """Decision weights (`vlx.data.decisions`) travel with their tokens through both collators (packing moves
    samples between rows): the same weighted loss and gradients either way."""
    from vlx.data.packing import supervised_loss

    gen = torch.Generator().manual_seed(0)
    weighted = [dict(b) for b in items]
    for b in weighted[:-1]:  # the last row keeps no weights: it counts 1 everywhere
        b["weights"] = [1.0 + 4.0 * float(torch.rand(1, generator=gen) < 0.3) for _ in b["labels"]]
    pad = tiny[1].tokenizer.pad_token_id
    results = []
    for collate in (Collator(pad, supervised_logits=True), PackingCollator(pad, supervised_logits=True)):
        batch = collate(weighted)
        labels, weights = batch.pop("labels"), batch.pop("label_weights")
        assert weights.shape == labels.shape
        # Each supervised token keeps its weight: the same multiset of (token, weight) pairs.
        pairs = sorted((int(t), float(w)) for t, w in zip(labels[:, 1:].flatten(), weights[:, 1:].flatten())
                       if t != IGNORE_INDEX)
        trainable.zero_grad()
        loss = supervised_loss(trainable(**batch), labels, weights=weights)
        loss.backward()
        results.append((pairs, loss.item(), {n: p.grad.clone() for n, p in trainable.named_parameters()
                                             if p.grad is not None}))
    (pairs_a, loss_a, grads_a), (pairs_b, loss_b, grads_b) = results
    assert pairs_a == pairs_b and any(w > 1 for _, w in pairs_a)
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)
