"""CounterFact-Hard (Chen et al. 2024, EREN; repo thunlp/EREN): CounterFact edits asked as questions.

A record has ``edit_scope``, [question, new answer] pairs that all ask the edited fact, with the
true (old) answer of each in ``edit_scope_true_ans``; ``unrelated.neighbor_subj``, the same
relation asked about other subjects, with their answers in ``unrelated_true_ans.neighbor_subj``
(aligned by index); and ``unrelated.same_subj``, other questions about the edited subject.

The first edit question is the edit, the others its paraphrases. The neighbours are the
``neighbor_subj`` questions whose answer is the first one's (in the bundled file: all 10 of every
record, and that answer is the edit's old answer).

The ``same_subj`` questions are NOT aligned with ``unrelated_true_ans.same_subj``, so they become
UNRELATED_ATTRIBUTES prompts without an answer (a "must not change" metric then compares the
model's top-1 token before and after the edit). Checked on the bundled file (477 records): all
394 records with same-subject questions have more answers than questions (never as many), 55
have answers but no question and 28 have neither; and the answers visibly belong to other
questions (id 1: the 6th question, "Where did Edwin of Northumbria die?", has the 6th answer
"king of Deira"). Questions are kept as the file has them, repeats included.

Of the 477 records, 6 have an empty ``edit_scope`` (no edit) and in 17 the first question does
not name the subject as written ("Where did Pillsbury die?" for Charles Alfred Pillsbury); both
are skipped, which leaves 454 cases.
"""

from __future__ import annotations

from typing import Any, Mapping

from robustedit.data.schemas import (
    UNRELATED_ATTRIBUTES,
    BadRecord,
    Case,
    CaseFormat,
    LabeledPrompt,
    case_id_of,
    field_value,
    neighbours_sharing_first_answer,
    register_format,
    text_field,
    texts_field,
)
from robustedit.request import EditRequest


def _edit_scope(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (question, new answer) pairs; an empty scope has no edit to make: BadRecord."""
    scope = field_value(record, "edit_scope")
    if not isinstance(scope, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair) for pair in scope):
        raise BadRecord("field 'edit_scope' should be a list of [question, answer] pairs")
    if not scope:
        raise BadRecord("field 'edit_scope' is empty: the record has no edit")
    return [(question, answer) for question, answer in scope]


def _neighbours(record: Mapping[str, Any]) -> tuple[tuple[str, ...], str | None]:
    questions = texts_field(record, "unrelated", "neighbor_subj")
    answers = texts_field(record, "unrelated_true_ans", "neighbor_subj")
    if len(questions) != len(answers):  # aligned by index: a length mismatch means no answer is trusted
        raise BadRecord(f"{len(questions)} neighbour questions but {len(answers)} answers")
    return neighbours_sharing_first_answer(list(zip(questions, answers)))


def _parse_counterfact_hard(record: Mapping[str, Any], default_id: str) -> Case:
    scope = _edit_scope(record)
    true_answers = texts_field(record, "edit_scope_true_ans")
    request = EditRequest.from_filled_prompt(
        scope[0][0], text_field(record, "subject_name"), scope[0][1], true_answers[0] if true_answers else None)
    neighbours, answer = _neighbours(record)
    return Case(
        case_id=case_id_of(record, default_id, key="id"),
        request=request,
        paraphrase_prompts=tuple(question for question, _ in scope[1:]),
        neighborhood_prompts=neighbours,
        neighborhood_answer=answer,
        labeled=tuple(LabeledPrompt(UNRELATED_ATTRIBUTES, question, None)
                      for question in texts_field(record, "unrelated", "same_subj")),
        source="counterfact-hard",
    )


register_format(CaseFormat(
    "counterfact-hard",
    frozenset({"edit_scope", "edit_scope_true_ans", "subject_name", "unrelated", "unrelated_true_ans"}),
    _parse_counterfact_hard,
    "CounterFact-Hard: edits as questions, same-subject unrelated questions (Chen et al. 2024, EREN)",
))
