"""Batched scoring of (prompt, target) pairs: every number the metrics need from one pass.

For each pair the sequence ``prompt + target[:-1]`` is run once (identical sequences are run once
in total; single-token targets of the same prompt share a row) and the next-token distributions
at the target positions give the target's log-probability, its teacher-forced token accuracy, and
the model's top-1 next token after the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustedit.models.forward import position_logits
from robustedit.models.load import LanguageModel
from robustedit.models.text import encode, pad, pad_id, target_ids


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


def length_batches(seqs: list[tuple], batch_size: int, max_tokens: int) -> list[list[tuple]]:
    """Length-sorted ``seqs`` cut into batches of at most ``batch_size`` rows and ``max_tokens``
    padded tokens: one 512-token prompt must not pad fifty short ones to its length (the REP
    paper's long-context probes made one case's scoring 5× slower that way)."""
    batches: list[list[tuple]] = []
    for seq in seqs:  # ascending length, so a batch pads to its last sequence's length
        if not batches or len(batches[-1]) == batch_size or (len(batches[-1]) + 1) * len(seq) > max_tokens:
            batches.append([])
        batches[-1].append(seq)
    return batches


@torch.inference_mode()
def score_pairs(lm: LanguageModel, pairs: list[tuple[str, str]], batch_size: int = 64,
                max_tokens: int = 4096) -> list[TargetScore]:
    tok = lm.tokenizer
    prompt_ids: dict[str, list[int]] = {}
    plans = []  # (sequence key, first position, target ids)
    for prompt, target in pairs:
        p = prompt_ids.setdefault(prompt, encode(tok, prompt))
        t = target_ids(tok, prompt, target)
        plans.append((tuple(p + t[:-1]), len(p) - 1, t))
    unique = sorted({seq for seq, _, _ in plans}, key=len)
    logprobs: dict[tuple, torch.Tensor] = {}  # sequence -> (T, V) log-probs from first scored position
    firsts = {}
    for seq, first, _ in plans:
        firsts[seq] = min(first, firsts.get(seq, first))
    for chunk in length_batches(unique, batch_size, max_tokens):
        batch = pad([list(s) for s in chunk], pad_id(tok), lm.device)
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
    scores = []
    for seq, first, t in plans:
        lp = logprobs[seq][first - firsts[seq] : first - firsts[seq] + len(t)]  # (len(t), V)
        tgt = torch.tensor(t)
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
