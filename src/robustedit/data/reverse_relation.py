"""Reverse-relation edits of ConflictEdit (Li et al. 2024, "Unveiling the pitfalls of knowledge editing").

A record names a relation and its reverse (``rule`` "P22>P40": father → child), gives the true
fact both ways in ``triples``, and holds two ``edits``. ``edits[0]`` is the edit: its relation's
``prompt`` template (with ``{}``), its subject, new object and true object; the relation's
``query`` (a question) asked about the subject is the paraphrase. The portability test is the
reverse relation asked about the new object, whose answer is then the subject: after "The father
of Saida Mirziyoyeva is" → "Nicolás Maduro", both "The child of Nicolás Maduro is" and "Who is the
child of Nicolás Maduro?" should give "Saida Mirziyoyeva" (PORTABILITY_REVERSE).

``edits[1]`` is ignored: it is a second edit that contradicts what the first implies (the
reverse relation of the new object set to yet another entity), for the paper's conflict
experiment, not part of a single edit. ``prerequisites`` (empty in the bundled file) is ignored too.

Labels are kept as the file has them, though in the bundled file 14 subjects and 26 true
objects of ``edits[0]`` are bare Wikidata ids (e.g. "Q104157769": no English label).
"""

from __future__ import annotations

from typing import Any, Mapping

from robustedit.data.schemas import (
    PORTABILITY_REVERSE,
    BadRecord,
    Case,
    CaseFormat,
    LabeledPrompt,
    field_value,
    register_format,
    text_field,
)
from robustedit.request import EditRequest


def _fill(template: str, value: str, where: str) -> str:
    """``template`` with its one ``{}`` replaced (not str.format: other braces stay text)."""
    if template.count("{}") != 1:
        raise BadRecord(f"field {where!r} should contain exactly one '{{}}': {template!r}")
    return template.replace("{}", value)


def _first_edit(record: Mapping[str, Any]) -> Mapping[str, Any]:
    edits = field_value(record, "edits")
    if not isinstance(edits, list) or not edits or not isinstance(edits[0], Mapping):
        raise BadRecord("field 'edits' should be a non-empty list of objects")
    return edits[0]


def _reverse_relation(record: Mapping[str, Any], relation_id: str) -> Mapping[str, Any]:
    """The relation of the one triple whose relation is not the edit's."""
    triples = field_value(record, "triples")
    if not isinstance(triples, list):
        raise BadRecord("field 'triples' should be a list")
    others = [t for t in triples if text_field(t, "relation", "id") != relation_id]
    if len(others) != 1:
        raise BadRecord(f"field 'triples' should hold one relation other than the edit's {relation_id}, "
                        f"not {len(others)}")
    return others[0]["relation"]


def _reverse_probes(reverse: Mapping[str, Any], request: EditRequest) -> tuple[LabeledPrompt, ...]:
    """The reverse relation, as a statement and as a question, asked about the new object."""
    return tuple(LabeledPrompt(PORTABILITY_REVERSE, _fill(text_field(reverse, key), request.target_new,
                                                          f"reverse relation {key}"), request.subject.strip())
                 for key in ("prompt", "query"))


def _parse_reverse_relation(record: Mapping[str, Any], default_id: str) -> Case:
    kind = text_field(record, "type")
    if kind != "reverse":
        raise BadRecord(f"type {kind!r}: only 'reverse' records are read")
    edit = _first_edit(record)
    subject = text_field(edit, "subject", "label")
    request = EditRequest(text_field(edit, "relation", "prompt"), subject, text_field(edit, "new_object", "label"),
                          text_field(edit, "object", "label"))
    reverse = _reverse_relation(record, text_field(edit, "relation", "id"))
    return Case(
        case_id=default_id,
        request=request,
        paraphrase_prompts=(_fill(text_field(edit, "relation", "query"), subject, "edits[0].relation.query"),),
        labeled=_reverse_probes(reverse, request),
        source="reverse-relation",
    )


register_format(CaseFormat(
    "reverse-relation",
    frozenset({"rule", "triples", "edits", "type"}),
    _parse_reverse_relation,
    "ConflictEdit reverse-relation pairs (Li et al. 2024): the edit and its reverse as portability",
))
