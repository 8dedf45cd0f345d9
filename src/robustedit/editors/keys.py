"""Keys: the input of a layer's MLP down-projection at the subject's last token."""

from __future__ import annotations

import torch

from robustedit.models.hooks import run_until
from robustedit.models.load import LanguageModel
from robustedit.models.text import encode, fill, pad, pad_id, subject_last_index


def subject_prompts(tokenizer, templates: list[str], subject: str) -> tuple[list[list[int]], list[int]]:
    """Token ids of each ``template.format(subject)`` and the index of the subject's last token."""
    rows, last = [], []
    for template in templates:
        text, start, end = fill(template, subject)
        rows.append(encode(tokenizer, text))
        last.append(subject_last_index(tokenizer, text, start, end))
    return rows, last


@torch.no_grad()
def subject_keys(lm: LanguageModel, layer: int, templates: list[str], subject: str) -> torch.Tensor:
    """Keys ``(N, d_in)`` of ``subject`` in each template (a string with one ``{}``).

    The forward pass stops at the layer's down-projection: nothing above it can change the key.
    """
    rows, last = subject_prompts(lm.tokenizer, templates, subject)
    batch = pad(rows, pad_id(lm.tokenizer), lm.device)
    k = run_until(lm.model, lm.down_proj(layer), input_ids=batch.input_ids,
                  attention_mask=batch.attention_mask, use_cache=False)  # (N, T, d_in)
    return k[torch.arange(len(rows)), torch.tensor(last)]


def group_mean(keys: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Mean over groups of the per-group means of ``keys`` ``(N, d)`` → ``(d,)``; ``sum(sizes) == N``.

    MEMIT's reference ``compute_ks`` averages this way over its context-template groups, so the
    bare prompt (a group of one) weighs as much as all sampled prefixes together.
    """
    if sum(sizes) != keys.shape[0] or min(sizes) < 1:
        raise ValueError(f"group sizes {sizes} do not partition {keys.shape[0]} keys")
    return torch.stack([g.mean(0) for g in keys.split(sizes)]).mean(0)
