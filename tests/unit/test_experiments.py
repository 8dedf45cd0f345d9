"""What every experiment shares (experiments/base.py): finished variants reused, cut-short ones resumed."""

from __future__ import annotations

import json

from test_eval import SETTINGS

from robustedit.data import load_cases
from robustedit.experiments import Options, evaluate_variant


def _lines(folder):
    return [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]


def _cut_short_after_one_case(lm, cases, folder):
    """Evaluate the first case, then drop the summary: a run killed after one case. Returns its record."""
    evaluate_variant(lm, "rome", SETS, "counterfact", cases[:1], folder, Options())
    (folder / "summary.json").unlink()
    return _lines(folder)[0]


SETS = [f"{k}={json.dumps(v)}" for k, v in SETTINGS.items()]


def test_a_variant_cut_short_continues_and_a_finished_one_is_read_back(tiny_lm_factory, tmp_path):
    lm = tiny_lm_factory("llama")
    cases, sets = load_cases("counterfact", limit=3), SETS
    folder, options = tmp_path / "rome", Options()
    first = _cut_short_after_one_case(lm, cases, folder)
    summary = evaluate_variant(lm, "rome", sets, "counterfact", cases, folder, options)
    lines = _lines(folder)
    assert summary["n_cases"] == 3 and [r["case_id"] for r in lines] == [c.case_id for c in cases]
    assert lines[0] == first  # kept, not evaluated again
    again = evaluate_variant(lm, "rome", sets, "counterfact", cases, folder, options)
    assert again == json.loads(json.dumps(summary))  # read back from summary.json, nothing evaluated


def test_a_variant_finished_on_fewer_cases_is_extended_not_redone(tiny_lm_factory, tmp_path):
    """A row run with --limit, asked again for more cases, keeps what it has and adds the rest."""
    lm = tiny_lm_factory("llama")
    cases, folder = load_cases("counterfact", limit=3), tmp_path / "rome"
    evaluate_variant(lm, "rome", SETS, "counterfact", cases[:1], folder, Options())
    first = _lines(folder)[0]
    more = evaluate_variant(lm, "rome", SETS, "counterfact", cases, folder, Options(),
                            accept=lambda summary: summary["n_cases"] == 3)
    assert more["n_cases"] == 3 and _lines(folder)[0] == first and len(_lines(folder)) == 3


def test_a_cut_short_variant_with_other_settings_starts_over(tiny_lm_factory, tmp_path):
    lm = tiny_lm_factory("llama")
    cases, folder = load_cases("counterfact", limit=2), tmp_path / "rome"
    first = _cut_short_after_one_case(lm, cases, folder)
    evaluate_variant(lm, "rome", [*SETS, "v_lr=0.05"], "counterfact", cases, folder, Options())
    lines = _lines(folder)
    assert len(lines) == 2 and lines[0]["edit"] != first["edit"]  # the first case was edited again


def test_a_finished_variant_with_other_settings_starts_over(tiny_lm_factory, tmp_path):
    """A shipped default that changed (here: the value learning rate) must not reuse the old row."""
    lm = tiny_lm_factory("llama")
    cases, folder = load_cases("counterfact", limit=2), tmp_path / "rome"
    old = evaluate_variant(lm, "rome", SETS, "counterfact", cases, folder, Options())
    first = _lines(folder)
    new = evaluate_variant(lm, "rome", [*SETS, "v_lr=0.05"], "counterfact", cases, folder, Options())
    assert new["n_cases"] == old["n_cases"] == 2
    assert [r["edit"] for r in _lines(folder)] != [r["edit"] for r in first]  # both cases edited again
    manifest = json.loads((folder / "run.json").read_text())
    assert manifest["config"]["v_lr"] == 0.05


def test_a_folder_without_run_json_is_judged_by_its_summary(tmp_path):
    """Sequential runs (and folders from before run.json) record their settings in summary.json only."""
    from robustedit.eval.runner import RunInfo
    from robustedit.experiments.base import made_with

    info = RunInfo("rome", "smollm2", "counterfact", {"layer": 2, "v_lr": 0.5})
    assert not made_with(tmp_path, info)  # nothing there
    (tmp_path / "summary.json").write_text(json.dumps({"editor": "rome", "config": {"layer": 2, "v_lr": 0.5}}))
    assert made_with(tmp_path, info)
    assert not made_with(tmp_path, RunInfo("rome", "smollm2", "counterfact", {"layer": 2, "v_lr": 0.05}))
    assert not made_with(tmp_path, RunInfo("memit", "smollm2", "counterfact", {"layer": 2, "v_lr": 0.5}))
