"""Portability and fine-grained locality data: KnowEdit, CounterFact-Hard and reverse-relation
records become Cases with `labeled` prompts; the bundled files load whole and are detected right."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from robustedit.data import BUNDLED, LabeledPrompt, dataset_names, detect_format, load_cases
from robustedit.data.schemas import (
    FORGETFULNESS,
    PORTABILITY_ALIAS,
    PORTABILITY_LOGICAL,
    PORTABILITY_ONE_HOP,
    PORTABILITY_REVERSE,
    UNRELATED_ATTRIBUTES,
)
from robustedit.errors import UserError
from robustedit.request import EditRequest


def write_json(tmp_path, data, name="cases.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def raw(name):
    """The bundled file's records as JSON, read independently of the loader."""
    resource = resources.files("robustedit") / "resources" / "data" / BUNDLED.get(name).filename
    return json.loads(resource.read_text(encoding="utf-8"))


# --- KnowEdit ------------------------------------------------------------------------------------

def wiki_recent_record(**overrides):
    record = {
        "subject": "Ingrīda Amantova",
        "prompt": "The gender of Ingrīda Amantova is",
        "target_new": "female",
        "portability": {
            "Subject_Aliasing": [{"prompt": "The gender of Ingrida Amantova is",
                                  "ground_truth": [["female", "woman"]]}],
            "Reasoning": [{"prompt": "The pronoun for Ingrīda Amantova is", "ground_truth": [["she"]]}],
            "Logical_Generalization": [],
        },
        "locality": {
            "Relation_Specificity": [
                {"prompt": "The place of birth of Ingrīda Amantova is", "ground_truth": [["Cēsis"]]},
                {"prompt": "The name of the father of Ingrīda Amantova is", "ground_truth": [[]]},  # no label
                {"prompt": "The name of the award Ingrīda Amantova won is",
                 "ground_truth": [[], ["Cross of Recognition", "Atzinības krusts"]]},
                {"prompt": "The hometown of Ingrīda Amantova is", "ground_truth": [["Cēsis", "Wenden"]]},
            ],
            "Forgetfulness": [{"prompt": "The sport of Ingrīda Amantova, which is not luge, is",
                               "ground_truth": [["skeleton"], ["bobsleigh"]]}],
        },
    }
    record.update(overrides)
    return record


def test_knowedit_wiki_recent_aliases_and_no_ground_truth(tmp_path):
    (case,) = load_cases(write_json(tmp_path, [wiki_recent_record()]))
    assert case.source == "knowedit" and case.case_id == "0"
    assert case.request == EditRequest("The gender of {} is", "Ingrīda Amantova", "female", None)
    assert case.paraphrase_prompts == ()
    assert case.labeled == (
        LabeledPrompt(PORTABILITY_ALIAS, "The gender of Ingrida Amantova is", "female"),
        LabeledPrompt(PORTABILITY_ONE_HOP, "The pronoun for Ingrīda Amantova is", "she"),
        LabeledPrompt(UNRELATED_ATTRIBUTES, "The place of birth of Ingrīda Amantova is", "Cēsis"),
        # the father (no label at all) is dropped; an empty alias list before a labelled one is passed over
        LabeledPrompt(UNRELATED_ATTRIBUTES, "The name of the award Ingrīda Amantova won is", "Cross of Recognition"),
        LabeledPrompt(UNRELATED_ATTRIBUTES, "The hometown of Ingrīda Amantova is", "Cēsis"),
        LabeledPrompt(FORGETFULNESS, "The sport of Ingrīda Amantova, which is not luge, is", "skeleton"),
    )
    # The neighbourhood is still the Relation_Specificity prompts sharing the first answer.
    assert case.neighborhood_prompts == ("The place of birth of Ingrīda Amantova is",
                                         "The hometown of Ingrīda Amantova is")
    assert case.neighborhood_answer == "Cēsis"


def test_knowedit_wiki_counterfact_string_answers(tmp_path):
    record = {
        "subject": "Goursez Vreizh",
        "prompt": "The name of the country which Goursez Vreizh is associated with is",
        "target_new": "Franche-Comté", "ground_truth": "France",
        "portability": {
            "Reasoning": [{"prompt": "The name of the capital city of the country Goursez Vreizh is associated "
                                     "with is", "ground_truth": "Besançon"}],
            "Subject_Aliasing": [{"prompt": "The name of the country which Gorsedd of Brittany is associated with is",
                                  "ground_truth": "Franche-Comté"}],
            "Logical_Generalization": [{"prompt": "Is Goursez Vreizh associated with France?", "ground_truth": " no"}],
        },
        "locality": {
            "Relation_Specificity": [{"prompt": "The name of the founder of Goursez Vreizh is",
                                      "ground_truth": "Jean Le Fustec"}],
            "Forgetfulness": [{"prompt": "The language of Goursez Vreizh, which is not French, is", "ground_truth": ""},
                              {"prompt": "The language of Goursez Vreizh, which is not Breton, is",
                               "ground_truth": "Welsh"}],
        },
    }
    (case,) = load_cases(write_json(tmp_path, [record]))
    assert case.request == EditRequest("The name of the country which {} is associated with is", "Goursez Vreizh",
                                       "Franche-Comté", "France")
    assert case.labeled == (
        LabeledPrompt(PORTABILITY_ALIAS, "The name of the country which Gorsedd of Brittany is associated with is",
                      "Franche-Comté"),
        LabeledPrompt(PORTABILITY_ONE_HOP,
                      "The name of the capital city of the country Goursez Vreizh is associated with is", "Besançon"),
        LabeledPrompt(PORTABILITY_LOGICAL, "Is Goursez Vreizh associated with France?", "no"),  # stripped like targets
        LabeledPrompt(UNRELATED_ATTRIBUTES, "The name of the founder of Goursez Vreizh is", "Jean Le Fustec"),
        LabeledPrompt(FORGETFULNESS, "The language of Goursez Vreizh, which is not Breton, is", "Welsh"),  # "" dropped
    )
    assert case.neighborhood_prompts == ("The name of the founder of Goursez Vreizh is",)
    assert case.neighborhood_answer == "Jean Le Fustec"
    assert case.group(FORGETFULNESS) == (case.labeled[-1],)


def test_knowedit_malformed_entries_dropped_not_the_record(tmp_path):
    record = wiki_recent_record(portability={"Reasoning": [
        "not an entry", {"prompt": 3, "ground_truth": "x"}, {"prompt": "The pronoun for Ingrīda Amantova is"},
        {"prompt": "Her sport is", "ground_truth": {"label": "luge"}},
        {"prompt": "The pronoun for Ingrīda Amantova is", "ground_truth": ["she"]}]})
    (case,) = load_cases(write_json(tmp_path, [record]))
    assert case.group(PORTABILITY_ONE_HOP) == (
        LabeledPrompt(PORTABILITY_ONE_HOP, "The pronoun for Ingrīda Amantova is", "she"),)
    assert len(case.group(UNRELATED_ATTRIBUTES)) == 3


def test_knowedit_record_with_entries_but_none_usable_is_skipped(tmp_path, caplog):
    broken = wiki_recent_record(portability={},
                                locality={"Relation_Specificity": [{"prompt": "p", "ground_truth": [[]]}]})
    empty = wiki_recent_record(portability={}, locality={})  # no tests besides the edit: kept
    with caplog.at_level("WARNING"):
        cases = load_cases(write_json(tmp_path, [broken, empty]))
    assert [c.case_id for c in cases] == ["1"]
    assert cases[0].labeled == () and cases[0].neighborhood_prompts == () and cases[0].neighborhood_answer is None
    assert "skipped 1 unusable record(s) of 2" in caplog.text
    assert "no usable portability or locality entry" in caplog.text


def test_knowedit_locality_of_the_wrong_type_is_a_bad_record(tmp_path):
    good = wiki_recent_record()
    with pytest.raises(UserError, match="field 'locality' should be an object"):
        load_cases(write_json(tmp_path, [wiki_recent_record(locality=["x"])]))
    assert len(load_cases(write_json(tmp_path, [wiki_recent_record(locality=["x"]), good]))) == 1


def test_zsre_knowedit_neighbourhood_unchanged():
    """The SSS table's zsRE locality used both Relation_Specificity prompts of every case."""
    records = raw("zsre-knowedit")
    cases = load_cases("zsre-knowedit")
    for record, case in zip(records, cases, strict=True):
        entries = record["locality"]["Relation_Specificity"]
        assert case.neighborhood_prompts == tuple(e["prompt"] for e in entries)
        assert case.neighborhood_answer == entries[0]["ground_truth"][0].strip()
        assert case.request.target_true == record["ground_truth"][0].strip()
        assert case.paraphrase_prompts == (record["rephrase_prompt"],)


# --- CounterFact-Hard ----------------------------------------------------------------------------

def counterfact_hard_record(**overrides):
    record = {
        "id": 1,
        "edit_statement": "The official religion of Edwin of Northumbria is Islam.",
        "subject_name": "Edwin of Northumbria",
        "edit_scope": [["What is the official religion of Edwin of Northumbria?", "Islam"],
                       ["What religion does Edwin of Northumbria follow?", "Islam"]],
        "edit_scope_true_ans": ["Christianity", "Christianity"],
        "unrelated": {
            "neighbor_subj": ["What is the official religion of Charles Aznavour?", "What religion does Paul follow?",
                              "What religion does Ringo Starr follow?"],
            "same_subj": ["What language does Edwin of Northumbria speak?", "Where did Edwin of Northumbria die?"],
        },
        # same_subj answers: three for two questions, in no usable order
        "unrelated_true_ans": {"neighbor_subj": ["Christianity", "Christianity", "Buddhism"],
                               "same_subj": ["English", "king of Deira", "Hatfield Chase"]},
    }
    record.update(overrides)
    return record


def test_counterfact_hard_case(tmp_path):
    (case,) = load_cases(write_json(tmp_path, [counterfact_hard_record()]))
    assert case.source == "counterfact-hard" and case.case_id == "1"
    assert case.request == EditRequest("What is the official religion of {}?", "Edwin of Northumbria", "Islam",
                                       "Christianity")
    assert case.paraphrase_prompts == ("What religion does Edwin of Northumbria follow?",)
    assert case.neighborhood_prompts == ("What is the official religion of Charles Aznavour?",
                                         "What religion does Paul follow?")  # Ringo's answer differs
    assert case.neighborhood_answer == "Christianity"
    assert case.labeled == (
        LabeledPrompt(UNRELATED_ATTRIBUTES, "What language does Edwin of Northumbria speak?", None),
        LabeledPrompt(UNRELATED_ATTRIBUTES, "Where did Edwin of Northumbria die?", None),
    )


def test_counterfact_hard_unusable_records_skipped(tmp_path, caplog):
    records = [counterfact_hard_record(id=2, edit_scope=[], edit_scope_true_ans=[]),
               counterfact_hard_record(id=3, edit_scope=[["Where did Pillsbury die?", "Paris"]]),
               counterfact_hard_record(id=4, unrelated_true_ans={"neighbor_subj": ["Christianity"], "same_subj": []}),
               counterfact_hard_record(id=5)]
    with caplog.at_level("WARNING"):
        cases = load_cases(write_json(tmp_path, records))
    assert [c.case_id for c in cases] == ["5"]
    assert "skipped 3 unusable record(s) of 4" in caplog.text and "'edit_scope' is empty" in caplog.text


def test_counterfact_hard_same_subject_answers_are_never_aligned():
    """The module docstring's claim, checked on the bundled file: no same_subj answer can be trusted."""
    with_questions = [r for r in raw("counterfact-hard") if r["unrelated"]["same_subj"]]
    assert len(with_questions) == 394
    assert all(len(r["unrelated_true_ans"]["same_subj"]) > len(r["unrelated"]["same_subj"]) for r in with_questions)
    # while the neighbour answers are aligned, and all equal to the first one
    for r in raw("counterfact-hard"):
        assert len(r["unrelated_true_ans"]["neighbor_subj"]) == len(r["unrelated"]["neighbor_subj"]) == 10


# --- reverse relation ----------------------------------------------------------------------------

def entity(qid, label):
    return {"id": qid, "label": label}


FATHER = {"id": "P22", "prompt": "The father of {} is", "query": "Who is the father of {}?", "label": "father"}
CHILD = {"id": "P40", "prompt": "The child of {} is", "query": "Who is the child of {}?", "label": "child"}


def reverse_record(**overrides):
    saida, shavkat = entity("Q1", "Saida Mirziyoyeva"), entity("Q2", "Shavkat Mirziyoyev")
    maduro = entity("Q3", "Nicolás Maduro")
    record = {
        "rule": "P22>P40",
        "triples": [{"relation": FATHER, "subject": saida, "object": shavkat},
                    {"relation": CHILD, "subject": shavkat, "object": saida}],
        "prerequisites": [],
        "type": "reverse",
        "edits": [{"relation": FATHER, "subject": saida, "object": shavkat, "new_object": maduro},
                  {"relation": CHILD, "subject": maduro, "object": saida, "new_object": entity("Q4", "Someone Else")}],
    }
    record.update(overrides)
    return record


def test_reverse_relation_case(tmp_path):
    (case,) = load_cases(write_json(tmp_path, [reverse_record()]))
    assert case.source == "reverse-relation" and case.case_id == "0"
    assert case.request == EditRequest("The father of {} is", "Saida Mirziyoyeva", "Nicolás Maduro",
                                       "Shavkat Mirziyoyev")
    assert case.paraphrase_prompts == ("Who is the father of Saida Mirziyoyeva?",)
    assert case.labeled == (
        LabeledPrompt(PORTABILITY_REVERSE, "The child of Nicolás Maduro is", "Saida Mirziyoyeva"),
        LabeledPrompt(PORTABILITY_REVERSE, "Who is the child of Nicolás Maduro?", "Saida Mirziyoyeva"),
    )
    assert case.neighborhood_prompts == () and case.neighborhood_answer is None
    assert "Someone Else" not in repr(case)  # edits[1], the conflicting second edit, is ignored


def test_reverse_relation_unusable_records_skipped(tmp_path):
    good = reverse_record()
    one_relation = reverse_record(triples=[good["triples"][0]])
    composite = reverse_record(type="composite")
    no_edit = reverse_record(edits=[])
    with pytest.raises(UserError, match="only 'reverse' records are read"):
        load_cases(write_json(tmp_path, [composite, one_relation, no_edit]))
    assert [c.case_id for c in load_cases(write_json(tmp_path, [composite, one_relation, no_edit, good]))] == ["3"]


# --- bundled files -------------------------------------------------------------------------------

def usable_counterfact_hard(record):
    scope = record["edit_scope"]
    return bool(scope) and record["subject_name"] in scope[0][0]


def usable_knowedit(record):
    return record["subject"] in record["prompt"] and bool(record["target_new"].strip())


def usable_reverse(record):
    return record["type"] == "reverse" and bool(record["edits"])


def test_bundled_names_include_the_portability_files():
    names = {"counterfact-hard", "wiki-counterfact", "wiki-recent", "reverse-relation"}
    assert names <= set(dataset_names())
    assert {BUNDLED.get(n.replace("-", "_")).name for n in names} == names


@pytest.mark.parametrize("name, usable, expected", [
    ("counterfact-hard", usable_counterfact_hard, 454),  # 477 records: 6 without edit, 17 not naming the subject
    ("wiki-counterfact", usable_knowedit, 1428),
    ("wiki-recent", usable_knowedit, 570),
    ("reverse-relation", usable_reverse, 1286),
])
def test_bundled_portability_files_load(name, usable, expected):
    records = raw(name)
    assert sum(map(usable, records)) == expected
    cases = load_cases(name)
    assert len(cases) == expected
    alias = name.replace("-", "_")
    assert [c.case_id for c in load_cases(alias, limit=5)] == [c.case_id for c in cases[:5]]


def knowedit_answers(records, section, key):
    """Entries with at least one non-empty label, counted by flattening the JSON directly."""
    def labels(value):
        if isinstance(value, str):
            return [value] if value.strip() else []
        return [text for item in value for text in labels(item)]
    return sum(1 for r in records for e in r[section].get(key, []) if labels(e["ground_truth"]))


@pytest.mark.parametrize("name", ["wiki-counterfact", "wiki-recent", "zsre-knowedit"])
def test_bundled_knowedit_labeled_counts(name):
    records = raw(name)
    cases = load_cases(name)
    for section, key, group in [("portability", "Subject_Aliasing", PORTABILITY_ALIAS),
                                ("portability", "Reasoning", PORTABILITY_ONE_HOP),
                                ("portability", "Logical_Generalization", PORTABILITY_LOGICAL),
                                ("locality", "Relation_Specificity", UNRELATED_ATTRIBUTES),
                                ("locality", "Forgetfulness", FORGETFULNESS)]:
        assert sum(len(c.group(group)) for c in cases) == knowedit_answers(records, section, key), (section, key)
    assert all(item.answer for c in cases for item in c.labeled)


def test_bundled_wiki_recent_has_no_old_answers():
    assert not any("ground_truth" in r for r in raw("wiki-recent"))
    assert all(c.request.target_true is None for c in load_cases("wiki-recent"))


def test_bundled_counterfact_hard_contents():
    records = {str(r["id"]): r for r in raw("counterfact-hard")}
    for case in load_cases("counterfact-hard"):
        record = records[case.case_id]
        assert case.paraphrase_prompts == tuple(q for q, _ in record["edit_scope"][1:])
        assert case.neighborhood_prompts == tuple(record["unrelated"]["neighbor_subj"])  # all share one answer
        assert [item.prompt for item in case.labeled] == record["unrelated"]["same_subj"]
        assert all(item.answer is None for item in case.labeled)


def test_bundled_reverse_relation_contents():
    for record, case in zip(raw("reverse-relation"), load_cases("reverse-relation"), strict=True):
        edit = record["edits"][0]
        (reverse,) = [t for t in record["triples"] if t["relation"]["id"] != edit["relation"]["id"]]
        new = edit["new_object"]["label"]
        assert case.request.text == edit["relation"]["prompt"].replace("{}", edit["subject"]["label"])
        assert [item.prompt for item in case.labeled] == [reverse["relation"]["prompt"].replace("{}", new),
                                                          reverse["relation"]["query"].replace("{}", new)]
        assert {item.answer for item in case.labeled} == {edit["subject"]["label"]}


@pytest.mark.parametrize("name, fmt", [
    ("counterfact", "counterfact"), ("rep-valid", "robustness"), ("rep-test", "robustness"), ("counterfact-val", "easyedit"),
    ("zsre-rephrase", "robustness"), ("zsre-knowedit", "knowedit"), ("zsre-train", "zsre-mend"),
    ("counterfact-hard", "counterfact-hard"), ("wiki-counterfact", "knowedit"), ("wiki-recent", "knowedit"),
    ("reverse-relation", "reverse-relation"),
])
def test_format_detection_of_every_bundled_file(name, fmt):
    records = raw(name)
    assert detect_format(records[0]).name == fmt
    assert {c.source for c in load_cases(name, limit=20)} == {fmt}
