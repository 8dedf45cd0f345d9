"""Many restorations at one token in one batched pass, each row run only where it can differ.

A restoration at token t of the clean states ``(kind, layers [lo, hi))`` changes nothing

- at tokens before t (a causal model cannot look ahead): their keys and values are the corrupted
  run's, kept in a KV cache of the corrupted prefix (``S`` rows; each row reads its sample's);
- below the first layer it touches: there the row *is* the corrupted run, so it joins the batch
  only at layer ``lo`` (kinds "mlp" / "attn": hooks put the sublayer outputs back) or ``lo + 1``
  (kind "all": it starts from the corrupted output of layer ``lo``, clean at token t), starting
  from the corrupted run's state there, computed once per token.

Kind "all" rows run (n_layers - 1) / 2 layers on average instead of n_layers, and only tokens
t..T-1. Decoder layers are therefore called one at a time, with the arguments the base model
passed them in a one-row pass over the same tokens (attention mask, rotary position embeddings:
with batch 1 they broadcast over any number of rows) and the rows' own KV cache swapped in for
that pass's. The final norm and the LM head then run on the last token only.

:func:`robustedit.analysis.corrupt.patched_probability` is the plain path (a full forward per
restoration); the tests check that both agree in every cell on every architecture.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from robustedit.analysis.corrupt import (
    Corruption,
    answer_probs,
    component_path,
    final_hidden,
    noise_hook,
    restore_hook,
)
from robustedit.models.hooks import capture_input, capture_output, hidden_of, hooked
from robustedit.models.load import LanguageModel


def _suffix_kwargs(lm: LanguageModel, corr: Corruption, t: int, rows: int, cache) -> dict:
    """Inputs of a pass over tokens ``t..T-1`` of ``rows`` rows on top of a prefix cache."""
    T, dev = len(corr.token_ids), lm.device
    kwargs = dict(attention_mask=torch.ones((rows, T), dtype=torch.long, device=dev),
                  position_ids=torch.arange(t, T, device=dev).expand(rows, -1))
    if cache is not None:
        kwargs.update(past_key_values=cache, use_cache=True)
    return kwargs


def _layer_calls(lm: LanguageModel, corr: Corruption, t: int, prefix) -> tuple[list[tuple[tuple, dict]], object]:
    """``(args, kwargs)`` of every decoder layer in a one-row pass over tokens ``t..T-1``, and the
    cache object that pass used (to be swapped for the rows' own)."""
    cache = None
    if prefix is not None:
        cache = copy.deepcopy(prefix)
        cache.batch_select_indices(torch.tensor([0], device=lm.device))
    calls: list = [None] * lm.n_layers

    def recorder(i: int):
        def pre(_mod, args: tuple, kwargs: dict) -> None:
            calls[i] = (args, dict(kwargs))

        return pre

    with ExitStack() as stack:
        for i in range(lm.n_layers):
            stack.enter_context(hooked(lm.layer(i), pre=recorder(i), with_kwargs=True))
        final_hidden(lm, corr.ids(lm.device)[:, t:], **_suffix_kwargs(lm, corr, t, 1, cache))
    return calls, cache


def _corrupted_states(lm: LanguageModel, corr: Corruption, t: int, prefix) -> list[torch.Tensor]:
    """The corrupted run at tokens ``t..T-1``: input of every decoder layer, then the last layer's
    output; ``n_layers + 1`` tensors ``(S, T - t, d)``."""
    S, N = corr.samples, lm.n_layers
    cache = copy.deepcopy(prefix) if prefix is not None else None
    with ExitStack() as stack:
        stack.enter_context(hooked(lm.module(lm.spec.embeddings), post=noise_hook(corr, t)))
        first = stack.enter_context(capture_input(lm.layer(0)))
        outs = [stack.enter_context(capture_output(lm.layer(i))) for i in range(N)]
        final_hidden(lm, corr.ids(lm.device)[:, t:].expand(S, -1), **_suffix_kwargs(lm, corr, t, S, cache))
    return [first[0]] + [o[0] for o in outs]


@dataclass
class CorruptedSuffix:
    """What every restoration at token ``t`` shares: the corrupted run from token t on."""

    t: int
    prefix: object | None  # KV cache of the corrupted tokens 0..t-1 (S rows); None when t = 0
    states: list[torch.Tensor]  # n_layers + 1 of (S, T - t, d): each layer's input, last output
    calls: list[tuple[tuple, dict]]  # each decoder layer's arguments in a one-row pass
    call_cache: object | None  # the cache object inside ``calls``

    @classmethod
    @torch.no_grad()
    def build(cls, lm: LanguageModel, corr: Corruption, t: int) -> CorruptedSuffix:
        prefix = None
        if t > 0:
            ids = corr.ids(lm.device)[:, :t].expand(corr.samples, -1)
            with hooked(lm.module(lm.spec.embeddings), post=noise_hook(corr, 0)):
                prefix = lm.base(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True).past_key_values
        calls, call_cache = _layer_calls(lm, corr, t, prefix)
        return cls(t, prefix, _corrupted_states(lm, corr, t, prefix), calls, call_cache)


@torch.no_grad()
def restored_probs(
    lm: LanguageModel,
    corr: Corruption,
    clean: Mapping[str, torch.Tensor],
    run: CorruptedSuffix,
    restorations: list[tuple[str, range]],
) -> torch.Tensor:
    """P(answer) ``(R,)``, averaged over the noise samples, for each restoration ``(kind, layers)``
    of the clean states ``clean[kind][layer, t]`` ``(n_layers, T, d)`` at token ``t = run.t``."""
    S, N, R, t = corr.samples, lm.n_layers, len(restorations), run.t
    dev = lm.device
    starts = [layers[0] + 1 if kind == "all" else layers[0] for kind, layers in restorations]
    order = sorted(range(R), key=starts.__getitem__)
    rank = torch.empty(R, dtype=torch.long, device=dev)
    rank[torch.tensor(order, device=dev)] = torch.arange(R, device=dev)
    # Row r*S + i is noise sample i of restoration order[r]: rows join in order of their start,
    # so a row keeps its index once it is in the batch and layer l sees the first active[l] rows.
    active = [S * sum(s <= layer for s in starts) for layer in range(N)]
    sample = torch.arange(S, device=dev).repeat(R)

    states, calls, call_cache = run.states, run.calls, run.call_cache
    cache = None
    if run.prefix is not None:
        cache = copy.deepcopy(run.prefix)  # the pass appends to it
        for layer, layer_cache in enumerate(cache.layers):
            layer_cache.batch_select_indices(sample[: active[layer]])

    def swap(value):
        return cache if value is call_cache and value is not None else value

    targets: dict[tuple[str, int], list[int]] = defaultdict(list)
    for j, (kind, layers) in enumerate(restorations):
        for layer in layers[1:] if kind == "all" else layers:  # "all" restores layers[0] on joining
            targets[kind, layer].append(j)
    h = states[0][:0]  # (0, q, d): no row yet
    with ExitStack() as stack:
        for (kind, layer), js in targets.items():
            rows = (rank[torch.tensor(js, device=dev)][:, None] * S + torch.arange(S, device=dev)).flatten()
            hook = restore_hook(rows, torch.zeros_like(rows), clean[kind][layer, t])
            stack.enter_context(hooked(lm.module(component_path(lm.spec, kind, layer)), post=hook))
        r = 0
        for layer in range(N + 1):
            joining = []
            while r < R and starts[order[r]] == layer:
                kind, layers = restorations[order[r]]
                new = states[layer].clone()  # (S, q, d)
                if kind == "all":
                    new[:, 0] = clean["all"][layers[0], t]
                joining.append(new)
                r += 1
            if joining:
                h = torch.cat([h, *joining])
            if layer == N or h.shape[0] == 0:
                continue
            args, kwargs = calls[layer]
            out = lm.layer(layer)(h, *map(swap, args[1:]), **{k: swap(v) for k, v in kwargs.items()})
            h = hidden_of(out)  # (active[layer], q, d)
    normed = lm.module(lm.spec.final_norm)(h[:, -1:])  # (S*R, 1, d)
    return answer_probs(lm, normed, corr.answer_id).view(R, S).mean(1)[rank]
