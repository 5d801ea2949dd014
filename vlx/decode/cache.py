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

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        if not self._owns_views():
            # First call, or `crop` / `batch_select_indices` / beam reordering replaced the tensors.
            self._adopt(self.keys, self.values, key_states, value_states, extra=new)
        n = self.keys.shape[-2] if self.keys.numel() else 0
        if n + new > self._buffers[0].shape[-2]:
            self._adopt(self.keys, self.values, key_states, value_states, extra=new)
        kb, vb = self._buffers
        kb[..., n:n + new, :] = key_states
        vb[..., n:n + new, :] = value_states
        self.keys, self.values = kb[..., : n + new, :], vb[..., : n + new, :]
        self._views = (self.keys, self.values)
        return self.keys, self.values

    def _owns_views(self) -> bool:
        views = getattr(self, "_views", None)
        return self._buffers is not None and views is not None and views[0] is self.keys and views[1] is self.values

    def _adopt(self, keys, values, key_states, value_states, *, extra: int) -> None:
        """New buffers, twice what is needed, holding the current states."""
        n = keys.shape[-2] if keys.numel() else 0
        capacity = 2 * (n + extra) + 64
        shape = tuple(key_states.shape[:-2])
        kb = key_states.new_empty(shape + (capacity, key_states.shape[-1]))
        vb = value_states.new_empty(tuple(value_states.shape[:-2]) + (capacity, value_states.shape[-1]))
        if n:
            kb[..., :n, :] = keys
            vb[..., :n, :] = values
        self._buffers = (kb, vb)
        self.keys, self.values = kb[..., :n, :], vb[..., :n, :]
        self._views = (self.keys, self.values)


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
