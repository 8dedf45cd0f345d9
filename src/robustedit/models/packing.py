"""Many short sequences in one forward pass, each shared prefix computed once (a prefix tree).

A CounterFact case is scored on ~33 sequences of 5–30 tokens that share a lot: the ten
"distract" prompts all start with the edit stated as a sentence, neighbour prompts share their
relation's wording, and a prompt scored with two targets is the same sequence twice. Padded to a
common length they cost ~800 token positions per pass; as a prefix tree (every distinct prefix
one node) ~260. The tree is laid out as one row: a node attends to itself and its ancestors (a 4D
additive mask) at the position it has in its own sequence (``position_ids`` = depth), which is
exactly what the model computes for each sequence alone: logits agree with a padded batch up to
floating-point summation order.

Models whose causal-LM wrapper carries a forward hook (an edit memory that reads whole rows,
``editors/memory.py``) cannot be fed packed rows; ``scoring`` keeps padded batches for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Seq = tuple[int, ...]


@dataclass
class PackedRow:
    """One row of a packed batch: tree nodes in an order where parents come first."""

    tokens: list[int]  # node -> token id
    parents: list[int]  # node -> parent node (-1 for a root)
    depths: list[int]  # node -> position in its sequence
    node_of: dict[Seq, int]  # every prefix of every sequence in the row -> its node

    def __len__(self) -> int:
        return len(self.tokens)


def build_row(seqs: list[Seq]) -> PackedRow:
    row = PackedRow([], [], [], {})
    for seq in seqs:
        for end in range(1, len(seq) + 1):
            prefix = seq[:end]
            if prefix in row.node_of:
                continue
            row.node_of[prefix] = len(row.tokens)
            row.tokens.append(seq[end - 1])
            row.parents.append(row.node_of[prefix[:-1]] if end > 1 else -1)
            row.depths.append(end - 1)
    return row


def pack(seqs: list[Seq], max_row_tokens: int) -> list[PackedRow]:
    """Sequences in lexicographic order (so shared prefixes meet) cut into rows of at most
    ``max_row_tokens`` nodes; a longer sequence gets a row of its own."""
    rows: list[list[Seq]] = []
    nodes: set[Seq] = set()
    for seq in sorted(set(seqs)):
        new = sum(1 for end in range(1, len(seq) + 1) if seq[:end] not in nodes)
        if not rows or (len(nodes) + new > max_row_tokens and rows[-1]):
            rows.append([])
            nodes = set()
        rows[-1].append(seq)
        nodes.update(seq[:end] for end in range(1, len(seq) + 1))
    return [build_row(r) for r in rows]


def batch_tensors(rows: list[PackedRow], pad_id: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, ...]:
    """``input_ids (B, T)``, additive ``mask (B, 1, T, T)`` and ``position_ids (B, T)`` of rows
    padded to one width; a padding node attends only to itself (no row is all-masked)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    allowed = torch.zeros((len(rows), width, width), dtype=torch.bool)
    for b, row in enumerate(rows):
        n = len(row)
        ids[b, :n] = torch.tensor(row.tokens)
        positions[b, :n] = torch.tensor(row.depths)
        for i, parent in enumerate(row.parents):  # parents first: their ancestor sets are complete
            if parent >= 0:
                allowed[b, i] = allowed[b, parent]
            allowed[b, i, i] = True
        idx = torch.arange(n, width)
        allowed[b, idx, idx] = True
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return ids.to(device), mask[:, None].to(device), positions.to(device)
