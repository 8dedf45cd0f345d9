"""General ability on text no edit touched: what a sequence of edits costs the rest of the model.

Two probes, both measured before the first edit and at every checkpoint of a sequential run:

- **perplexity** on a held-back slice of WikiText-2 (validation split): the *last* ``n_tokens``
  tokens of the shipped file, cut into windows. The key statistics C use the enwiki sample by
  default, so these tokens shape neither C nor any edit.
- **neighbour agreement**: the share of probe prompts whose top-1 next token is still the
  unedited model's. The probe prompts are neighbourhood prompts of cases that are *not* edited,
  so this measures drift of unrelated facts, where ``locality_top1`` measures the neighbours of
  the edited facts themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from robustedit.models.load import LanguageModel
from robustedit.models.text import encode, pad, pad_id
from robustedit.stats.corpus import CORPORA

HELDOUT_CORPUS = "wikitext2-valid"


def heldout_windows(tokenizer, n_tokens: int = 4096, seq_len: int = 256) -> torch.Tensor:
    """The last ``n_tokens`` tokens of the held-back corpus as ``(n_windows, seq_len)``."""
    texts = CORPORA.get(HELDOUT_CORPUS).texts()
    ids: list[int] = []
    for text in reversed(texts):  # from the end of the file: the part nothing else reads
        ids[:0] = tokenizer(text + (tokenizer.eos_token or "\n\n"), add_special_tokens=False)["input_ids"]
        if len(ids) >= n_tokens:
            break
    n_windows = min(n_tokens, len(ids)) // seq_len
    if n_windows == 0:
        raise ValueError(f"n_tokens={n_tokens} is less than one window of {seq_len} tokens")
    tail = ids[len(ids) - n_windows * seq_len:]
    return torch.tensor(tail, dtype=torch.long).view(n_windows, seq_len)


@torch.no_grad()
def perplexity(lm: LanguageModel, windows: torch.Tensor, batch_size: int = 4) -> float:
    """exp of the mean next-token NLL over every position of every window."""
    total, count = 0.0, 0
    for batch in windows.split(batch_size):
        batch = batch.to(lm.device)
        logits = lm.model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                                reduction="sum")
        total += float(nll)
        count += batch[:, 1:].numel()
    return math.exp(total / count)


@torch.no_grad()
def next_tokens(lm: LanguageModel, prompts: list[str], batch_size: int = 64) -> list[int]:
    """The greedy next token after each prompt."""
    out: list[int] = []
    for i in range(0, len(prompts), batch_size):
        rows = [encode(lm.tokenizer, p) for p in prompts[i : i + batch_size]]
        batch = pad(rows, pad_id(lm.tokenizer), lm.device)  # right padding: positions stay 0, 1, ...
        logits = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        last = torch.tensor([n - 1 for n in batch.lengths], device=lm.device)
        out += logits[torch.arange(len(rows), device=lm.device), last].argmax(-1).tolist()
    return out


@dataclass
class AbilityProbe:
    """The held-back text and prompts, with the unedited model's answers on them."""

    windows: torch.Tensor
    prompts: list[str]
    reference_tokens: list[int]
    reference_perplexity: float

    @classmethod
    def build(cls, lm: LanguageModel, prompts: list[str], n_tokens: int = 4096, seq_len: int = 256) -> "AbilityProbe":
        windows = heldout_windows(lm.tokenizer, n_tokens, seq_len)
        return cls(windows, prompts, next_tokens(lm, prompts), perplexity(lm, windows))

    def unedited(self) -> dict[str, float]:
        """``measure`` on the model the probe was built from, without running it again."""
        return {"perplexity": self.reference_perplexity, **({"neighbor_agreement": 1.0} if self.prompts else {})}

    def measure(self, lm: LanguageModel) -> dict[str, float]:
        out = {"perplexity": perplexity(lm, self.windows)}
        if self.prompts:  # no probe prompt (every case was edited): no agreement to report, not 0
            now = next_tokens(lm, self.prompts)
            out["neighbor_agreement"] = sum(a == b for a, b in zip(now, self.reference_tokens)) / len(now)
        return out
