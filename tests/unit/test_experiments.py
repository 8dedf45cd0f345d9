"""What every experiment shares (experiments/base.py): finished variants reused, cut-short ones resumed."""

from __future__ import annotations

import json

from test_eval import SETTINGS

from robustedit.data import load_cases
from robustedit.experiments import Options, evaluate_variant


def _lines(folder):
    return [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]


def test_a_variant_cut_short_continues_and_a_finished_one_is_read_back(tiny_lm_factory, tmp_path):
    lm = tiny_lm_factory("llama")
    cases = load_cases("counterfact", limit=3)
    sets = [f"{k}={json.dumps(v)}" for k, v in SETTINGS.items()]
    folder, options = tmp_path / "rome", Options()
    evaluate_variant(lm, "rome", sets, "counterfact", cases[:1], folder, options)
    (folder / "summary.json").unlink()  # as if killed after the first case
    first = _lines(folder)[0]
    summary = evaluate_variant(lm, "rome", sets, "counterfact", cases, folder, options)
    lines = _lines(folder)
    assert summary["n_cases"] == 3 and [r["case_id"] for r in lines] == [c.case_id for c in cases]
    assert lines[0] == first  # kept, not evaluated again
    again = evaluate_variant(lm, "rome", sets, "counterfact", cases, folder, options)
    assert again == json.loads(json.dumps(summary))  # read back from summary.json, nothing evaluated


def test_a_cut_short_variant_with_other_settings_starts_over(tiny_lm_factory, tmp_path):
    lm = tiny_lm_factory("llama")
    cases = load_cases("counterfact", limit=2)
    sets = [f"{k}={json.dumps(v)}" for k, v in SETTINGS.items()]
    folder, options = tmp_path / "rome", Options()
    evaluate_variant(lm, "rome", sets, "counterfact", cases[:1], folder, options)
    (folder / "summary.json").unlink()
    first = _lines(folder)[0]
    evaluate_variant(lm, "rome", [*sets, "v_lr=0.05"], "counterfact", cases, folder, options)
    lines = _lines(folder)
    assert len(lines) == 2 and lines[0]["edit"] != first["edit"]  # the first case was edited again
