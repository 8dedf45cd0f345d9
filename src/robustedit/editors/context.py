"""Context templates: short texts the model writes itself, placed before the edit prompt.

ROME (Meng et al. 2022, §3.1 and ``compute_u``/``compute_v`` in the reference code) averages the key
over prompts "x_j + s" with random prefixes x_j so that k* represents the subject in any context,
and optimises the value on the same prefixes. The prefixes are sampled from the model (top-k = 5)
starting from five fixed words, then braces are removed and ". {}" appended.

The templates come in groups: ``["{}"]``, then one group per ``[length, count]``. ROME averages
over all templates alike (:func:`generate_context_templates`, the groups flattened); MEMIT's
reference ``compute_ks`` averages within each group and then over the groups
(:func:`generate_context_groups` keeps the grouping for that).
"""

from __future__ import annotations

import torch

from robustedit.models.load import LanguageModel
from robustedit.models.text import pad_id

SEED_WORDS = ("The", "Therefore", "Because", "I", "You")


def generate_context_templates(lm: LanguageModel, length_counts: list[list[int]] | tuple, seed: int = 0) -> list[str]:
    """``["{}"]`` plus, for each ``[length, count]``, ``count`` sampled prefixes of ``length`` new tokens."""
    return [t for group in generate_context_groups(lm, length_counts, seed) for t in group]


@torch.no_grad()
def generate_context_groups(lm: LanguageModel, length_counts: list[list[int]] | tuple, seed: int = 0) -> list[list[str]]:
    """``[["{}"], group_1, ...]``: one group of sampled prefixes per ``[length, count]``.

    ``count`` is rounded down to a multiple of the five seed words (at least one each), as in the
    reference. Sampling runs under a forked RNG seeded with ``seed``, so the templates are
    reproducible and the caller's random state is untouched.
    """
    groups = [["{}"]]
    tok = lm.tokenizer
    side = tok.padding_side
    tok.padding_side = "left"  # generation continues every row from its last real token
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for length, count in length_counts:
                per_word = max(1, count // len(SEED_WORDS))
                ids = tok(list(SEED_WORDS), return_tensors="pt", padding=True).to(lm.device)
                out = lm.model.generate(
                    **ids, do_sample=True, top_k=5, max_new_tokens=int(length), min_new_tokens=int(length),
                    num_return_sequences=per_word, pad_token_id=pad_id(tok), eos_token_id=None,
                )
                groups.append([text.replace("{", " ").replace("}", " ") + ". {}"
                               for text in tok.batch_decode(out, skip_special_tokens=True)])
    finally:
        tok.padding_side = side
    return groups
