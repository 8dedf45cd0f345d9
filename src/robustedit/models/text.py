"""Tokenisation shared by editors and scoring: prompts, subject positions, targets, padding.

Subject positions come from the fast tokenizer's character offsets, so they are exact whatever
the tokenizer merges (no re-tokenising of prefixes and suffixes as the reference code does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustedit.errors import UserError


def fill(template: str, subject: str) -> tuple[str, int, int]:
    """``template.format(subject)`` and the subject's character span in it."""
    if template.count("{}") != 1:
        raise UserError(f"the prompt must contain exactly one '{{}}': {template!r}")
    prefix, suffix = template.split("{}")
    prefix = prefix.replace("{{", "{").replace("}}", "}")
    suffix = suffix.replace("{{", "{").replace("}}", "}")
    return prefix + subject + suffix, len(prefix), len(prefix) + len(subject)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


def subject_last_index(tokenizer, text: str, start: int, end: int) -> int:
    """Index of the last token of ``text`` that overlaps the character span ``[start, end)``."""
    enc = tokenizer(text, return_offsets_mapping=True)
    last = None
    for i, (a, b) in enumerate(enc["offset_mapping"]):
        if b > a and a < end and b > start:
            last = i
    if last is None:
        raise UserError(f"could not locate the subject in the tokens of {text!r}")
    return last


def subject_token_range(tokenizer, text: str, start: int, end: int) -> tuple[int, int]:
    """Token range ``[first, last + 1)`` of ``text`` overlapping the character span ``[start, end)``."""
    enc = tokenizer(text, return_offsets_mapping=True)
    hits = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end and b > start]
    if not hits:
        raise UserError(f"could not locate the subject in the tokens of {text!r}")
    return hits[0], hits[-1] + 1


def target_ids(tokenizer, prompt: str, target: str) -> list[int]:
    """Tokens of ``" " + target`` as they follow ``prompt`` when the two are tokenised together."""
    target = target.strip()
    if not target:
        raise UserError("the target is empty")
    head = encode(tokenizer, prompt)
    full = encode(tokenizer, prompt + " " + target)
    if full[: len(head)] == head and len(full) > len(head):
        return full[len(head):]
    return tokenizer(" " + target, add_special_tokens=False)["input_ids"]


@dataclass
class Batch:
    """Right-padded token ids ``(B, T)`` and mask; ``lengths[i]`` real tokens in row i."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: list[int]


def pad(rows: list[list[int]], pad_id: int, device: torch.device | str = "cpu") -> Batch:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return Batch(ids.to(device), mask.to(device), [len(r) for r in rows])


def pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def length_batches(seqs: list, batch_size: int, max_tokens: int, size=len) -> list[list]:
    """Length-sorted ``seqs`` cut into batches of at most ``batch_size`` rows and ``max_tokens``
    padded tokens: one 512-token prompt must not pad fifty short ones to its length (the REP
    paper's long-context probes made one case's scoring 5× slower that way). ``size`` gives an
    item's length (``len`` of a sequence by default)."""
    batches: list[list] = []
    for seq in seqs:  # ascending length, so a batch pads to its last sequence's length
        if not batches or len(batches[-1]) == batch_size or (len(batches[-1]) + 1) * size(seq) > max_tokens:
            batches.append([])
        batches[-1].append(seq)
    return batches


def first_target_token(tokenizer, prompt: str, target: str) -> str:
    """The target's first token as it follows ``prompt``, decoded as a prediction is."""
    return tokenizer.decode(int(target_ids(tokenizer, prompt, target)[0]))
