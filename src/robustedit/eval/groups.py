"""Which (prompt, target) pairs a case is scored on, grouped by what they test.

Every group is scored before and after the edit in one batched call (``eval.metrics.score_case``);
the metrics then compare the two. Groups:

- ``edit_new`` / ``edit_true``, ``para_new`` / ``para_true``: the edit prompt and its paraphrases
  with the new and the old target (efficacy, paraphrase; ROME's ES / PS);
- ``nbr_answer`` / ``nbr_new``: neighbour prompts with their own answer and with the new target
  (ROME's NS, the REP paper's and EasyEdit's locality);
- ``pre_nbr``: the neighbours whose answer is the edit's old answer (SSS paper §7.1 Pre-Neighbor;
  CounterFact's neighbours all are);
- ``post_nbr``: prompts about other subjects whose true answer is the *new* target (CounterFact's
  ``attribute_prompts``; §7.1 Post-Neighbor): the edit must not take them away;
- ``distract``: each neighbour prompt preceded by the edit stated as a sentence
  (``DISTRACT_TEMPLATE``; §7.1 Distract-Neighbor, after Yao et al. 2023): the edited model must
  still answer the neighbour's own fact. Pre- and post-edit scores are on the same text, so the
  metric isolates what the edit changed, not how in-context text distracts any model;
- ``lab_<group>``: the case's labelled prompts (portability, unrelated attributes) with their own
  answers, and ``free_<group>`` those without a trustworthy answer (only the next token counts);
- ``<kind>_<split>``: the REP paper's robustness probes with the new target (``data.perturb``).
"""

from __future__ import annotations

from robustedit.data import LABELED_GROUPS, Case

Pairs = list[tuple[str, str]]

# The edit as a statement before a neighbour prompt. Chosen: the filled edit prompt, the new
# target and a full stop ("The mother tongue of Danielle Darrieux is English. The mother tongue of
# Jean Marais is"); the papers do not give their exact joint.
DISTRACT_TEMPLATE = "{edit} {target}. {neighbor}"
# A stand-in continuation for prompts without an answer: only the first position's prediction (the
# model's own next token) is read, and that does not depend on what follows.
ANSWER_FREE_TARGET = "."


def distract_prompt(case: Case, neighbor: str) -> str:
    r = case.request
    return DISTRACT_TEMPLATE.format(edit=r.text, target=r.target_new.strip(), neighbor=neighbor)


def score_items(case: Case) -> dict[str, Pairs]:
    """The (prompt, target) pairs of a case, grouped by what they test (module docstring)."""
    r = case.request
    groups = {"edit_new": [(r.text, r.target_new)], "para_new": [(p, r.target_new) for p in case.paraphrase_prompts]}
    if r.target_true:
        groups["edit_true"] = [(r.text, r.target_true)]
        groups["para_true"] = [(p, r.target_true) for p in case.paraphrase_prompts]
    answer = case.neighborhood_answer
    if answer:
        groups["nbr_answer"] = [(p, answer) for p in case.neighborhood_prompts]
        groups["nbr_new"] = [(p, r.target_new) for p in case.neighborhood_prompts]
        groups["distract"] = [(distract_prompt(case, p), answer) for p in case.neighborhood_prompts]
        if r.target_true and answer.strip() == r.target_true.strip():
            groups["pre_nbr"] = groups["nbr_answer"]
    groups["post_nbr"] = [(p, r.target_new) for p in case.attribute_prompts]
    for name in LABELED_GROUPS:
        items = case.group(name)
        groups[f"lab_{name}"] = [(i.prompt, i.answer) for i in items if i.answer and i.answer.strip()]
        groups[f"free_{name}"] = [(i.prompt, ANSWER_FREE_TARGET) for i in items if not (i.answer and i.answer.strip())]
    return {k: v for k, v in groups.items() if v}


def robustness_items(case: Case, probes: dict) -> dict[str, Pairs]:
    """``<kind>_<split>`` groups: each robustness probe with the new target (``data.perturb``)."""
    target = case.request.target_new
    return {f"{kind}_{split}": [(p.text, target) for p in group]
            for kind, splits in probes.items() for split, group in splits.items() if group}
