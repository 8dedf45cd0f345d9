"""The REP paper's robustness probes (data/perturb.py) and their metrics (eval/metrics.py)."""

from __future__ import annotations

import random

import pytest

from robustedit.data import Case
from robustedit.errors import UserError
from robustedit.eval.metrics import case_metrics, robustness_items
from robustedit.data.perturb import (
    KINDS,
    RobustnessConfig,
    distinct_orders,
    in_domain,
    robustness_probes,
    subject_shuffles,
)
from robustedit.eval.scoring import TargetScore
from robustedit.request import EditRequest, Probe

CASE = Case(
    case_id="7",
    request=EditRequest("The mother tongue of {} is", "Danielle Darrieux Marie", "English", "French"),
    subject_rephrases=("Darrieux", "Mlle. Darrieux", "D. Darrieux", "the actress Darrieux", "Danielle D.",
                       "Darrieux", "Danielle Darrieux Marie"),  # a duplicate and the subject itself
)
SMALL = RobustnessConfig(n_per_kind=6, context_tokens=40)
WORDS = RobustnessConfig(n_per_kind=6, context_tokens=40, shuffle_unit="word")


def test_probes_are_deterministic_and_depend_on_seed_and_case(tokenizer):
    a = robustness_probes(CASE, tokenizer, SMALL)
    assert a == robustness_probes(CASE, tokenizer, SMALL)
    other_seed = robustness_probes(CASE, tokenizer, RobustnessConfig(n_per_kind=6, context_tokens=40, seed=1))
    other_case = robustness_probes(Case("8", CASE.request, subject_rephrases=CASE.subject_rephrases), tokenizer, SMALL)
    for b in (other_seed, other_case):
        assert a["long_context"] != b["long_context"] and a["shuffle_subject"] != b["shuffle_subject"]


def test_each_kind_is_split_in_halves_without_overlap(tokenizer):
    probes = robustness_probes(CASE, tokenizer, SMALL)
    assert set(probes) == set(KINDS)
    for kind, split in probes.items():
        ids, oods = split["id"], split["ood"]
        assert abs(len(ids) - len(oods)) <= 1 and len(ids) >= len(oods) and not set(ids) & set(oods), kind
    rephrased = [p.subject for s in probes["rephrase_subject"].values() for p in s]
    # duplicates and the subject itself are dropped; 5 distinct rephrasings are left
    assert sorted(rephrased) == sorted({"Darrieux", "Mlle. Darrieux", "D. Darrieux", "the actress Darrieux", "Danielle D."})
    assert in_domain(probes) == tuple(p for k in KINDS for p in probes[k]["id"])


def test_shuffles_permute_the_subject_tokens_by_default_as_the_paper_does(tokenizer):
    assert RobustnessConfig().shuffle_unit == "token"
    probes = robustness_probes(CASE, tokenizer, SMALL)["shuffle_subject"]
    shuffled = [p for s in probes.values() for p in s]
    pieces = sorted(tokenizer.decode([i]).strip() for i in tokenizer(" " + CASE.request.subject,
                                                                     add_special_tokens=False)["input_ids"])
    assert len(shuffled) == SMALL.n_per_kind  # 3 words but more tokens: enough other orders
    for p in shuffled:
        assert p.kind == "shuffle_subject" and p.subject != CASE.request.subject
        assert sorted(p.subject.replace(" ", "")) == sorted(CASE.request.subject.replace(" ", ""))
    # every piece of the subject is kept: the shuffle only reorders tokens
    assert all(piece in shuffled[0].subject for piece in pieces)


def test_shuffles_reorder_the_words_and_never_return_the_subject(tokenizer):
    probes = robustness_probes(CASE, tokenizer, WORDS)
    shuffled = [p for s in probes["shuffle_subject"].values() for p in s]
    assert len(shuffled) == 5  # 3 words: 3! - 1 other orders, fewer than n_per_kind
    for p in shuffled:
        assert p.template == CASE.request.prompt
        assert sorted(p.subject.split()) == sorted(CASE.request.subject.split()) and p.subject != CASE.request.subject
    assert len({p.subject for p in shuffled}) == len(shuffled)


def test_one_word_subjects_shuffle_tokens_and_single_tokens_have_no_shuffle(tokenizer):
    rng = random.Random(0)
    word = "Parisianopolis"
    pieces = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    assert len(pieces) > 2  # the tiny tokenizer splits it
    out = subject_shuffles(word, tokenizer, 4, rng, unit="word")
    assert out and all(s != word and sorted(s.replace(" ", "")) == sorted(word) for s in out)
    single = tokenizer.decode(tokenizer(" the", add_special_tokens=False)["input_ids"]).strip()
    assert subject_shuffles(single, tokenizer, 4, rng, unit="word") == []


def test_distinct_orders_samples_without_repeats_when_there_are_many():
    items = [str(i) for i in range(8)]
    orders = distinct_orders(items, 10, random.Random(3))
    assert len(orders) == len(set(orders)) == 10 and tuple(items) not in orders
    assert distinct_orders(["a", "a"], 5, random.Random(0)) == []


def test_long_context_probes_put_unrelated_text_of_the_configured_length_before_the_prompt(tokenizer):
    probes = robustness_probes(CASE, tokenizer, SMALL)["long_context"]
    for p in probes["id"] + probes["ood"]:
        assert p.subject == CASE.request.subject
        assert p.template.endswith(" " + CASE.request.prompt) and p.template.count("{}") == 1
        context = p.template[: -len(CASE.request.prompt) - 1]
        n = len(tokenizer(context, add_special_tokens=False)["input_ids"])
        assert 30 <= n <= 50, n  # 40 tokens, re-tokenised after decoding
        assert p.text.endswith(CASE.request.text)


def test_cases_without_rephrasings_have_no_rephrase_probes(tokenizer):
    plain = Case("9", CASE.request)
    assert "rephrase_subject" not in robustness_probes(plain, tokenizer, SMALL)


@pytest.mark.parametrize("bad", [{"n_per_kind": 1}, {"in_domain_fraction": 1.0}, {"shuffle_unit": "char"},
                                 {"context_tokens": 0}])
def test_bad_config_is_a_user_error(bad):
    with pytest.raises(UserError):
        RobustnessConfig(**bad)


def score(top1: bool) -> TargetScore:
    """A hand-made score of target ' English' (token 5): top-1 after the prompt or not."""
    return TargetScore(logprob=-1.0, token_acc=float(top1), argmax=(5 if top1 else 6,), target=(5,),
                       next_token=5 if top1 else 6)


def test_robustness_metrics_on_hand_made_scores():
    post = {"rephrase_subject_id": [score(True), score(False)], "rephrase_subject_ood": [score(True), score(True)],
            "shuffle_subject_id": [score(False)], "long_context_ood": [score(True), score(False), score(False), score(False)]}
    m = case_metrics({}, post)
    assert m["rephrase_subject_id"] == 0.5 and m["rephrase_subject_ood"] == 1.0 and m["rephrase_subject"] == 0.75
    assert m["shuffle_subject_id"] == 0.0 and "shuffle_subject_ood" not in m and m["shuffle_subject"] == 0.0
    assert m["long_context_ood"] == 0.25 and "long_context_id" not in m and m["long_context"] == 0.25


def test_robustness_items_pair_every_probe_with_the_new_target():
    probes = {"shuffle_subject": {"id": [Probe("The mother tongue of {} is", "Darrieux Danielle")], "ood": []}}
    assert robustness_items(CASE, probes) == {
        "shuffle_subject_id": [("The mother tongue of Darrieux Danielle is", "English")]}


def test_long_context_probes_that_do_not_fit_the_model_are_refused():
    from robustedit.data.perturb import RobustnessConfig
    from robustedit.errors import UserError

    RobustnessConfig(context_tokens=512).check_fits(8192, "smollm2")  # fits
    RobustnessConfig(context_tokens=512).check_fits(None, "a model without a position limit")
    with pytest.raises(UserError, match="context_tokens to at most 192"):
        RobustnessConfig(context_tokens=512).check_fits(256, "tiny-gpt2")


def test_a_rep_editor_on_a_short_model_says_so(tiny_lm_factory):
    from robustedit.editors import get_editor
    from robustedit.errors import UserError

    lm = tiny_lm_factory("gpt2")
    assert lm.max_positions is not None and lm.max_positions < 512 + 64
    with pytest.raises(UserError, match="do not fit"):
        get_editor("rome+rep", lm, layer=1)
    get_editor("rome+rep", lm, layer=1, rep={"robustness": {"context_tokens": 64}})
