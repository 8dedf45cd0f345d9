"""Which cases an evaluation keeps.

The REP paper (§6.1, appendix B.1) evaluates only facts the unedited model knows, as Meng et al.
do: the first token of the true target is the model's top-1 prediction after the edit prompt.
SmolLM2-135M knows about a quarter of CounterFact, so the filter's count is always reported.
"""

from __future__ import annotations

from robustedit.data import Case
from robustedit.eval.scoring import score_pairs
from robustedit.models.load import LanguageModel


def known_cases(lm: LanguageModel, cases: list[Case]) -> list[Case]:
    """The cases whose ``target_true`` is the model's top-1 next token on the edit prompt (cases
    without a true target are dropped: there is nothing to know)."""
    with_truth = [c for c in cases if c.request.target_true]
    scores = score_pairs(lm, [(c.request.text, c.request.target_true) for c in with_truth])
    return [c for c, s in zip(with_truth, scores) if s.first_top1]
