"""LoRA dropout whose mask costs a twentieth of a dense one on a CPU: the dropped positions drawn as gaps.

peft puts an `nn.Dropout` in front of every LoRA adapter (seven per transformer layer on Llama-style
models), and on a CPU each of them draws one random number per activation: for p = 0.05 over a
micro-batch of 2 x 450 x 576 that took longer than the layer's own bf16 matmul (bench/RESULTS.md).
The positions dropped by independent Bernoulli(p) trials are a Bernoulli process, so the gaps between
them are independent Geometric(p) variables: drawing those gaps samples exactly the same masks with
about `n * p` random numbers instead of `n`. The backward zeroes the same positions; nothing but the
positions is kept for it (8 bytes per dropped element, against 1 byte per element for a dense mask).

    from vlx.train.dropout import sparse_lora_dropout
    sparse_lora_dropout(peft_model)   # after get_peft_model

Only CPU tensors take this path and only for p <= `SPARSE_MAX_P`; elsewhere (a CUDA device, where
dropout is a fused kernel; large p) it is `torch.nn.functional.dropout`.
"""

from __future__ import annotations

import math

import torch

SPARSE_MAX_P = 0.25
"""Largest dropout probability drawn as gaps: above it most positions are dropped and a dense mask is cheaper."""


def dropped_positions(n: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sorted positions in [0, n) that independent Bernoulli(p) trials drop, as an int64 tensor."""
    chunk = int(n * p + 6 * math.sqrt(n * p) + 16)  # enough gaps to pass n almost always in one draw
    parts, last = [], -1.0
    while last < n - 1:
        gaps = torch.empty(chunk, dtype=torch.float64).geometric_(p, generator=generator)  # each >= 1
        pos = gaps.clamp_(max=n + 1).cumsum_(0).add_(last)  # clamp: no gap overflows, n + 1 already passes the end
        parts.append(pos)
        last = float(pos[-1])
    pos = torch.cat(parts) if len(parts) > 1 else parts[0]
    return pos[pos < n].long()


class _DropPositions(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        pos = dropped_positions(x.numel(), p)
        out = x.contiguous() * (1.0 / (1.0 - p))
        out.view(-1)[pos] = 0
        ctx.p = p
        ctx.save_for_backward(pos)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (pos,) = ctx.saved_tensors
        g = grad.contiguous() * (1.0 / (1.0 - ctx.p))
        g.view(-1)[pos] = 0
        return g, None


class SparseDropout(torch.nn.Module):
    """`nn.Dropout(p)` with the same distribution of masks, drawn as gaps on a CPU (module docstring)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability {p}: must be in [0, 1)")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type == "cpu" and self.p <= SPARSE_MAX_P:
            return _DropPositions.apply(x, self.p)
        return torch.nn.functional.dropout(x, self.p, training=True)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def sparse_lora_dropout(model) -> int:
    """Swap every peft LoRA layer's `nn.Dropout` for a `SparseDropout` of the same p -> how many were swapped."""
    from peft.tuners.lora import LoraLayer

    swapped = 0
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name, drop in module.lora_dropout.items():
                if isinstance(drop, torch.nn.Dropout) and drop.p > 0:
                    module.lora_dropout[name] = SparseDropout(drop.p)
                    swapped += 1
    return swapped


__all__ = ["SPARSE_MAX_P", "SparseDropout", "dropped_positions", "sparse_lora_dropout"]
