"""The SSS table's rows and tables (experiments/sss_table.py): variant rows map to settings, each
+sss row is paired with its base editor, cells carry intervals."""

from __future__ import annotations

import pytest

from robustedit.experiments import tables
from robustedit.experiments.sss_table import COLUMNS, EXTRA_ROWS, base_row, row_editor, table_markdown


def test_variant_rows_are_the_sss_editor_with_their_settings():
    assert row_editor("ft-l+sss-reference-detached", ["sss.coefficient=0.5"]) == (
        "ft-l+sss", ["sss.form=reference", "sss.detach=true", "sss.coefficient=0.5"])
    assert row_editor("ft-l", ["sss.coefficient=0.5", "lr=1e-3"]) == ("ft-l", ["lr=1e-3"])  # no SSS: no sss.*
    assert all(row_editor(r, [])[0] == "ft-l+sss" for r in EXTRA_ROWS)
    assert [base_row(r) for r in ("ft-l+sss-detached", "mend+sss", "serac")] == ["ft-l", "mend", None]


def _records(values):
    return [{"case_id": str(i), "metrics": {"efficacy_acc": v, "locality_acc": 1.0 - v}} for i, v in enumerate(values)]


def test_the_table_pairs_each_sss_row_with_its_base_per_dataset():
    records = {"ft-l": _records([1, 1, 1, 0]), "ft-l+sss": _records([1, 0, 1, 0])}
    stats = tables.row_statistics(records, [k for _, k in COLUMNS], base_row)
    assert stats["ft-l+sss"]["differences"]["efficacy_acc"]["mean"] == pytest.approx(-0.25)
    assert stats["ft-l+sss"]["differences"]["locality_acc"]["mean"] == pytest.approx(0.25)
    summary = {"n_cases": 4, "metrics": {}, "timing": {"edit_s_median": 1.5}}
    md = table_markdown({r: {"zsre-knowedit": summary} for r in records}, {"zsre-knowedit": stats, "counterfact": {}},
                        "tiny")
    assert "## zsre-knowedit" in md and "## counterfact" not in md
    assert "| ft-l | 4 | 75.0 [25.0, 100.0] | – | 25.0 [0.0, 75.0] | 1.50 |" in md  # no generality values: a dash
    assert "| ft-l+sss − ft-l | 4 | -25.0 [" in md


def test_the_natural_questions_set_is_the_tail_that_training_holds_out():
    from robustedit.data import load_cases
    from robustedit.experiments.sss_table import table_cases
    from robustedit.training.loop import LoopConfig, split_cases

    nq = table_cases("zsre-nq")
    train, _ = split_cases(load_cases("zsre-train"), LoopConfig().val_fraction)
    assert len(nq) == 100 and not {c.case_id for c in nq} & {c.case_id for c in train}
    assert all(c.neighborhood_prompts[0].startswith("nq question:") and c.neighborhood_answer for c in nq)
