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


def test_seed_rows_load_their_seed_and_pair_with_the_base_of_the_same_seed():
    from robustedit.experiments.sss_table import SEED_ROWS, seed_row

    assert row_editor("mend+sss@seed2", ["sss.coefficient=0.5"]) == ("mend+sss", ["train.seed=2", "sss.coefficient=0.5"])
    assert row_editor("serac@seed1", ["sss.coefficient=0.5"]) == ("serac", ["train.seed=1"])
    assert [base_row(r) for r in ("mend+sss@seed2", "serac+sss@seed1", "mend@seed1")] == ["mend@seed2", "serac@seed1", None]
    assert seed_row("mend+sss", 2) == "mend+sss@seed2" and seed_row("mend", 0) == "mend"
    assert set(SEED_ROWS) == {seed_row(r, s) for r in ("mend", "mend+sss", "serac", "serac+sss") for s in (1, 2)}


def test_the_difference_across_seeds_averages_each_seeds_paired_difference():
    from robustedit.experiments.sss_table import across_seeds

    records = {"mend": _records([1, 1, 0, 0]), "mend+sss": _records([1, 1, 1, 0]),  # seed 0: +0.25
               "mend@seed1": _records([1, 0, 0, 0, 1]), "mend+sss@seed1": _records([1, 1, 1, 1, 0]),  # seed 1: +0.75
               "serac": _records([1, 1, 1, 1]), "serac+sss": _records([0, 0, 0, 0])}  # one seed: not summarised
    summary = across_seeds(records, ["efficacy_acc", "locality_acc"])
    assert list(summary) == ["mend+sss"] and summary["mend+sss"]["seeds"] == [0, 1]
    assert summary["mend+sss"]["per_seed"]["efficacy_acc"] == pytest.approx([0.25, 0.75])
    assert summary["mend+sss"]["mean"]["efficacy_acc"]["mean"] == pytest.approx(0.5)
    assert summary["mend+sss"]["mean"]["locality_acc"]["mean"] == pytest.approx(-0.5)
    stats = tables.row_statistics(records, [k for _, k in COLUMNS], base_row)
    assert stats["mend+sss@seed1"]["compared_with"] == "mend@seed1"
    row = {"n_cases": 4, "metrics": {}, "timing": {}}
    md = table_markdown({r: {"zsre-knowedit": row} for r in records}, {"zsre-knowedit": stats}, "tiny",
                        {"zsre-knowedit": summary})
    assert "| mend+sss − mend | 0, 1 | 4 | +50.0 [" in md and "(+25.0 / +75.0)" in md
