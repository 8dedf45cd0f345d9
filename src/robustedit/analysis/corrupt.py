"""The runs of causal tracing: clean, corrupted (noise on the subject's embeddings), and corrupted
with chosen clean states put back (the plain path: one full forward, as ROME's
``trace_with_patch``; :mod:`robustedit.analysis.restore` is the fast batched path).

A *state* is the output of one module at one token: kind "all" is the decoder layer's output
(the residual stream after the layer), "mlp" and "attn" that layer's MLP and attention outputs.
Module paths come from the architecture table (``ArchSpec.mlp`` / ``ArchSpec.attn``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from robustedit.errors import UserError
from robustedit.models.forward import logits_at
from robustedit.models.hooks import capture_output, hidden_of, hooked, with_hidden
from robustedit.models.load import LanguageModel
from robustedit.models.specs import ArchSpec
from robustedit.models.text import encode, fill, subject_token_range, target_ids

KINDS = ("all", "mlp", "attn")


def component_path(spec: ArchSpec, kind: str, layer: int) -> str:
    """Module whose output is the state of ``kind`` at ``layer``."""
    if kind == "all":
        return spec.layer_path(layer)
    if kind == "mlp":
        return f"{spec.layer_path(layer)}.{spec.mlp}"
    if kind == "attn":
        return f"{spec.layer_path(layer)}.{spec.attn}"
    raise UserError(f"unknown state kind {kind!r}; choose from {', '.join(KINDS)}")


@torch.no_grad()
def embedding_std(lm: LanguageModel, texts: Iterable[str] | None = None, n_tokens: int = 8192) -> float:
    """Standard deviation of all entries of the embedding module's outputs over the tokens of
    ``texts`` (each tokenised alone, no special tokens), or over the first ``n_tokens`` tokens of
    the shipped Wikipedia sample when ``texts`` is None."""
    if texts is None:
        from robustedit.stats.corpus import token_windows

        ids = token_windows(lm.tokenizer, "enwiki-sample", n_tokens, 256).flatten()
    else:
        ids = torch.tensor([i for t in texts for i in lm.tokenizer(t, add_special_tokens=False)["input_ids"]],
                           dtype=torch.long)
    if ids.numel() == 0:
        raise UserError("no tokens to measure the embedding standard deviation on")
    emb = lm.module(lm.spec.embeddings)(ids.to(lm.device)[None])  # (1, N, d)
    return float(emb.float().std())


@dataclass
class Corruption:
    """One fact prepared for tracing: its tokens, subject span, answer token and noise."""

    prompt: str
    token_ids: list[int]  # (T,)
    subject_range: tuple[int, int]  # token range [s0, s1) of the subject
    answer_id: int
    noise: torch.Tensor  # (S, s1 - s0, d): ε per noise sample, already scaled by ν
    noise_std: float  # the embeddings' standard deviation, ν / noise_factor

    @property
    def samples(self) -> int:
        return self.noise.shape[0]

    def ids(self, device: torch.device) -> torch.Tensor:
        return torch.tensor([self.token_ids], dtype=torch.long, device=device)  # (1, T)


@torch.no_grad()
def prepare(
    lm: LanguageModel,
    template: str,
    subject: str,
    *,
    answer: int | str | None = None,
    samples: int = 10,
    noise_factor: float = 3.0,
    noise_std: float | None = None,
    seed: int = 0,
) -> Corruption:
    """Tokenise the prompt, locate the subject, fix the answer (a token id, a string whose first
    token counts, or the clean top-1 token) and draw ``samples`` noise tensors from a generator
    seeded with ``seed`` (the global RNG is not used)."""
    if samples < 1:
        raise UserError(f"samples must be at least 1, got {samples}")
    prompt, start, end = fill(template, subject)
    ids = encode(lm.tokenizer, prompt)
    s0, s1 = subject_token_range(lm.tokenizer, prompt, start, end)
    std = embedding_std(lm) if noise_std is None else float(noise_std)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn((samples, s1 - s0, lm.d_model), generator=gen) * (noise_factor * std)
    if isinstance(answer, str):
        answer = target_ids(lm.tokenizer, prompt, answer)[0]
    elif answer is None:
        hidden = final_hidden(lm, torch.tensor([ids], device=lm.device))
        answer = int(logits_at(lm, hidden, torch.tensor([0]), torch.tensor([len(ids) - 1])).argmax(-1))
    return Corruption(prompt, ids, (s0, s1), int(answer), noise.to(lm.device, lm.dtype), std)


def noise_hook(corr: Corruption, offset: int, repeats: int = 1):
    """Forward hook for the embeddings of positions ``offset..`` in a batch of ``S × repeats``
    rows: adds the noise at the subject's positions (row ``i * repeats + j`` gets sample i)."""
    s0, s1 = corr.subject_range

    def post(_mod, _args, out: torch.Tensor) -> torch.Tensor | None:  # out (S*R, q, d)
        q = out.shape[1]
        lo, hi = max(s0, offset), min(s1, offset + q)
        if lo >= hi:
            return None
        add = torch.zeros((corr.samples, q, out.shape[-1]), dtype=out.dtype, device=out.device)
        add[:, lo - offset : hi - offset] = corr.noise[:, lo - s0 : hi - s0]
        return (out.unflatten(0, (corr.samples, repeats)) + add[:, None]).flatten(0, 1)

    return post


def restore_hook(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor):
    """Forward hook replacing the output hidden state at ``(rows[n], cols[n])`` by ``values[n]``
    ((n, d) or one (d,) for all); tensor and tuple outputs alike, out of place."""

    def post(_mod, _args, out):
        h = hidden_of(out)  # (B, q, d)
        return with_hidden(out, h.index_put((rows, cols), values.to(h.dtype)))

    return post


def final_hidden(lm: LanguageModel, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
    """Final (normed) hidden states ``(B, q, d)`` of ``input_ids`` (no padding)."""
    kwargs.setdefault("attention_mask", torch.ones_like(input_ids))
    kwargs.setdefault("use_cache", False)
    out = lm.base(input_ids=input_ids, **kwargs)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def answer_probs(lm: LanguageModel, hidden: torch.Tensor, answer_id: int) -> torch.Tensor:
    """P(answer) ``(B,)`` after the last position of the final hidden states ``(B, q, d)``."""
    B, q = hidden.shape[:2]
    logits = logits_at(lm, hidden, torch.arange(B), torch.full((B,), q - 1))  # (B, V)
    return torch.softmax(logits.float(), dim=-1)[:, answer_id]


@torch.no_grad()
def clean_states(lm: LanguageModel, corr: Corruption, kinds: Iterable[str]) -> tuple[dict[str, torch.Tensor], float]:
    """The clean run: states ``{kind: (n_layers, T, d)}`` and P(answer)."""
    kinds = list(dict.fromkeys(kinds))
    with ExitStack() as stack:
        seen = {(k, L): stack.enter_context(capture_output(lm.module(component_path(lm.spec, k, L))))
                for k in kinds for L in range(lm.n_layers)}
        hidden = final_hidden(lm, corr.ids(lm.device))
    states = {k: torch.stack([seen[k, L][0][0] for L in range(lm.n_layers)]) for k in kinds}
    return states, float(answer_probs(lm, hidden, corr.answer_id)[0])


@torch.no_grad()
def patched_probability(
    lm: LanguageModel,
    corr: Corruption,
    restore: Iterable[tuple[str, int, int]] = (),
    clean: Mapping[str, torch.Tensor] | None = None,
) -> float:
    """P(answer), averaged over the noise samples, of the corrupted run with the clean states
    ``restore = [(kind, layer, position), ...]`` put back: one plain full forward of ``S`` rows.
    With nothing restored: the corrupted probability."""
    restore = list(restore)
    if clean is None and restore:
        clean = clean_states(lm, corr, {k for k, _, _ in restore})[0]
    S, T = corr.samples, len(corr.token_ids)
    where: dict[tuple[str, int], list[int]] = defaultdict(list)
    for kind, layer, pos in restore:
        if not 0 <= pos < T:
            raise UserError(f"position {pos} is outside the prompt's {T} tokens")
        where[kind, lm.check_layer(layer)].append(pos)
    with ExitStack() as stack:
        stack.enter_context(hooked(lm.module(lm.spec.embeddings), post=noise_hook(corr, 0)))
        for (kind, layer), positions in where.items():
            pos = torch.tensor(positions, device=lm.device)
            rows = torch.arange(S, device=lm.device).repeat_interleave(len(positions))
            hook = restore_hook(rows, pos.repeat(S), clean[kind][layer, pos].repeat(S, 1))
            stack.enter_context(hooked(lm.module(component_path(lm.spec, kind, layer)), post=hook))
        hidden = final_hidden(lm, corr.ids(lm.device).expand(S, -1))
    return float(answer_probs(lm, hidden, corr.answer_id).mean())
