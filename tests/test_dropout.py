"""LoRA dropout drawn as geometric gaps: the masks of independent Bernoulli trials, and the same backward."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from vlx.train.dropout import SPARSE_MAX_P, SparseDropout, dropped_positions


def _mask(n: int, p: float, seed: int) -> torch.Tensor:
    drop = torch.zeros(n, dtype=torch.bool)
    drop[dropped_positions(n, p, generator=torch.Generator().manual_seed(seed))] = True
    return drop


@pytest.mark.parametrize("p", [0.05, 0.2])
def test_dropped_positions_are_independent_bernoulli_trials(p):
    n = 400_000
    drop = _mask(n, p, seed=0)
    pos = dropped_positions(n, p, generator=torch.Generator().manual_seed(0))
    assert torch.equal(pos, pos.unique()) and int(pos.min()) >= 0 and int(pos.max()) < n  # sorted, distinct, in range
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(drop.float().mean().item() - p) < 5 * sd
    # Neighbours independent: P(both dropped) = p^2, at lags 1 and 7 (a gap sampler with a bias towards
    # short or long gaps would show here).
    for lag in (1, 7):
        both = (drop[:-lag] & drop[lag:]).float().mean().item()
        assert abs(both - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / n), lag
    # Counts per block of 100 spread as a binomial's do (variance n p (1 - p)).
    counts = drop.view(-1, 100).float().sum(1)
    assert counts.var().item() == pytest.approx(100 * p * (1 - p), rel=0.1)


def test_dropped_positions_cover_the_whole_range_when_one_draw_of_gaps_falls_short():
    """Each position is dropped with probability p wherever it lies, the last included, even for tensors so
    small that the first draw of gaps often ends before them (more gaps are drawn then)."""
    p, n, trials = 0.2, 3, 20_000
    gen = torch.Generator().manual_seed(1)
    hits = torch.zeros(n)
    for _ in range(trials):
        hits[dropped_positions(n, p, generator=gen)] += 1
    sd = math.sqrt(p * (1 - p) / trials)
    assert ((hits / trials - p).abs() < 5 * sd).all(), hits / trials


def test_sparse_dropout_scales_what_it_keeps_and_its_backward_zeroes_the_same_positions():
    torch.manual_seed(0)
    x = torch.randn(3, 50, 64, requires_grad=True)
    w = torch.randn(3, 50, 64)
    drop = SparseDropout(0.1).train()
    out = drop(x)
    kept = out != 0
    assert 0.05 < 1 - kept.float().mean().item() < 0.15
    assert torch.allclose(out[kept], x.detach()[kept] / 0.9)
    (out * w).sum().backward()
    assert torch.allclose(x.grad, w * kept / 0.9)


def test_sparse_dropout_matches_nn_dropout_in_bf16_and_steps_aside_where_it_should():
    torch.manual_seed(0)
    x = torch.randn(4, 128, 96, dtype=torch.bfloat16)
    out = SparseDropout(0.05).train()(x)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    kept = out != 0
    assert torch.equal(out[kept], x[kept] * (1 / 0.95))
    assert torch.equal(SparseDropout(0.05).eval()(x), x)  # eval: identity
    dense = SparseDropout(0.6).train()  # above SPARSE_MAX_P: the dense kernel, same distribution
    assert 0.6 > SPARSE_MAX_P and 0.55 < (dense(x.float()) == 0).float().mean().item() < 0.65
    with pytest.raises(ValueError, match="must be in"):
        SparseDropout(1.0)


def test_attach_lora_swaps_every_lora_dropout_and_keeps_the_outputs_in_eval(tiny):
    from vlx.config import LoraConfig
    from vlx.train.finetune import attach_lora

    model, _ = tiny
    ids = torch.randint(5, 300, (1, 12), generator=torch.Generator().manual_seed(2))
    lora = attach_lora(copy.deepcopy(model), LoraConfig(r=4, alpha=8, dropout=0.05))
    drops = [m for n, m in lora.named_modules() if ".lora_dropout." in n]
    assert drops and all(isinstance(m, SparseDropout) and m.p == 0.05 for m in drops)
    none = attach_lora(copy.deepcopy(model), LoraConfig(r=4, alpha=8, dropout=0.0))
    assert not any(isinstance(m, SparseDropout) for m in none.modules())  # p = 0: peft's Identity stays
    lora.eval()
    torch.manual_seed(3)
    for n, p in lora.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.1)
    a = lora(input_ids=ids).logits
    assert torch.equal(a, lora(input_ids=ids).logits)  # no dropout in eval: deterministic
    lora.train()
    assert not torch.equal(a, lora(input_ids=ids).logits)  # and it is on in training
