"""The data layer: every bundled file and schema becomes the same `Case`; bad input is a UserError."""

from __future__ import annotations

import json
import logging

import pytest

from robustedit.data import FORMATS, Case, dataset_names, detect_format, load_cases
from robustedit.errors import UserError
from robustedit.request import EditRequest

DARRIEUX = EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English", "French")


def robustness_record(**overrides):
    record = {
        "case_id": 7,
        "prompt": "What species is HLA-DR specific to?",
        "subject": "HLA-DR",
        "target_new": "male",
        "target_true": "human",
        "rephrase_prompt": None,
        "locality_prompt": "nq question: who played g baby in the movie hardball",
        "locality_ground_truth": "DeWayne Warren",
        "subject_rephrase": ["HLA-DR antigen", "HLA-DR protein"],
    }
    record.update(overrides)
    return record


def write_json(tmp_path, data, name="cases.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


# --- bundled files ------------------------------------------------------------------------------

def test_bundled_names():
    assert dataset_names() == ["counterfact", "counterfact-hard", "counterfact-val", "rep-test", "rep-valid",
                               "reverse-relation",
                               "wiki-counterfact", "wiki-recent", "zsre-knowedit", "zsre-rephrase", "zsre-train"]
    assert [c.case_id for c in load_cases("rep_valid", limit=3)] == [c.case_id for c in load_cases("rep-valid", limit=3)]


@pytest.mark.parametrize("name, source, count", [
    ("counterfact", "counterfact", 925), ("rep-valid", "robustness", 100), ("zsre-rephrase", "robustness", 340),
    ("rep-test", "robustness", 224),
    ("counterfact-val", "easyedit", 1801),
    ("zsre-train", "zsre-mend", 998),  # two records have an empty new target (skipped, logged)
    ("zsre-knowedit", "knowedit", 643),
])
def test_bundled_format_detected(name, source, count):
    cases = load_cases(name)
    assert len(cases) == count
    assert {c.source for c in cases} == {source}
    assert all(isinstance(c, Case) for c in cases)


def test_counterfact_darrieux():
    case = next(c for c in load_cases("counterfact") if c.request.subject == "Danielle Darrieux")
    assert case.case_id == "0"
    assert case.request == DARRIEUX
    assert case.neighborhood_answer == "French"
    assert len(case.paraphrase_prompts) == 2 and all("Danielle Darrieux" in p for p in case.paraphrase_prompts)
    assert case.neighborhood_prompts[0] == "The mother tongue of Léon Blum is"
    assert len(case.neighborhood_prompts) == len(case.attribute_prompts) == len(case.generation_prompts) == 10
    assert case.subject_rephrases == ()


def test_rep_valid_darrieux():
    case = next(c for c in load_cases("rep-valid") if c.request.subject == "Danielle Darrieux")
    assert case.case_id == "0"
    assert case.request == DARRIEUX  # the filled prompt became the template
    assert case.request.text == "The mother tongue of Danielle Darrieux is"
    assert case.neighborhood_answer == "French"
    assert len(case.paraphrase_prompts) == 17 and len(case.neighborhood_prompts) == 10
    assert case.subject_rephrases[0] == "The French actress Danielle Darrieux"
    assert len(case.subject_rephrases) == 10
    assert case.attribute_prompts == case.generation_prompts == ()


def test_rep_valid_shares_counterfact_neighbours():
    counterfact = load_cases("counterfact", limit=1)[0]
    rep = load_cases("rep-valid", limit=1)[0]
    assert rep.neighborhood_prompts == counterfact.neighborhood_prompts
    assert rep.paraphrase_prompts[:2] == counterfact.paraphrase_prompts


# --- the robustness schema by hand ----------------------------------------------------------------

def test_robustness_null_rephrase_and_string_locality(tmp_path):
    (case,) = load_cases(write_json(tmp_path, [robustness_record()]))
    assert case.source == "robustness" and case.case_id == "7"
    assert case.request == EditRequest("What species is {} specific to?", "HLA-DR", "male", "human")
    assert case.paraphrase_prompts == ()
    assert case.neighborhood_prompts == ("nq question: who played g baby in the movie hardball",)
    assert case.neighborhood_answer == "DeWayne Warren"  # not target_true in zsRE
    assert case.subject_rephrases == ("HLA-DR antigen", "HLA-DR protein")


def test_robustness_string_rephrase_and_index_as_id(tmp_path):
    record = robustness_record(rephrase_prompt="Which species has HLA-DR?")
    del record["case_id"]
    (case,) = load_cases(write_json(tmp_path, [record]))
    assert case.paraphrase_prompts == ("Which species has HLA-DR?",)
    assert case.case_id == "0"


def test_jsonl(tmp_path):
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(json.dumps(robustness_record(case_id=i)) for i in range(3)) + "\n\n")
    assert [c.case_id for c in load_cases(str(path))] == ["0", "1", "2"]


def test_unusable_record_skipped_and_counted(tmp_path, caplog):
    records = [robustness_record(case_id=1), robustness_record(case_id=2, subject="Darrieux"),
               robustness_record(case_id=3, target_new="  "), robustness_record(case_id=4)]
    with caplog.at_level(logging.WARNING, logger="robustedit.data"):
        cases = load_cases(write_json(tmp_path, records))
    assert [c.case_id for c in cases] == ["1", "4"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 2" in warnings[0].getMessage() and "'Darrieux'" in warnings[0].getMessage()


def test_all_records_unusable(tmp_path):
    with pytest.raises(UserError, match="no usable record"):
        load_cases(write_json(tmp_path, [robustness_record(subject="Darrieux")]))


# --- limit --------------------------------------------------------------------------------------

def test_limit():
    assert [c.case_id for c in load_cases("counterfact", limit=3)] == [c.case_id for c in load_cases("counterfact")[:3]]
    assert len(load_cases("rep-valid", limit=1000)) == 100


def test_limit_counts_usable_cases(tmp_path):
    records = [robustness_record(case_id=1, subject="nope"), robustness_record(case_id=2), robustness_record(case_id=3)]
    assert [c.case_id for c in load_cases(write_json(tmp_path, records), limit=1)] == ["2"]


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_bad_limit(limit):
    with pytest.raises(UserError, match="limit"):
        load_cases("counterfact", limit=limit)


# --- bad input ----------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such dataset file"):
        load_cases(str(tmp_path / "absent.json"))


def test_bad_json_says_where(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"prompt": "x",\n  "subject": }]')
    with pytest.raises(UserError, match=r"bad\.json: invalid JSON at line 2, column 14"):
        load_cases(str(path))


def test_bad_jsonl_says_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(robustness_record()) + "\n{oops\n")
    with pytest.raises(UserError, match="invalid JSON on line 2"):
        load_cases(str(path))


@pytest.mark.parametrize("content, message", [
    ("", "empty"), ("[]", "empty"), ('{"a": 1}', "list of JSON objects.*an object"),
    ('["a", "b"]', "list of JSON objects.*record 0 is a string"),
])
def test_wrong_shape(tmp_path, content, message):
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_cases(str(path))


def test_unknown_fields_name_expected_ones(tmp_path):
    with pytest.raises(UserError) as info:
        load_cases(write_json(tmp_path, [{"question": "q", "answer": "a"}]))
    message = str(info.value)
    assert "unknown dataset format" in message and "'answer', 'question'" in message
    for name in FORMATS:
        assert f"{name} expects" in message
    assert "requested_rewrite" in message and "locality_ground_truth" in message
    for field in ("edit_scope_true_ans", "unrelated_true_ans", "triples", "locality"):  # the newer formats too
        assert f"'{field}'" in message


def test_mixed_records_are_an_error(tmp_path):
    second = robustness_record()
    del second["subject_rephrase"]
    with pytest.raises(UserError, match=r"record 1 lacks \['subject_rephrase'\]"):
        load_cases(write_json(tmp_path, [robustness_record(), second]))


def test_unknown_name_did_you_mean():
    with pytest.raises(UserError, match="Did you mean 'counterfact'"):
        load_cases("counterfakt")


def test_detect_prefers_most_specific_format():
    assert detect_format(robustness_record()).name == "robustness"
    record = robustness_record(ground_truth="human")
    del record["target_true"], record["subject_rephrase"]
    assert detect_format(record).name == "easyedit"


def test_knowedit_schema_keeps_the_neighbours_that_share_the_first_answer(tmp_path):
    record = {"subject": "Louise Grandjean", "target_new": "mezzo soprano", "prompt": "What voice type is Louise Grandjean?",
              "ground_truth": ["soprano"], "rephrase_prompt": "What tone does Louise Grandjean sing in?",
              "locality": {"Relation_Specificity": [
                  {"prompt": "The country of citizenship of Louise Grandjean is", "ground_truth": ["France"]},
                  {"prompt": "Louise Grandjean country of citizenship", "ground_truth": ["France"]},
                  {"prompt": "Louise Grandjean was born in", "ground_truth": "Paris"}]},
              "portability": {}}
    (case,) = load_cases(write_json(tmp_path, [record]))
    assert case.source == "knowedit"
    assert case.request == EditRequest("What voice type is {}?", "Louise Grandjean", "mezzo soprano", "soprano")
    assert case.paraphrase_prompts == ("What tone does Louise Grandjean sing in?",)
    assert case.neighborhood_prompts == ("The country of citizenship of Louise Grandjean is",
                                         "Louise Grandjean country of citizenship")
    assert case.neighborhood_answer == "France"


def test_zsre_mend_schema(tmp_path):
    record = {"subject": "UniFirst", "src": "What is the product made by UniFirst?", "pred": "uniform",
              "rephrase": "What will be the product of UniFirst?", "alt": "unmanned aircraft",
              "answers": ["uniform"], "loc": "nq question: who wrote it", "loc_ans": "Walter", "cond": ""}
    (case,) = load_cases(write_json(tmp_path, [record]))
    assert case.source == "zsre-mend" and case.case_id == "0"
    assert case.request == EditRequest("What is the product made by {}?", "UniFirst", "unmanned aircraft", "uniform")
    assert case.paraphrase_prompts == ("What will be the product of UniFirst?",)
    assert case.neighborhood_answer == "Walter"


def test_blank_prompts_in_a_list_are_dropped():
    case = next(c for c in load_cases("rep-valid") if c.case_id == "60")  # its file lists one "" rephrase
    assert case.paraphrase_prompts and all(p.strip() for p in case.paraphrase_prompts)
