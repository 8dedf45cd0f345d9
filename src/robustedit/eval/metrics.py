"""Per-case metrics (CONTRACT.md names) computed from scores before and after the edit.

Each metric is registered with its direction; a metric returns ``None`` when the case lacks what
it needs (no paraphrases, no true target), and the summary averages over the cases that have it.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import mean
from typing import Callable

from robustedit.data import Case
from robustedit.eval.robustness import KINDS, SPLITS
from robustedit.eval.scoring import TargetScore, score_pairs
from robustedit.models.load import LanguageModel
from robustedit.registry import Registry

Scores = dict[str, list[TargetScore]]
Probes = dict  # {kind: {split: [Probe, ...]}} from eval.robustness.robustness_probes


def score_items(case: Case) -> dict[str, list[tuple[str, str]]]:
    """The (prompt, target) pairs of a case, grouped by what they test."""
    r = case.request
    groups = {"edit_new": [(r.text, r.target_new)], "para_new": [(p, r.target_new) for p in case.paraphrase_prompts]}
    if r.target_true:
        groups["edit_true"] = [(r.text, r.target_true)]
        groups["para_true"] = [(p, r.target_true) for p in case.paraphrase_prompts]
    if case.neighborhood_answer:
        groups["nbr_answer"] = [(p, case.neighborhood_answer) for p in case.neighborhood_prompts]
        groups["nbr_new"] = [(p, r.target_new) for p in case.neighborhood_prompts]
    return {k: v for k, v in groups.items() if v}


def robustness_items(case: Case, probes: Probes) -> dict[str, list[tuple[str, str]]]:
    """``<kind>_<split>`` groups: each robustness probe with the new target (``eval.robustness``)."""
    target = case.request.target_new
    return {f"{kind}_{split}": [(p.text, target) for p in group]
            for kind, splits in probes.items() for split, group in splits.items() if group}


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
