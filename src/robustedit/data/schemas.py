"""One `Case` for every evaluation, whatever the file format it came from.

Each file format (CounterFact's original schema, the robustness schema of the REP paper, zsRE in
MEND's schema, ...) is a `CaseFormat`: the fields it requires and a function record → Case. The
format of a file is detected from the fields of its first record, so that users can pass any
JSON file without naming its format; a new schema is one more `register_format(...)`. The small
formats are here; those with nested test groups have their own module (knowedit.py,
counterfact_hard.py, reverse_relation.py), imported by ``robustedit.data`` to register them.

Records are kept as the file has them (no deduplication, no filtering of prompts): published
numbers were computed on these exact lists. Only types are normalised (str → 1-tuple, null → ()).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from robustedit.errors import UserError
from robustedit.registry import Registry
from robustedit.request import EditRequest

logger = logging.getLogger(__name__)


# Groups of labelled prompts (`Case.labeled`): each prompt comes with its own answer.
PORTABILITY_ALIAS = "portability_alias"  # the subject replaced by an alias; answer: target_new
PORTABILITY_REVERSE = "portability_reverse"  # the reversed relation asked about target_new; answer: the subject
PORTABILITY_ONE_HOP = "portability_one_hop"  # a question that needs the edited fact (one-hop reasoning)
PORTABILITY_LOGICAL = "portability_logical"  # KnowEdit's Logical_Generalization
UNRELATED_ATTRIBUTES = "unrelated_attributes"  # other facts about the same subject: must not change
FORGETFULNESS = "forgetfulness"  # KnowEdit: other objects of the same subject and relation: must not change
LABELED_GROUPS = (PORTABILITY_ALIAS, PORTABILITY_REVERSE, PORTABILITY_ONE_HOP, PORTABILITY_LOGICAL,
                  UNRELATED_ATTRIBUTES, FORGETFULNESS)


@dataclass(frozen=True)
class LabeledPrompt:
    """A test prompt with its own answer. ``answer`` is None when the data has no trustworthy
    answer for it (CounterFact-Hard's same-subject questions): a "must not change" metric then
    compares the model's top-1 next token before and after the edit instead."""

    group: str
    prompt: str
    answer: str | None


@dataclass(frozen=True)
class Case:
    """One edit and the prompts that test it.

    ``paraphrase_prompts`` should be answered with ``request.target_new`` after the edit;
    ``neighborhood_prompts`` with ``neighborhood_answer`` before and after it (the edit must not
    leak). ``attribute_prompts`` are other subjects whose true object is ``target_new``;
    ``subject_rephrases`` are other names of the subject (REP paper's robustness tests).
    ``labeled`` are prompts with their own answers, grouped by test (``LABELED_GROUPS``):
    portability (the edit should carry over) and unrelated attributes (nothing should change).
    """

    case_id: str
    request: EditRequest
    paraphrase_prompts: tuple[str, ...] = ()
    neighborhood_prompts: tuple[str, ...] = ()
    neighborhood_answer: str | None = None
    attribute_prompts: tuple[str, ...] = ()
    generation_prompts: tuple[str, ...] = ()
    subject_rephrases: tuple[str, ...] = ()
    labeled: tuple[LabeledPrompt, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        # Lists from a caller would make the frozen dataclass unhashable and mutable.
        for name in ("paraphrase_prompts", "neighborhood_prompts", "attribute_prompts",
                     "generation_prompts", "subject_rephrases"):
            value = getattr(self, name)
            if isinstance(value, str):  # tuple("abc") would silently give three prompts
                raise TypeError(f"Case.{name} must be a sequence of strings, not one string")
            object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "labeled", tuple(self.labeled))
        for item in self.labeled:
            if item.group not in LABELED_GROUPS:
                raise ValueError(f"unknown labeled-prompt group {item.group!r}; known: {LABELED_GROUPS}")

    def group(self, name: str) -> tuple[LabeledPrompt, ...]:
        """The labelled prompts of one group (``LABELED_GROUPS``)."""
        return tuple(item for item in self.labeled if item.group == name)


class BadRecord(ValueError):
    """A record that cannot become a Case; the loader skips it and counts it."""


@dataclass(frozen=True)
class CaseFormat:
    """A file schema: the fields that identify it and how one record becomes a Case.

    ``parse(record, default_id)`` gets the record's index as ``default_id`` for schemas without
    ids, and raises ``ValueError`` (e.g. `BadRecord`, or `UserError` from `EditRequest`) on a
    record it cannot use.
    """

    name: str
    fields: frozenset[str]
    parse: Callable[[Mapping[str, Any], str], Case]
    description: str = ""


FORMATS: Registry[CaseFormat] = Registry("dataset format")


def register_format(fmt: CaseFormat) -> CaseFormat:
    return FORMATS.register(fmt.name, fmt)


# --- small checked accessors, shared by the format modules: a malformed record becomes BadRecord,
# --- never KeyError/TypeError

def json_type_name(value: Any) -> str:
    """How a JSON reader would name the type of ``value`` (for error messages)."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def field_value(record: Mapping[str, Any], *path: str) -> Any:
    value: Any = record
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            raise BadRecord(f"missing field {'.'.join(path)!r}")
        value = value[key]
    return value


def text_field(record: Mapping[str, Any], *path: str) -> str:
    value = field_value(record, *path)
    if not isinstance(value, str):
        raise BadRecord(f"field {'.'.join(path)!r} should be a string, not {json_type_name(value)}")
    return value


def texts_field(record: Mapping[str, Any], *path: str) -> tuple[str, ...]:
    """A list of strings, a single string, or null (→ empty); blank strings are dropped (an empty
    prompt has nothing to score: rep_valid.json and rep_test.json hold seven)."""
    value = field_value(record, *path)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value.strip() else ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v for v in value if v.strip())
    raise BadRecord(f"field {'.'.join(path)!r} should be a list of strings, a string or null")


def case_id_of(record: Mapping[str, Any], default_id: str, key: str = "case_id") -> str:
    value = record.get(key)
    return default_id if value is None else str(value)


def neighbours_sharing_first_answer(pairs: Sequence[tuple[str, str]]) -> tuple[tuple[str, ...], str | None]:
    """The prompts of (prompt, answer) pairs whose answer is the first pair's, and that answer.

    A Case has one neighbourhood answer, while some schemas give each neighbour its own; keeping
    the neighbours that share the first answer keeps the Case's neighbourhood test exact.
    Answers are compared stripped (targets carry no space); a pair with an empty answer cannot
    be scored and is left out.
    """
    answered = [(prompt, a.strip()) for prompt, a in pairs if a.strip()]
    if not answered:
        return (), None
    answer = answered[0][1]
    return tuple(prompt for prompt, a in answered if a == answer), answer


# --- the formats -------------------------------------------------------------------------------

def _parse_counterfact(record: Mapping[str, Any], default_id: str) -> Case:
    request = EditRequest(
        prompt=text_field(record, "requested_rewrite", "prompt"),
        subject=text_field(record, "requested_rewrite", "subject"),
        target_new=text_field(record, "requested_rewrite", "target_new", "str"),
        target_true=text_field(record, "requested_rewrite", "target_true", "str"),
    )
    return Case(
        case_id=case_id_of(record, default_id),
        request=request,
        paraphrase_prompts=texts_field(record, "paraphrase_prompts"),
        neighborhood_prompts=texts_field(record, "neighborhood_prompts"),
        neighborhood_answer=request.target_true,
        attribute_prompts=texts_field(record, "attribute_prompts"),
        generation_prompts=texts_field(record, "generation_prompts"),
        source="counterfact",
    )


def _parse_robustness(record: Mapping[str, Any], default_id: str, *, true_key: str = "target_true",
                      source: str = "robustness") -> Case:
    request = EditRequest.from_filled_prompt(
        text_field(record, "prompt"), text_field(record, "subject"),
        text_field(record, "target_new"), text_field(record, true_key),
    )
    answer = field_value(record, "locality_ground_truth")
    if answer is not None and not isinstance(answer, str):
        raise BadRecord("field 'locality_ground_truth' should be a string or null")
    return Case(
        case_id=case_id_of(record, default_id),
        request=request,
        paraphrase_prompts=texts_field(record, "rephrase_prompt"),
        neighborhood_prompts=texts_field(record, "locality_prompt"),
        neighborhood_answer=answer.strip() if answer else None,
        subject_rephrases=texts_field(record, "subject_rephrase") if "subject_rephrase" in record else (),
        source=source,
    )


def _parse_easyedit(record: Mapping[str, Any], default_id: str) -> Case:
    """EasyEdit's flat schema is the robustness schema with ``ground_truth`` for target_true."""
    return _parse_robustness(record, default_id, true_key="ground_truth", source="easyedit")


def _parse_zsre_mend(record: Mapping[str, Any], default_id: str) -> Case:
    answers = texts_field(record, "answers")  # the true answers; "pred" is the base model's guess
    request = EditRequest.from_filled_prompt(
        text_field(record, "src"), text_field(record, "subject"), text_field(record, "alt"),
        answers[0] if answers else None,
    )
    return Case(
        case_id=case_id_of(record, default_id),
        request=request,
        paraphrase_prompts=texts_field(record, "rephrase"),
        neighborhood_prompts=texts_field(record, "loc"),
        neighborhood_answer=text_field(record, "loc_ans").strip() or None,
        source="zsre-mend",
    )


register_format(CaseFormat(
    "counterfact",
    frozenset({"requested_rewrite", "paraphrase_prompts", "neighborhood_prompts",
               "attribute_prompts", "generation_prompts"}),
    _parse_counterfact,
    "CounterFact, original schema (Meng et al. 2022)",
))
register_format(CaseFormat(
    "robustness",
    frozenset({"prompt", "subject", "target_new", "target_true", "rephrase_prompt",
               "locality_prompt", "locality_ground_truth", "subject_rephrase"}),
    _parse_robustness,
    "robustness schema with subject rephrasings (Yan et al., REP paper)",
))
register_format(CaseFormat(
    "zsre-mend",
    frozenset({"src", "subject", "alt", "answers", "rephrase", "loc", "loc_ans"}),
    _parse_zsre_mend,
    "zsRE question answering, MEND schema (Mitchell et al. 2022)",
))
register_format(CaseFormat(
    "easyedit",
    frozenset({"prompt", "subject", "target_new", "ground_truth", "rephrase_prompt",
               "locality_prompt", "locality_ground_truth"}),
    _parse_easyedit,
    "EasyEdit's flat schema (e.g. its CounterFact train/val release)",
))


def detect_format(record: Mapping[str, Any]) -> CaseFormat:
    """The registered format whose required fields the record has (the most specific one)."""
    keys = set(record)
    matches = [FORMATS.get(name) for name in FORMATS if FORMATS.get(name).fields <= keys]
    if matches:
        return max(matches, key=lambda f: len(f.fields))
    expected = "; ".join(f"{n} expects {sorted(FORMATS.get(n).fields)}" for n in FORMATS)
    raise UserError(f"unknown dataset format: {expected}; but the records have {sorted(keys)}")


def parse_records(records: Sequence[Mapping[str, Any]], where: str, limit: int | None = None) -> list[Case]:
    """Detect the format from the first record and parse up to ``limit`` cases.

    Every record must have the format's fields (a file mixing schemas is a wrong file, so that
    is an error). A record with the fields but unusable values (subject not in the prompt, an
    empty target) is skipped, and the skips are reported in one warning.
    """
    if not records:
        raise UserError(f"{where}: the dataset is empty")
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise UserError(f"{where}: expected a list of JSON objects, but record {i} is "
                            f"{json_type_name(record)}")
    try:
        fmt = detect_format(records[0])
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    for i, record in enumerate(records):
        missing = fmt.fields - set(record)
        if missing:
            raise UserError(f"{where}: record {i} lacks {sorted(missing)}, which the "
                            f"{fmt.name} format (detected from record 0) requires")
    cases: list[Case] = []
    skipped: list[str] = []
    for i, record in enumerate(records):
        if limit is not None and len(cases) >= limit:
            break
        try:
            cases.append(fmt.parse(record, str(i)))
        except ValueError as e:  # BadRecord, or UserError from EditRequest
            skipped.append(f"record {i}: {e}")
    if skipped:
        logger.warning("%s: skipped %d unusable record(s) of %d (%s format); first: %s",
                       where, len(skipped), len(skipped) + len(cases), fmt.name, skipped[0])
    if not cases:
        raise UserError(f"{where}: no usable record ({len(skipped)} skipped); first problem: {skipped[0]}")
    return cases
