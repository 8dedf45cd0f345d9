"""The key analyses (analysis/keys.py, run.py) and the REP table's pieces (experiments/rep_table.py)
on tiny random models."""

from __future__ import annotations

import json

import pytest
import torch

import robustedit.editors  # noqa: F401
from robustedit.analysis import keys
from robustedit.analysis.run import run_analysis
from robustedit.data import Case
from robustedit.editors import applied, get_editor
from robustedit.errors import UserError
from robustedit.eval.metrics import case_metrics, score_case
from robustedit.data.perturb import RobustnessConfig, robustness_probes
from robustedit.experiments.rep_table import row_statistics, table_markdown, tau_sweep, tau_sweep_markdown
from robustedit.request import EditRequest

STATS = {"n_tokens": 2048, "seq_len": 64, "batch_size": 8}
ROME = {"layer": 1, "stats": STATS, "context_template_length_params": [[3, 3]], "v_num_grad_steps": 4}
ROB = RobustnessConfig(n_per_kind=4, context_tokens=24)
CASES = [Case(str(i), EditRequest("The mother tongue of {} is", s, "English", "French"),
              neighborhood_prompts=("The mother tongue of Léon Blum is",), neighborhood_answer="French",
              subject_rephrases=(s.split()[-1], "the actor " + s, s.upper()))
         for i, s in enumerate(["Danielle Yvonne Darrieux", "Jean Alexis Gabin"])]


@pytest.fixture
def rome(tiny_lm_factory):
    return get_editor("rome", tiny_lm_factory("llama"), **ROME)


def test_similarity_distributions_score_every_probe_and_the_random_baseline(rome, tmp_path):
    paths = run_analysis("similarity", rome, CASES, tmp_path, command="test", rob=ROB)
    result = json.loads(paths[0].read_text())
    assert paths[1].stat().st_size > 0 and result["command"] == "test"
    sims = result["similarities"]
    assert len(sims["prompt"]) == 2 and len(sims["random"]) == 20
    assert len(sims["rephrase_subject"]) == 6 and len(sims["long_context"]) == 8
    # the bare prompt's key is one of the keys k* averages: closer to k* than random tokens on average
    case = result["cases"][0]
    assert case["self"] > 0 and max(case["prompt"]) > sum(case["random"]) / len(case["random"])


def test_similarity_of_k_star_to_itself_is_its_whitened_norm(rome):
    k = keys.inserted_key(rome, CASES[0])
    C = rome.covariance()
    torch.testing.assert_close(k @ torch.linalg.solve(C.double(), k.double()).float(),
                               k @ keys.whitened_targets(C, k[None])[0], rtol=1e-4, atol=1e-3)


def test_pca_places_every_key(rome, tmp_path):
    result = json.loads(run_analysis("pca", rome, CASES, tmp_path, rob=ROB, case_index=1)[0].read_text())
    kinds = [p["kind"] for p in result["points"]]
    assert kinds[:2] == ["k*", "prompt"] and kinds.count("long_context") == 4
    assert result["subject"] == "Jean Alexis Gabin" and 0 < sum(result["explained_variance"]) <= 1 + 1e-9
    with pytest.raises(UserError, match="case-index"):
        run_analysis("pca", rome, CASES, tmp_path, case_index=5)


def test_nearest_prefixes_never_return_the_subject_itself(rome, tmp_path):
    result = json.loads(run_analysis("prefixes", rome, CASES, tmp_path, n_tokens=1024)[0].read_text())
    assert result["n_tokens"] == 1024 and len(result["cases"]) == 2
    tok = rome.lm.tokenizer
    for case, entry in zip(CASES, result["cases"]):
        assert len(entry["nearest"]) == 10
        sims = [n["similarity"] for n in entry["nearest"]]
        assert sims == sorted(sims, reverse=True)
        last = tok(" " + case.request.subject, add_special_tokens=False)["input_ids"][-1]
        for n in entry["nearest"]:
            assert last not in tok(n["prefix"], add_special_tokens=False)["input_ids"][1:]


def test_value_norms_come_from_the_edit(rome, tmp_path):
    result = json.loads(run_analysis("values", rome, CASES[:1], tmp_path)[0].read_text())
    row = result["cases"][0]
    assert row["v_star_norm"] > 0 and row["v0_norm"] > 0 and row["delta_norm"] > 0


def test_unknown_analysis_is_a_user_error(rome, tmp_path):
    with pytest.raises(UserError, match="choose from"):
        run_analysis("histogram", rome, CASES, tmp_path)


def test_tau_sweep_with_every_gate_closed_scores_the_rome_edit_alone(tiny_lm_factory):
    """At τ above every gate value the adaptor is inert: the sweep's metrics are ROME's."""
    lm = tiny_lm_factory("llama")
    rep = get_editor("rome+rep", lm, **{**ROME, "rep": {"steps": 2}})
    sweep = tau_sweep(rep, CASES[:1], ROB, taus=(0.999999,))
    rome = get_editor("rome", lm, **ROME)
    probes = robustness_probes(CASES[0], lm.tokenizer, ROB)
    pre = score_case(lm, CASES[0], probes)
    with applied(lm, rome.edit([CASES[0].request])):
        expected = case_metrics(pre, score_case(lm, CASES[0], probes))
    assert sweep["metrics"]["0.999999"] == pytest.approx(expected)
    assert sweep["without_adaptor"] == pytest.approx(expected)  # the reference row: ROME's weights alone
    assert 0 <= sweep["training"]["gate_mean"] <= 1
    md = tau_sweep_markdown({**sweep, "model": "tiny", "dataset": "hand-made"})
    assert "| ROME alone |" in md and "| 0.999999 |" in md


def _records(values: dict[str, list[float]]) -> list[dict]:
    n = len(next(iter(values.values())))
    return [{"case_id": str(i), "metrics": {m: v[i] for m, v in values.items()}} for i in range(n)]


def test_table_markdown_gives_intervals_and_paired_differences_from_the_base_row():
    records = {"rome": _records({"efficacy_top1": [1, 1, 0, 1], "locality_top1": [0.5, 0.5, 0.5, 0.5]}),
               "rome+rep": _records({"efficacy_top1": [1, 1, 1, 1], "locality_top1": [0.5, 0.5, 0.5, 0.5],
                                     "rephrase_subject_id": [0.2, 0.4, 0.6, 0.8]})}
    results = {row: {"n_cases": 4, "metrics": {}} for row in records}
    stats = row_statistics(records)
    assert stats["rome+rep"]["compared_with"] == "rome" and stats["rome"]["differences"] == {}
    assert stats["rome+rep"]["differences"]["efficacy_top1"]["mean"] == pytest.approx(0.25)
    assert stats["rome+rep"]["differences"]["locality_top1"] == {"mean": 0.0, "low": 0.0, "high": 0.0, "n": 4}
    md = table_markdown(results, stats, "rep-test", "tiny")
    assert "| rome | 4 | 75.0 [" in md and "| 50.0 [50.0, 50.0] | – |" in md  # no rephrasings for rome: a dash
    assert "| rome+rep − rome | 4 | +25.0 [+0.0, +75.0] | +0.0 [+0.0, +0.0] | – |" in md
