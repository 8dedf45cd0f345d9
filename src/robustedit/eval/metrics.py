"""Per-case metrics (docs/contract.md names) computed from scores before and after the edit.

Each metric is registered with its direction; a metric returns ``None`` when the case lacks what
it needs (no paraphrases, no true target), and the summary averages over the cases that have it.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import mean
from typing import Callable

from robustedit.data import Case
from robustedit.eval.groups import robustness_items, score_items
from robustedit.data.perturb import KINDS, SPLITS
from robustedit.eval.scoring import TargetScore, score_pairs
from robustedit.models.load import LanguageModel
from robustedit.registry import Registry

Scores = dict[str, list[TargetScore]]
Probes = dict  # {kind: {split: [Probe, ...]}} from data.perturb.robustness_probes


def score_case(lm: LanguageModel, case: Case, probes: Probes | None = None) -> Scores:
    """Score every group of a case (and its robustness probes, if given) in one batched call."""
    groups = score_items(case)
    if probes:
        groups.update(robustness_items(case, probes))
    flat = [pair for pairs in groups.values() for pair in pairs]
    scores = score_pairs(lm, flat)
    out, i = {}, 0
    for name, pairs in groups.items():
        out[name] = scores[i : i + len(pairs)]
        i += len(pairs)
    return out


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[Scores, Scores], float | None]
    help: str
    higher_is_better: bool = True


METRICS: Registry[Metric] = Registry("metric")


def metric(name: str, help: str):
    def wrap(fn):
        METRICS.register(name, Metric(name, fn, help))
        return fn

    return wrap


def _wins(a: list[TargetScore], b: list[TargetScore]) -> float | None:
    return mean(float(x.logprob > y.logprob) for x, y in zip(a, b)) if a and b else None


@metric("efficacy", "P(target_new) > P(target_true) on the edit prompt")
def _efficacy(pre: Scores, post: Scores):
    return _wins(post.get("edit_new", []), post.get("edit_true", []))


@metric("paraphrase", "the same on paraphrased prompts")
def _paraphrase(pre: Scores, post: Scores):
    return _wins(post.get("para_new", []), post.get("para_true", []))


@metric("neighborhood", "P(true answer) > P(target_new) on neighbour prompts")
def _neighborhood(pre: Scores, post: Scores):
    return _wins(post.get("nbr_answer", []), post.get("nbr_new", []))


@metric("efficacy_top1", "the first token of target_new is the top-1 prediction after the edit")
def _efficacy_top1(pre: Scores, post: Scores):
    s = post.get("edit_new")
    return float(s[0].first_top1) if s else None


@metric("locality_top1", "share of neighbour prompts whose top-1 prediction is unchanged")
def _locality_top1(pre: Scores, post: Scores):
    a, b = pre.get("nbr_answer", []), post.get("nbr_answer", [])
    return mean(float(x.next_token == y.next_token) for x, y in zip(a, b)) if a else None


@metric("efficacy_acc", "teacher-forced token accuracy of target_new on the edit prompt")
def _efficacy_acc(pre: Scores, post: Scores):
    s = post.get("edit_new")
    return s[0].token_acc if s else None


@metric("paraphrase_acc", "teacher-forced token accuracy of target_new on paraphrases")
def _paraphrase_acc(pre: Scores, post: Scores):
    s = post.get("para_new", [])
    return mean(x.token_acc for x in s) if s else None


@metric("locality_acc", "teacher-forced agreement with the unedited model's tokens on neighbour prompts")
def _locality_acc(pre: Scores, post: Scores):
    a, b = pre.get("nbr_answer", []), post.get("nbr_answer", [])
    if not a:
        return None
    return mean(mean(float(x == y) for x, y in zip(s.argmax, t.argmax)) for s, t in zip(a, b))


def _agreement(pre: Scores, post: Scores, group: str) -> list[float]:
    """Per prompt: the share of the answer's positions whose teacher-forced top-1 token is the same
    before and after the edit (EasyEdit's / KnowEdit's locality); for answer-free prompts
    (``free_<group>``), whether the next token is the same."""
    a, b = pre.get(f"lab_{group}", pre.get(group, [])), post.get(f"lab_{group}", post.get(group, []))
    same = [mean(float(x == y) for x, y in zip(s.argmax, t.argmax)) for s, t in zip(a, b)]
    fa, fb = pre.get(f"free_{group}", []), post.get(f"free_{group}", [])
    return same + [float(s.next_token == t.next_token) for s, t in zip(fa, fb)]


def _register_unchanged(name: str, group: str, help: str) -> None:
    METRICS.register(name, Metric(name, lambda pre, post: (mean(v) if (v := _agreement(pre, post, group)) else None), help))


_register_unchanged("pre_neighbor", "pre_nbr", "neighbours whose answer is the old target: teacher-forced tokens unchanged (SSS §7.1)")
_register_unchanged("post_neighbor", "post_nbr", "other subjects whose answer is the new target: tokens unchanged (SSS §7.1)")
_register_unchanged("distract_neighbor", "distract", "neighbour prompts after the edit stated as a sentence: tokens unchanged (SSS §7.1)")
_register_unchanged("unrelated_attributes", "unrelated_attributes", "other facts about the same subject: tokens unchanged (SSS §7.1)")
_register_unchanged("forgetfulness", "forgetfulness", "other objects of the same subject and relation: tokens unchanged (KnowEdit)")


def _register_portability(name: str, help: str) -> None:
    def fn(pre: Scores, post: Scores):
        s = post.get(f"lab_{name}", [])
        return mean(x.token_acc for x in s) if s else None

    METRICS.register(name, Metric(name, fn, help))


_register_portability("portability_alias", "subject replaced by an alias: token accuracy of the new target (KnowEdit)")
_register_portability("portability_reverse", "the reversed relation asked about the new target: token accuracy of the subject")
_register_portability("portability_one_hop", "a one-hop question through the edited fact: token accuracy of its answer (KnowEdit)")
_register_portability("portability_logical", "KnowEdit's Logical_Generalization prompts: token accuracy of their answers")


@metric("generation_entropy", "ROME's fluency: weighted bi-/tri-gram entropy of texts generated about the subject")
def _generation_entropy(pre: Scores, post: Scores):
    g = post.get("generation")
    return g.entropy if g is not None else None


@metric("reference_consistency", "ROME's consistency: TF-IDF cosine of those texts with the unedited model's texts about target_new")
def _reference_consistency(pre: Scores, post: Scores):
    g = post.get("generation")
    return g.consistency if g is not None else None


def _top1_share(scores: list[TargetScore]) -> float | None:
    return mean(float(s.first_top1) for s in scores) if scores else None


def _register_robustness(kind: str) -> None:
    """``kind`` (all its probes), ``kind_id`` and ``kind_ood``: top-1 success as ``efficacy_top1``."""
    what = {"rephrase_subject": "the subject rephrased", "shuffle_subject": "the subject's words shuffled",
            "long_context": "a long unrelated text before the prompt"}[kind]
    METRICS.register(kind, Metric(kind, lambda pre, post: _top1_share(
        [s for split in SPLITS for s in post.get(f"{kind}_{split}", [])]),
        f"target_new is top-1 on the edit prompt with {what}"))
    for split in SPLITS:
        name = f"{kind}_{split}"
        half = "in-domain" if split == "id" else "out-of-domain"
        METRICS.register(name, Metric(name, lambda pre, post, g=name: _top1_share(post.get(g, [])),
                                      f"the same over the {half} probes"))


for _kind in KINDS:
    _register_robustness(_kind)


def case_metrics(pre: Scores, post: Scores) -> dict[str, float]:
    values = {name: METRICS.get(name).fn(pre, post) for name in METRICS.names()}
    return {k: v for k, v in values.items() if v is not None}


def pre_edit_facts(pre: Scores) -> dict:
    """What the unedited model believed: kept in each record (and used for "known" filters)."""
    out = {"new_logprob": pre["edit_new"][0].logprob}
    if "edit_true" in pre:
        out["true_logprob"] = pre["edit_true"][0].logprob
        out["true_top1"] = pre["edit_true"][0].first_top1
    out["efficacy"] = _efficacy(pre, pre)
    return {k: v for k, v in out.items() if v is not None}
