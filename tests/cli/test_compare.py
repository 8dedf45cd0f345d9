"""``robustedit compare``: one table across runs, best values by each metric's direction, files."""

from __future__ import annotations

import json

from robustedit.eval.compare import best_values, comparison, load_runs, metric_columns

from .conftest import assert_user_error


def _run(folder, editor, dataset, metrics, n=10):
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({
        "editor": editor, "model": "tiny", "dataset": dataset, "n_cases": n, "config": {},
        "metrics": metrics, "timing": {"edit_s_median": 1.5}}))
    return folder


def test_compare_prints_writes_and_marks_the_best(cli, tmp_path):
    a = _run(tmp_path / "a", "rome", "counterfact", {"efficacy": 0.9, "neighborhood": 0.7, "portability_alias": 0.2})
    b = _run(tmp_path / "b", "memit", "counterfact", {"efficacy": 0.8, "neighborhood": 0.9})
    result = cli("compare", a, b, "--out", tmp_path / "cmp")
    assert result.code == 0, result.describe()
    assert "rome · counterfact" in result.out and "memit · counterfact" in result.out
    table = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert table["columns"] == ["efficacy", "neighborhood", "portability_alias"]
    assert [r["metrics"]["portability_alias"] for r in table["runs"]] == [0.2, None]  # missing stays missing
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "**0.900**" in md and "**0.900**" in md.split("\n")[3]  # memit's neighborhood is the best one
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000


def test_best_value_follows_the_metric_direction(tmp_path, monkeypatch):
    from robustedit.eval import metrics

    lower = metrics.Metric("edit_cost", lambda pre, post: None, "a cost", higher_is_better=False)
    monkeypatch.setitem(metrics.METRICS._items, "edit_cost", lower)  # a lower-is-better metric
    runs = load_runs([_run(tmp_path / "x", "rome", "d", {"efficacy": 0.5, "edit_cost": 3.0}),
                      _run(tmp_path / "y", "rome", "d", {"efficacy": 0.7, "edit_cost": 1.0})])
    assert [r.label for r in runs] == ["rome · d (x)", "rome · d (y)"]  # same editor and data: folder added
    table = comparison(runs, metric_columns(runs))
    best = best_values(table["runs"], table["columns"])
    assert best["efficacy"] == 0.7
    assert best["edit_cost"] == 1.0


def test_compare_errors_are_one_line(cli, tmp_path):
    assert_user_error(cli("compare", tmp_path / "missing"), "no summary.json")
    a = _run(tmp_path / "a", "rome", "counterfact", {"efficacy": 0.9})
    assert_user_error(cli("compare", a, "--metrics", "efficacy,nonsense"), "nonsense")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "summary.json").write_text("{broken")
    assert_user_error(cli("compare", tmp_path / "bad"), "invalid json")


def test_worker_options_are_checked_before_anything_loads(cli, tmp_path):
    base = ("evaluate", "--editor", "rome", "--dataset", "counterfact", "--out", tmp_path / "o")
    assert_user_error(cli(*base, "--address", "auto"), "--workers")
    assert_user_error(cli(*base, "--workers", "0"), "at least 1")
    assert_user_error(cli(*base, "--workers", "2", "--sequential", "5"), "--sequential")
    assert not (tmp_path / "o").exists()


def test_the_study_experiments_check_their_options_first(cli, tmp_path):
    for name in ("sss-locality", "sss-portability"):
        assert_user_error(cli("reproduce", name, "--only", "rome,nonsense", "--out", tmp_path / "o"), "nonsense")
        assert_user_error(cli("reproduce", name, "--dataset", "counterfact", "--out", tmp_path / "o"), "--dataset")
    assert not (tmp_path / "o").exists()
