"""Prefix-tree packing: each shared prefix once, and the same scores as padded batches on every
architecture."""

import pytest
import torch

from robustedit.eval import scoring
from robustedit.models.packing import batch_tensors, build_row, pack


def test_a_row_holds_each_prefix_once_with_its_parent_and_depth():
    row = build_row([(1, 2, 3), (1, 2, 4), (5,)])
    assert row.tokens == [1, 2, 3, 4, 5]
    assert row.parents == [-1, 0, 1, 1, -1]
    assert row.depths == [0, 1, 2, 2, 0]
    ids, mask, pos = batch_tensors([row], pad_id=0, dtype=torch.float32, device="cpu")
    allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 0, 1, 0], [0, 0, 0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2, 2, 0]]


def test_rows_respect_the_node_budget_and_keep_every_sequence():
    seqs = [(1, 2, 3, 4), (1, 2, 3, 5), (6, 7, 8), (9,) * 10, (1, 2, 3, 4)]
    rows = pack(seqs, max_row_tokens=6)
    kept = [s for r in rows for s in r.node_of if s in set(seqs)]
    assert sorted(set(kept)) == sorted(set(seqs))
    assert all(len(r) <= 6 or len([s for s in r.node_of if s in set(seqs)]) == 1 for r in rows)
    assert len(rows[0]) == 5  # (1,2,3,4) and (1,2,3,5) share three nodes


def test_padding_nodes_attend_to_themselves_only():
    rows = [build_row([(1, 2, 3)]), build_row([(4,)])]
    _, mask, _ = batch_tensors(rows, pad_id=0, dtype=torch.float32, device="cpu")
    assert ((mask[1, 0] == 0).sum(-1) >= 1).all()  # no all-masked row (softmax would give nan)


PAIRS = [("The mother tongue of Danielle Darrieux is", "French"),
         ("The mother tongue of Danielle Darrieux is", "English"),
         ("The mother tongue of Danielle Darrieux is English. The mother tongue of Léon Blum is", "French"),
         ("The mother tongue of Léon Blum is", "French"),
         ("Paris is the capital of", "France"), ("Danielle Darrieux speaks", "French and English")]


def test_packed_scores_equal_padded_scores(tiny_lm, monkeypatch):
    packed = scoring.score_pairs(tiny_lm, PAIRS)
    assert scoring.can_pack(tiny_lm, {(1,) * 8: 0})
    monkeypatch.setattr(scoring, "can_pack", lambda lm, seqs: False)
    padded = scoring.score_pairs(tiny_lm, PAIRS)
    for a, b in zip(packed, padded):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert a.argmax == b.argmax and a.next_token == b.next_token and a.target == b.target


def test_small_rows_give_the_same_scores(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    for a, b in zip(scoring.score_pairs(lm, PAIRS), scoring.score_pairs(lm, PAIRS, max_row_tokens=8)):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-5) and a.argmax == b.argmax
