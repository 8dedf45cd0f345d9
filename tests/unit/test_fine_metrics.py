"""Portability and fine-grained locality (SSS paper §7.1, KnowEdit) on hand-made cases and scores."""

import pytest

from robustedit.data import Case, LabeledPrompt
from robustedit.eval.groups import ANSWER_FREE_TARGET, distract_prompt, score_items
from robustedit.eval.metrics import case_metrics, score_case
from robustedit.eval.scoring import TargetScore
from robustedit.request import EditRequest

EDIT = EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English", "French")
CASE = Case(
    "0", EDIT,
    neighborhood_prompts=("The mother tongue of Léon Blum is",), neighborhood_answer="French",
    attribute_prompts=("The mother tongue of Tony Blair is",),
    labeled=(LabeledPrompt("portability_alias", "The mother tongue of Darrieux is", "English"),
             LabeledPrompt("unrelated_attributes", "Danielle Darrieux was born in", "Bordeaux"),
             LabeledPrompt("unrelated_attributes", "Danielle Darrieux worked as", None)),
)


def _s(argmax, target, next_token=None):
    return TargetScore(logprob=-1.0, token_acc=sum(a == b for a, b in zip(argmax, target)) / len(target),
                       argmax=tuple(argmax), target=tuple(target),
                       next_token=argmax[0] if next_token is None else next_token)


def test_score_items_build_every_group_from_the_case():
    g = score_items(CASE)
    assert g["pre_nbr"] == [("The mother tongue of Léon Blum is", "French")]  # its answer is the old target
    assert g["post_nbr"] == [("The mother tongue of Tony Blair is", "English")]
    assert g["distract"] == [("The mother tongue of Danielle Darrieux is English. The mother tongue of Léon Blum is", "French")]
    assert g["lab_portability_alias"] == [("The mother tongue of Darrieux is", "English")]
    assert g["lab_unrelated_attributes"] == [("Danielle Darrieux was born in", "Bordeaux")]
    assert g["free_unrelated_attributes"] == [("Danielle Darrieux worked as", ANSWER_FREE_TARGET)]
    assert "lab_portability_reverse" not in g  # no such prompts: no group, no metric


def test_neighbours_with_another_answer_are_not_pre_neighbours():
    case = Case("1", EDIT, neighborhood_prompts=("Danielle Darrieux was born in",), neighborhood_answer="Bordeaux")
    g = score_items(case)
    assert "pre_nbr" not in g and g["distract"][0][1] == "Bordeaux"


def test_fine_grained_metrics_on_hand_made_scores():
    pre = {"pre_nbr": [_s((5, 6), (5, 7)), _s((8,), (8,))],
           "post_nbr": [_s((3,), (3,))],
           "distract": [_s((5, 6), (5, 6))],
           "lab_unrelated_attributes": [_s((1, 2, 3), (1, 2, 3))],
           "free_unrelated_attributes": [_s((4,), (0,))]}
    post = {"pre_nbr": [_s((5, 6), (5, 7)), _s((9,), (8,))],  # first kept, second changed
            "post_nbr": [_s((2,), (3,))],  # changed
            "distract": [_s((5, 1), (5, 6))],  # half of its tokens changed
            "lab_unrelated_attributes": [_s((1, 2, 0), (1, 2, 3))],  # 2 of 3 kept
            "free_unrelated_attributes": [_s((4,), (0,))],  # the next token kept
            "lab_portability_alias": [_s((7, 0), (7, 8))],
            "lab_portability_reverse": [_s((1,), (1,)), _s((0,), (2,))]}
    m = case_metrics(pre, post)
    assert m["pre_neighbor"] == pytest.approx(0.5)
    assert m["post_neighbor"] == 0.0
    assert m["distract_neighbor"] == pytest.approx(0.5)
    assert m["unrelated_attributes"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert m["portability_alias"] == pytest.approx(0.5)  # token accuracy after the edit
    assert m["portability_reverse"] == pytest.approx(0.5)
    assert "portability_one_hop" not in m and "forgetfulness" not in m


def test_an_unedited_model_keeps_every_locality_metric_at_one(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    scores = score_case(lm, CASE)
    m = case_metrics(scores, scores)
    for name in ("pre_neighbor", "post_neighbor", "distract_neighbor", "unrelated_attributes"):
        assert m[name] == 1.0
    assert 0.0 <= m["portability_alias"] <= 1.0


def test_distract_prompt_states_the_edit_before_the_neighbour():
    assert distract_prompt(CASE, "Q?").startswith("The mother tongue of Danielle Darrieux is English. Q?")
