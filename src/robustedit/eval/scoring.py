"""Batched scoring of (prompt, target) pairs: every number the metrics need from one pass.

For each pair the sequence ``prompt + target[:-1]`` is run once (identical sequences are run once
in total; single-token targets of the same prompt share a row) and the next-token distributions
at the target positions give the target's log-probability, its teacher-forced token accuracy, and
the model's top-1 next token after the prompt.

Sequences are packed as prefix trees (``models.packing``: each shared prefix computed once, no
padding), which makes a CounterFact case ~3× cheaper to score than padded batches. Padded,
length-sorted batches remain for models that cannot take packed rows: an edit memory hooked on
the causal LM (it reads whole rows), and sequences longer than a sliding attention window (one
4D mask cannot express both a model's full and its windowed layers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustedit.models.forward import logits_at, packed_hidden_states, position_logits, reroutes_logits
from robustedit.models.load import LanguageModel
from robustedit.models.packing import batch_tensors, pack
from robustedit.models.text import encode, length_batches, pad, pad_id, target_ids


@dataclass(frozen=True)
class TargetScore:
    logprob: float  # mean log-probability per target token (the ROME paper's comparison)
    token_acc: float  # share of target tokens that are the argmax under teacher forcing
    argmax: tuple[int, ...]  # teacher-forced argmax at each target position
    target: tuple[int, ...]  # the target's token ids
    next_token: int  # top-1 token right after the prompt

    @property
    def first_top1(self) -> bool:
        return self.next_token == self.target[0]


@torch.inference_mode()
def score_pairs(lm: LanguageModel, pairs: list[tuple[str, str]], batch_size: int = 64,
                max_tokens: int = 4096, max_row_tokens: int = 512) -> list[TargetScore]:
    tok = lm.tokenizer
    prompt_ids: dict[str, list[int]] = {}
    plans = []  # (sequence key, first position, target ids)
    for prompt, target in pairs:
        p = prompt_ids.setdefault(prompt, encode(tok, prompt))
        t = target_ids(tok, prompt, target)
        plans.append((tuple(p + t[:-1]), len(p) - 1, t))
    firsts: dict[tuple, int] = {}
    for seq, first, _ in plans:
        firsts[seq] = min(first, firsts.get(seq, first))
    if not firsts:
        return []
    if can_pack(lm, firsts):
        logprobs = _packed_logprobs(lm, firsts, batch_size, max_tokens, max_row_tokens)
    else:
        logprobs = _padded_logprobs(lm, firsts, batch_size, max_tokens)
    scores = []
    for seq, first, t in plans:
        lp = logprobs[seq][first - firsts[seq] : first - firsts[seq] + len(t)]  # (len(t), V)
        tgt = torch.tensor(t, device=lp.device)  # the log-probabilities stay where the model runs
        picked = lp.gather(1, tgt[:, None])[:, 0]
        argmax = lp.argmax(-1)
        scores.append(TargetScore(
            logprob=float(picked.mean()),
            token_acc=float((argmax == tgt).float().mean()),
            argmax=tuple(int(a) for a in argmax),
            target=tuple(t),
            next_token=int(argmax[0]),
        ))
    return scores


def can_pack(lm: LanguageModel, seqs) -> bool:
    """Packed rows need the base model's own forward and every sequence inside any sliding window."""
    if reroutes_logits(lm.model):
        return False
    config = lm.model.config.get_text_config() if hasattr(lm.model.config, "get_text_config") else lm.model.config
    window = getattr(config, "sliding_window", None)
    return not window or max(len(s) for s in seqs) <= window


def _log_softmax_at(lm: LanguageModel, hidden: torch.Tensor, rows: list[int], cols: list[int]) -> torch.Tensor:
    return torch.log_softmax(logits_at(lm, hidden, torch.tensor(rows), torch.tensor(cols)).float(), dim=-1)


def _packed_logprobs(lm: LanguageModel, firsts: dict[tuple, int], batch_size: int, max_tokens: int,
                     max_row_tokens: int) -> dict[tuple, torch.Tensor]:
    """Sequence -> ``(T, V)`` log-probs from its first scored position, from prefix-tree rows."""
    packed = sorted(pack(list(firsts), max_row_tokens), key=len)
    dtype = next(lm.model.parameters()).dtype
    logprobs = {}
    for chunk in length_batches(packed, batch_size, max_tokens):
        ids, mask, positions = batch_tensors(chunk, pad_id(lm.tokenizer), dtype, lm.device)
        hidden = packed_hidden_states(lm, ids, mask, positions)
        where: dict[tuple[int, int], int] = {}  # (row, node) -> index among the computed positions
        for b, row in enumerate(chunk):
            for seq in (s for s in row.node_of if s in firsts):
                for c in range(firsts[seq], len(seq)):
                    where.setdefault((b, row.node_of[seq[: c + 1]]), len(where))
        lp = _log_softmax_at(lm, hidden, [b for b, _ in where], [n for _, n in where])
        for b, row in enumerate(chunk):
            for seq in (s for s in row.node_of if s in firsts):
                picks = [where[(b, row.node_of[seq[: c + 1]])] for c in range(firsts[seq], len(seq))]
                logprobs[seq] = lp[picks]
    return logprobs


def _padded_logprobs(lm: LanguageModel, firsts: dict[tuple, int], batch_size: int,
                     max_tokens: int) -> dict[tuple, torch.Tensor]:
    """The same from right-padded, length-sorted batches (``position_logits``)."""
    logprobs = {}
    for chunk in length_batches(sorted(firsts, key=len), batch_size, max_tokens):
        batch = pad([list(s) for s in chunk], pad_id(lm.tokenizer), lm.device)
        rows, cols = [], []
        for i, seq in enumerate(chunk):
            for c in range(firsts[seq], len(seq)):
                rows.append(i)
                cols.append(c)
        lp = torch.log_softmax(position_logits(lm, batch, torch.tensor(rows), torch.tensor(cols)).float(), dim=-1)
        offset = 0
        for seq in chunk:
            n = len(seq) - firsts[seq]
            logprobs[seq] = lp[offset : offset + n]
            offset += n
    return logprobs
