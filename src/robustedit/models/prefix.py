"""Forward passes that recompute only what an intervention can change.

Value optimisation adds δ at the subject's last token; everything before that token is the same
at every step (a causal model cannot look ahead), so its keys and values are computed once and
kept in a KV cache. Each step then runs only the *suffix* (subject's last token onward: typically
3–5 tokens instead of 20–30). Rows are laid out as ``[pad…, prefix][suffix, pad…]`` with explicit
position ids, so every row's suffix starts at the same column right after its own prefix (no gap
inside a row, which sliding-window attention, counting columns, would misread).

``PrefixCachedBatch.hidden()`` equals the suffix columns of a full forward pass (tested on every
architecture in the table); ``use_cache=False`` gives that plain full pass instead.

The layers below the one an intervention touches are the same at every step too.
``hidden(from_layer=L)`` records, in one pass without gradients, the input of decoder layer L and
the arguments the base model gives every layer from L on (attention mask, rotary embeddings, cache
position); each later call then runs only layers L… (with a fresh copy of the prefix cache swapped
in for the recorded one) and the final norm. Hooks on layer L and above fire as usual. For an
edit at layer 6 of 30 this skips a fifth of every forward pass.
"""

from __future__ import annotations

import copy
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch

from robustedit.models.hooks import hidden_of, hooked
from robustedit.models.load import LanguageModel


@dataclass
class PrefixCachedBatch:
    lm: LanguageModel
    suffix_ids: torch.Tensor  # (B, S)
    mask: torch.Tensor  # (B, P + S)
    positions: torch.Tensor  # (B, P + S)
    prefix_len: int  # P
    cache: object | None  # KV cache of the prefix columns, or None when P == 0
    # from_layer → (input of that layer, [(args, kwargs) per layer from it on], the recorded cache)
    _records: dict = field(default_factory=dict, repr=False, compare=False)

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

    def _base_kwargs(self) -> dict:
        kwargs = dict(input_ids=self.suffix_ids, attention_mask=self.mask, position_ids=self.positions[:, self.prefix_len:],
                      use_cache=self.cache is not None)
        if self.cache is not None:
            kwargs["past_key_values"] = copy.deepcopy(self.cache)  # the pass appends to it
        return kwargs

    def hidden(self, from_layer: int = 0) -> torch.Tensor:
        """Final hidden states of the suffix columns ``(B, S, d)``; with ``from_layer`` > 0 only the
        decoder layers from it on are run (module docstring)."""
        if from_layer == 0:
            return self.lm.base(**self._base_kwargs()).last_hidden_state
        if from_layer not in self._records:
            self._records[from_layer] = self._record(from_layer)
        h, calls, recorded_cache = self._records[from_layer]
        cache = copy.deepcopy(self.cache) if self.cache is not None else None

        def swap(value):
            return cache if value is recorded_cache and value is not None else value

        for i, (args, kwargs) in enumerate(calls, start=from_layer):
            out = self.lm.layer(i)(h, *map(swap, args[1:]), **{k: swap(v) for k, v in kwargs.items()})
            h = hidden_of(out)
        return self.lm.module(self.lm.spec.final_norm)(h)

    @torch.no_grad()
    def _record(self, from_layer: int) -> tuple[torch.Tensor, list, object]:
        n = self.lm.n_layers
        calls: list = [None] * (n - from_layer)
        kwargs = self._base_kwargs()

        def recorder(i: int):
            def pre(_mod, args: tuple, kw: dict) -> None:
                calls[i - from_layer] = (args, dict(kw))

            return pre

        with ExitStack() as stack:
            for i in range(from_layer, n):
                stack.enter_context(hooked(self.lm.layer(i), pre=recorder(i), with_kwargs=True))
            self.lm.base(**kwargs)
        if any(c is None for c in calls):
            raise RuntimeError("a decoder layer was not called with keyword arguments; use from_layer=0")
        return calls[0][0][0].detach(), calls, kwargs.get("past_key_values")


def _sanitize(cache) -> None:
    """Zero non-finite entries of padded columns: a row whose prefix is all padding attends to
    nothing and yields NaN there, and 0·NaN would leak through the (masked) attention weights."""
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                torch.nan_to_num_(t, nan=0.0, posinf=0.0, neginf=0.0)
