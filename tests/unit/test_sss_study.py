"""The SSS comprehensive-study experiments: their data selection and tables (no model needed)."""

from robustedit.experiments.sss_study import LOCALITY, PORTABILITY, study_cases, study_markdown


def test_each_study_takes_cases_that_have_its_prompts():
    data = study_cases(PORTABILITY, 4)
    assert set(data) == {"zsre-knowedit", "reverse-relation", "wiki-counterfact"}
    assert all(len(cases) == 4 for cases in data.values())
    assert all(c.group("portability_alias") for c in data["zsre-knowedit"])
    assert all(c.group("portability_reverse") for c in data["reverse-relation"])
    assert all(c.group("portability_one_hop") for c in data["wiki-counterfact"])
    hard = study_cases(LOCALITY, 3)["counterfact-hard"]
    assert all(c.group("unrelated_attributes") for c in hard)


def test_the_table_has_a_row_per_metric_and_marks_what_is_missing():
    result = {"model": "tiny", "command": "robustedit reproduce sss-locality", "cases": {"counterfact": 2, "counterfact-hard": 2},
              "skipped": {"mend": "train it first"},
              "runs": {"rome": {"counterfact": {"metrics": {"efficacy_acc": 1.0, "pre_neighbor": 0.95}, "timing": {"edit_s_median": 2.0}},
                                "counterfact-hard": {"metrics": {"unrelated_attributes": 0.5}, "timing": {}}}}}
    md = study_markdown(LOCALITY, result)
    assert "| Reliability | 100.0 |" in md and "| Pre-Neighbor | 95.0 |" in md
    assert "| Post-Neighbor | – |" in md and "| Unrelated Attributes (CF-Hard) | 50.0 |" in md
    assert "| edit s (median) | 2.00 |" in md
    assert "Skipped: mend (train it first)" in md
