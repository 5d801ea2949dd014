"""`group_by_modality_length` batching, as LLaVA-1.5's `LengthGroupedSampler` does it.

Image rows and text-only rows are shuffled separately and cut into megabatches of one global
batch each (per-device batch x processes x accumulation), so every optimizer step sees one
modality; within a megabatch rows are sorted by length so each device's micro-batch pads little.
Megabatches are then shuffled; the leftovers of both modalities form one last mixed megabatch.
The paper reports about 25% faster training with the same results.

The order depends only on (seed, epoch), so every process of a distributed run draws the same
permutation and accelerate's batch sharding hands each its own slice.
"""

from __future__ import annotations

import torch


def modality_length_order(lengths: list[int], megabatch: int, generator: torch.Generator) -> list[int]:
    """lengths: positive for image rows, negative for text rows -> an index order."""
    image = [i for i, n in enumerate(lengths) if n > 0]
    text = [i for i, n in enumerate(lengths) if n < 0]
    chunks, leftovers = [], []
    for group in (image, text):
        perm = [group[int(j)] for j in torch.randperm(len(group), generator=generator)]
        full = len(perm) - len(perm) % megabatch
        for start in range(0, full, megabatch):
            chunk = perm[start : start + megabatch]
            chunks.append(sorted(chunk, key=lambda i: -abs(lengths[i])))
        leftovers += perm[full:]
    order = [chunks[int(j)] for j in torch.randperm(len(chunks), generator=generator)]
    if leftovers:
        order.append(sorted(leftovers, key=lambda i: -abs(lengths[i])))
    return [i for chunk in order for i in chunk]


class ModalityLengthSampler(torch.utils.data.Sampler):
    def __init__(self, lengths: list[int], megabatch: int, seed: int = 0):
        self.lengths = lengths
        self.megabatch = megabatch
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(modality_length_order(self.lengths, self.megabatch, g))
