"""Keys: the input of a layer's MLP down-projection at the subject's last token."""

from __future__ import annotations

import torch

from robustedit.models.hooks import run_until
from robustedit.models.load import LanguageModel
from robustedit.models.text import encode, fill, pad, pad_id, subject_last_index
from robustedit.stats.corpus import token_windows


def subject_prompts(tokenizer, templates: list[str], subject: str) -> tuple[list[list[int]], list[int]]:
    """Token ids of each ``template.format(subject)`` and the index of the subject's last token."""
    rows, last = [], []
    for template in templates:
        text, start, end = fill(template, subject)
        rows.append(encode(tokenizer, text))
        last.append(subject_last_index(tokenizer, text, start, end))
    return rows, last


@torch.no_grad()
def at_subjects(lm: LanguageModel, module: torch.nn.Module, filled: list[tuple[str, str]], *, output: bool,
                batch_size: int = 64) -> torch.Tensor:
    """The input (``output=False``) or output of ``module`` at the subject's last token of each
    ``(template, subject)`` pair, ``(N, width)``, in padded batches of up to ``batch_size`` prompts
    (of any subjects: one call serves a whole batch of requests). The forward pass stops at
    ``module``: nothing above it can change the result."""
    return subject_and_other_states(lm, module, filled, output=output, batch_size=batch_size, others=False)[0]


@torch.no_grad()
def subject_and_other_states(lm: LanguageModel, module: torch.nn.Module, filled: list[tuple[str, str]], *,
                             output: bool, batch_size: int = 64, others: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """As ``at_subjects``, and also the states at every *other* real (non-padding) token of the
    prompts, ``(M, width)``: the tokens an adaptor on ``module`` sees besides the subject's last
    (empty with ``others=False``, which skips gathering them)."""
    rows, last = [], []
    for template, subject in filled:
        r, i = subject_prompts(lm.tokenizer, [template], subject)
        rows += r
        last += i
    at, rest = [], []
    for start in range(0, len(rows), batch_size):
        chunk, idx = rows[start : start + batch_size], last[start : start + batch_size]
        batch = pad(chunk, pad_id(lm.tokenizer), lm.device)
        h = run_until(lm.model, module, output=output, input_ids=batch.input_ids,
                      attention_mask=batch.attention_mask, use_cache=False)  # (B, T, width)
        rows_idx = torch.arange(len(chunk))
        at.append(h[rows_idx, torch.tensor(idx)])
        if others:
            other = batch.attention_mask.bool().clone()
            other[rows_idx, torch.tensor(idx)] = False
            rest.append(h[other.to(h.device)])
    return torch.cat(at), (torch.cat(rest) if rest else h.new_zeros((0, h.shape[-1])))


def subject_keys(lm: LanguageModel, layer: int, templates: list[str], subject: str) -> torch.Tensor:
    """Keys ``(N, d_in)`` of ``subject`` in each template (a string with one ``{}``)."""
    return at_subjects(lm, lm.down_proj(layer), [(t, subject) for t in templates], output=False)


def group_mean(keys: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Mean over groups of the per-group means of ``keys`` ``(N, d)`` → ``(d,)``; ``sum(sizes) == N``.

    MEMIT's reference ``compute_ks`` averages this way over its context-template groups, so the
    bare prompt (a group of one) weighs as much as all sampled prefixes together.
    """
    if sum(sizes) != keys.shape[0] or min(sizes) < 1:
        raise ValueError(f"group sizes {sizes} do not partition {keys.shape[0]} keys")
    return torch.stack([g.mean(0) for g in keys.split(sizes)]).mean(0)


@torch.no_grad()
def corpus_keys(lm: LanguageModel, module: torch.nn.Module, corpus: str, n_tokens: int, seq_len: int = 256) -> torch.Tensor:
    """The input of ``module`` at every token of the first ``n_tokens`` tokens of a shipped corpus,
    ``(T, d_in)`` float32 (keys of unrelated text)."""
    windows = token_windows(lm.tokenizer, corpus, n_tokens, seq_len).to(lm.device)
    return torch.cat([run_until(lm.model, module, input_ids=w[None], use_cache=False)[0] for w in windows]).float()
