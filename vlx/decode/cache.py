"""A key/value cache for batched decoding on CPU that appends instead of concatenating.

transformers' `DynamicLayer.update` grows each layer's keys and values with `torch.cat`, which copies the
whole cache at every decoded token: for 52 street scenes of ~420 tokens on SmolLM2-135M, 1 GB per step and
71% of a decoding step's time on a 2-core CPU (`bench/RESULTS.md`). `StaticCache` avoids the copy but
attends over its full preallocated length at every step and was slower still. `GrowingLayer` keeps
spare capacity and writes new states into it, doubling when full (amortised O(1) copies per token), and
hands attention a view of the filled part. Everything else is `DynamicCache`'s: sliding-window and
linear-attention layers of hybrid models keep their own classes, and the outputs are the same.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


class GrowingLayer(DynamicLayer):
    """`DynamicLayer` whose keys and values are views into a buffer with room to grow."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None
        self._views: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, new = self.get_seq_length(), key_states.shape[-2]
        # `crop`, `batch_select_indices` and beam reordering replace the views: adopt what they left.
        owned = self._views is not None and self._views[0] is self.keys and self._views[1] is self.values
        if not owned or n + new > self._buffers[0].shape[-2]:
            self._grow(key_states, value_states, n, capacity=2 * (n + new) + 64)
        kb, vb = self._buffers
        kb[..., n:n + new, :] = key_states
        vb[..., n:n + new, :] = value_states
        self.keys, self.values = kb[..., : n + new, :], vb[..., : n + new, :]
        self._views = (self.keys, self.values)
        return self.keys, self.values

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, n: int, *, capacity: int) -> None:
        """New buffers of `capacity` positions holding the `n` cached ones."""
        kb = key_states.new_empty(tuple(key_states.shape[:-2]) + (capacity, key_states.shape[-1]))
        vb = value_states.new_empty(tuple(value_states.shape[:-2]) + (capacity, value_states.shape[-1]))
        if n:
            kb[..., :n, :] = self.keys
            vb[..., :n, :] = self.values
        self._buffers = (kb, vb)


def decoding_cache(model) -> DynamicCache | None:
    """A `DynamicCache` for `model.generate(cache=...)` whose plain layers are `GrowingLayer`s; None for an
    encoder-decoder language model (its cross-attention cache is generate's own to build)."""
    text = model.config.get_text_config(decoder=True)
    if getattr(model.config, "is_encoder_decoder", False) or getattr(text, "is_encoder_decoder", False):
        return None
    cache = DynamicCache(config=text)
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer:
            cache.layers[i] = GrowingLayer()
    if cache.layer_class_to_replicate is DynamicLayer:  # layers appended as decoding reaches them
        cache.layer_class_to_replicate = GrowingLayer
    return cache


__all__ = ["GrowingLayer", "decoding_cache"]
