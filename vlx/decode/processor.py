"""Grammar-constrained logits processors for `transformers` generation.

`GrammarLogitsProcessor` keeps one `outlines_core.Guide` per batch row, advances it with the
token the row just produced, and sets every logit the grammar forbids to -inf. The mask comes
from `Guide.write_mask_into` (one bit per token) and is expanded with plain tensor ops: outlines'
own processor applies it with a `torch.compile`d kernel whose first call costs tens of seconds on
CPU, for no gain at these sizes.

Rows are independent, so a batch may hold prompts of different lengths (left-padded) that finish
at different steps. A row that has produced its end token only allows that token again: transformers
overwrites finished rows with padding, but still samples from them, and an all -inf row would
make sampling fail.
"""

from __future__ import annotations

import torch
from outlines_core import Guide, Index
from transformers import LogitsProcessor

_SHIFTS = torch.arange(32, dtype=torch.int32)


class GrammarLogitsProcessor(LogitsProcessor):
    """Mask logits to the tokens `index` allows next, one guide per batch row."""

    def __init__(self, index: Index, eos_token_id: int):
        self.index = index
        self.eos_token_id = eos_token_id
        self.reset()

    def reset(self) -> None:
        """Forget per-row state; called before each new batch."""
        self._guides: list[Guide] | None = None
        self._done: list[bool] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        batch, width = scores.shape
        if self._guides is None:
            self._guides = [Guide(self.index) for _ in range(batch)]
            self._done = [False] * batch
            # (batch, ceil(width / 32)) int32 words, one bit per vocabulary column; logits may be
            # wider than the tokenizer (padded embedding matrices): those columns stay 0.
            self._words = torch.zeros(batch, (width + 31) // 32, dtype=torch.int32)
        else:
            last = input_ids[:, -1].tolist()
            for i, guide in enumerate(self._guides):
                if self._done[i]:
                    continue
                if last[i] == self.eos_token_id or guide.is_finished():
                    self._done[i] = True
                else:
                    guide.advance(last[i], return_tokens=False)
        words = self._words
        for i, guide in enumerate(self._guides):
            if self._done[i]:
                words[i].zero_()
            else:
                guide.write_mask_into(words[i].data_ptr(), words.shape[1], 4)
        # (batch, W) -> (batch, W, 32) bits -> (batch, width) allowed
        allowed = ((words.unsqueeze(-1) >> _SHIFTS) & 1).view(batch, -1)[:, :width].bool().to(scores.device)
        # A finished row, or a dead end the vocabulary cannot continue: only the end token.
        stuck = ~allowed.any(dim=1)
        if stuck.any():
            allowed[stuck, self.eos_token_id] = True
        return scores.masked_fill(~allowed, float("-inf"))

    def texts_complete(self) -> list[bool]:
        """Per row of the last batch: did its text reach an accepting state of the grammar?"""
        if self._guides is None:
            return []
        return [g.is_finished() or self.index.is_final_state(g.get_state()) for g in self._guides]
