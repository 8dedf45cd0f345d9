"""KnowEdit (Zhang et al. 2024; EasyEdit): zsre_portability.json, wiki_counterfact.json, wiki_recent.json.

A record is an edit (``prompt`` with the subject written in it, ``subject``, ``target_new`` and,
optionally, ``ground_truth``: wiki_recent adds new facts, so it has no old answer) and groups of
test prompts, each prompt with its own answer:

    portability.Subject_Aliasing        → PORTABILITY_ALIAS   (the subject named by an alias)
    portability.Reasoning               → PORTABILITY_ONE_HOP (needs the edited fact)
    portability.Logical_Generalization  → PORTABILITY_LOGICAL
    locality.Relation_Specificity       → UNRELATED_ATTRIBUTES (other facts of the subject)
    locality.Forgetfulness              → FORGETFULNESS

Answers are a string (wiki_counterfact), a list of strings (zsRE) or a list of alias lists, one
per true object (wiki_recent); the answer is the first non-empty string. An entry without a
prompt or an answer (wiki_recent has a few ``[[]]``: Wikidata has no label) is dropped, not the
whole record: one bad probe should not cost the edit and its other probes.

The ``Relation_Specificity`` prompts that share the first one's answer are also the Case's
neighbourhood, as before ``labeled`` existed: the SSS table's zsRE locality was computed so.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from robustedit.data.schemas import (
    FORGETFULNESS,
    PORTABILITY_ALIAS,
    PORTABILITY_LOGICAL,
    PORTABILITY_ONE_HOP,
    UNRELATED_ATTRIBUTES,
    BadRecord,
    Case,
    CaseFormat,
    LabeledPrompt,
    case_id_of,
    json_type_name,
    neighbours_sharing_first_answer,
    register_format,
    text_field,
    texts_field,
)
from robustedit.request import EditRequest

logger = logging.getLogger(__name__)

# (section, key, group): where each group of labelled prompts is in a record, in output order.
_GROUPS = (
    ("portability", "Subject_Aliasing", PORTABILITY_ALIAS),
    ("portability", "Reasoning", PORTABILITY_ONE_HOP),
    ("portability", "Logical_Generalization", PORTABILITY_LOGICAL),
    ("locality", "Relation_Specificity", UNRELATED_ATTRIBUTES),
    ("locality", "Forgetfulness", FORGETFULNESS),
)


def first_answer(value: Any, where: str) -> str | None:
    """The first non-empty string (stripped) of a string, a list of strings or a list of lists of
    strings; None for null or when there is none (``[[]]``). Any other type is a BadRecord."""
    if value is None:
        return None
    for item in value if isinstance(value, list) else [value]:
        for text in item if isinstance(item, list) else [item]:
            if not isinstance(text, str):
                raise BadRecord(f"field {where!r} should be a string, a list of strings or a list of "
                                f"lists of strings, but holds {json_type_name(text)}")
            if text.strip():
                return text.strip()
    return None


def _entries(record: Mapping[str, Any], section: str, key: str) -> list[Any]:
    """The list at ``record[section][key]``, [] when absent or null. A wrong structure (not an
    object, not a list) is the record's fault, not one entry's: BadRecord."""
    value = record.get(section)
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise BadRecord(f"field {section!r} should be an object, not {json_type_name(value)}")
    entries = value.get(key)
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise BadRecord(f"field '{section}.{key}' should be a list, not {json_type_name(entries)}")
    return entries


def _labeled_prompt(entry: Any, group: str, where: str) -> LabeledPrompt:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("prompt"), str) or not entry["prompt"].strip():
        raise BadRecord(f"an entry of {where!r} should be {{prompt, ground_truth}} with a prompt")
    answer = first_answer(entry.get("ground_truth"), f"{where}.ground_truth")
    if answer is None:
        raise BadRecord(f"the entry {entry['prompt']!r} of {where!r} has no answer")
    return LabeledPrompt(group, entry["prompt"], answer)


def _labeled(record: Mapping[str, Any], case_id: str) -> tuple[LabeledPrompt, ...]:
    """The usable entries of every group. Unusable ones are dropped (and logged); a record that
    has entries but not one usable is a wrong record, not a record without tests: BadRecord."""
    kept: list[LabeledPrompt] = []
    problems: list[str] = []
    for section, key, group in _GROUPS:
        for entry in _entries(record, section, key):
            try:
                kept.append(_labeled_prompt(entry, group, f"{section}.{key}"))
            except BadRecord as e:
                problems.append(str(e))
    if problems and not kept:
        raise BadRecord(f"no usable portability or locality entry; first problem: {problems[0]}")
    if problems:
        logger.debug("KnowEdit case %s: dropped %d unusable entries; first: %s", case_id, len(problems), problems[0])
    return tuple(kept)


def _parse_knowedit(record: Mapping[str, Any], default_id: str) -> Case:
    request = EditRequest.from_filled_prompt(
        text_field(record, "prompt"), text_field(record, "subject"), text_field(record, "target_new"),
        first_answer(record.get("ground_truth"), "ground_truth"),
    )
    case_id = case_id_of(record, default_id)
    labeled = _labeled(record, case_id)
    neighbours, answer = neighbours_sharing_first_answer(
        [(item.prompt, item.answer) for item in labeled if item.group == UNRELATED_ATTRIBUTES and item.answer])
    return Case(
        case_id=case_id,
        request=request,
        paraphrase_prompts=texts_field(record, "rephrase_prompt") if "rephrase_prompt" in record else (),
        neighborhood_prompts=neighbours,
        neighborhood_answer=answer,
        labeled=labeled,
        source="knowedit",
    )


register_format(CaseFormat(
    "knowedit",
    frozenset({"prompt", "subject", "target_new", "locality"}),
    _parse_knowedit,
    "KnowEdit (zsre_portability.json, wiki_counterfact.json, wiki_recent.json; Zhang et al. 2024)",
))
