"""Forward passes that recompute only what an intervention can change.

Value optimisation adds δ at the subject's last token; everything before that token is the same
at every step (a causal model cannot look ahead), so its keys and values are computed once and
kept in a KV cache. Each step then runs only the *suffix* (subject's last token onward: typically
3–5 tokens instead of 20–30). Rows are laid out as ``[pad…, prefix][suffix, pad…]`` with explicit
position ids, so every row's suffix starts at the same column right after its own prefix (no gap
inside a row, which sliding-window attention, counting columns, would misread).

``PrefixCachedBatch.hidden()`` equals the suffix columns of a full forward pass (tested on every
architecture in the table); ``use_cache=False`` gives that plain full pass instead.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from robustedit.models.load import LanguageModel


@dataclass
class PrefixCachedBatch:
    lm: LanguageModel
    suffix_ids: torch.Tensor  # (B, S)
    mask: torch.Tensor  # (B, P + S)
    positions: torch.Tensor  # (B, P + S)
    prefix_len: int  # P
    cache: object | None  # KV cache of the prefix columns, or None when P == 0

    @classmethod
    @torch.no_grad()
    def build(cls, lm: LanguageModel, rows: list[list[int]], split: list[int], pad_id: int) -> "PrefixCachedBatch":
        """``rows[i][:split[i]]`` is the fixed prefix of row i, the rest its suffix (non-empty)."""
        B = len(rows)
        P = max(split)
        S = max(len(r) - s for r, s in zip(rows, split))
        ids = torch.full((B, P + S), pad_id, dtype=torch.long)
        mask = torch.zeros((B, P + S), dtype=torch.long)
        pos = torch.zeros((B, P + S), dtype=torch.long)
        for i, (r, s) in enumerate(zip(rows, split)):
            prefix, suffix = r[:s], r[s:]
            ids[i, P - len(prefix) : P] = torch.tensor(prefix, dtype=torch.long)
            mask[i, P - len(prefix) : P] = 1
            pos[i, P - len(prefix) : P] = torch.arange(len(prefix))
            ids[i, P : P + len(suffix)] = torch.tensor(suffix, dtype=torch.long)
            mask[i, P : P + len(suffix)] = 1
            pos[i, P : P + len(suffix)] = torch.arange(len(prefix), len(prefix) + len(suffix))
        dev = lm.device
        ids, mask, pos = ids.to(dev), mask.to(dev), pos.to(dev)
        cache = None
        if P > 0:
            out = lm.base(input_ids=ids[:, :P], attention_mask=mask[:, :P], position_ids=pos[:, :P], use_cache=True)
            cache = out.past_key_values
            _sanitize(cache)
        return cls(lm, ids[:, P:], mask, pos, P, cache)

    def select(self, rows: torch.Tensor) -> "PrefixCachedBatch":
        """The batch of ``rows`` only (its own copy of their cache), with suffix columns that are
        padding in every kept row dropped: removing finished rows makes each step cheaper."""
        mask = self.mask[rows]
        S = int(mask[:, self.prefix_len:].sum(1).max())  # suffixes start at column P in every row
        cache = None
        if self.cache is not None:
            cache = copy.deepcopy(self.cache)
            cache.batch_select_indices(rows)
        return PrefixCachedBatch(self.lm, self.suffix_ids[rows, :S], mask[:, : self.prefix_len + S],
                                 self.positions[rows, : self.prefix_len + S], self.prefix_len, cache)

    def hidden(self) -> torch.Tensor:
        """Final hidden states of the suffix columns ``(B, S, d)``."""
        kwargs = dict(input_ids=self.suffix_ids, attention_mask=self.mask, position_ids=self.positions[:, self.prefix_len:])
        if self.cache is not None:
            kwargs["past_key_values"] = copy.deepcopy(self.cache)  # the pass appends to it
        out = self.lm.base(**kwargs, use_cache=self.cache is not None)
        return out.last_hidden_state


def _sanitize(cache) -> None:
    """Zero non-finite entries of padded columns: a row whose prefix is all padding attends to
    nothing and yields NaN there, and 0·NaN would leak through the (masked) attention weights."""
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                torch.nan_to_num_(t, nan=0.0, posinf=0.0, neginf=0.0)
