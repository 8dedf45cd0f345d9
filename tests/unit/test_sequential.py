"""Sequential editing runs on a tiny model: the files, the checkpoints, the model restored after the
run, the saved edits reproducing the final model exactly, and the general-ability probes."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny import same_state, state_copy

from robustedit.data import Case
from robustedit.editors import get_editor
from robustedit.editors.saved import load_edit
from robustedit.errors import UserError
from robustedit.eval.ability import (
    AbilityProbe,
    heldout_windows,
    next_tokens,
    perplexity,
)
from robustedit.eval.metrics import case_metrics, score_case
from robustedit.eval.runner import RunInfo
from robustedit.eval.sequential import SequentialPlan, run_sequential
from robustedit.request import EditRequest

SETTINGS = {"layer": 1, "stats": {"n_tokens": 2048, "seq_len": 64, "batch_size": 8},
            "context_template_length_params": [[3, 3]], "v_num_grad_steps": 3}
SUBJECTS = ["Danielle Darrieux", "Jean Gabin", "Michel Rocard", "Léon Blum", "Simone Veil", "Édith Piaf"]


def _cases() -> list[Case]:
    return [Case(str(i), EditRequest("The mother tongue of {} is", s, "English", "French"),
                 paraphrase_prompts=(f"{s} speaks",), neighborhood_prompts=(f"{s} was born in",),
                 neighborhood_answer="France")
            for i, s in enumerate(SUBJECTS)]


@pytest.mark.parametrize(("plan", "expected"), [
    (SequentialPlan(5, 2), [2, 5]),
    (SequentialPlan(1000, 10), [10, 100, 1000]),
    (SequentialPlan(1000, 1), [1, 10, 100, 1000]),
    (SequentialPlan(25, 4, (3, 7)), [4, 8, 25]),
])
def test_checkpoints_fall_between_edit_calls(plan, expected):
    assert plan.checkpoint_set() == expected


def test_bad_plans_are_user_errors():
    with pytest.raises(UserError):
        SequentialPlan(0)
    with pytest.raises(UserError, match="larger"):
        SequentialPlan(3, 4)


def test_sequential_run_files_restore_and_saved_edits(tiny_lm_factory, tmp_path):
    lm = tiny_lm_factory("llama")
    before = state_copy(lm)
    editor = get_editor("rome", lm, **SETTINGS)
    cases = _cases()
    run = RunInfo("rome", "tiny-llama", "hand-made", SETTINGS, command="test")
    summary = run_sequential(editor, cases[:5], cases[5:], tmp_path, run, SequentialPlan(5, 2))

    assert same_state(lm, before) == [], "the model must be restored after a sequential run"
    points = [json.loads(line) for line in (tmp_path / "checkpoints.jsonl").read_text().splitlines()]
    assert [p["n_edits"] for p in points] == [0, 2, 5]
    assert points[0]["neighbor_agreement"] == 1.0  # the unedited model agrees with itself
    assert summary["sequential"]["checkpoints"] == points
    assert summary["metrics"] == pytest.approx(points[-1]["metrics"])
    edits = [json.loads(line) for line in (tmp_path / "edits.jsonl").read_text().splitlines()]
    assert [e["case_ids"] for e in edits] == [["0", "1"], ["2", "3"], ["4"]]
    assert (tmp_path / "sequential.png").stat().st_size > 0
    assert "Sequential: 5 edits" in (tmp_path / "summary.md").read_text()

    # The saved edits rebuild the final model: its scores give exactly the recorded metrics.
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    pre = [score_case(lm, c) for c in cases[:5]]
    backup = load_edit(tmp_path / "edits", lm)
    post = [score_case(lm, c) for c in cases[:5]]
    backup.restore()
    for record, a, b in zip(records, pre, post):
        assert record["metrics"] == pytest.approx(case_metrics(a, b))
    assert same_state(lm, before) == []
    manifest = json.loads((tmp_path / "edits" / "manifest.json").read_text())
    assert [s["case_ids"] for s in manifest["steps"]] == [["0", "1"], ["2", "3"], ["4"]]

    with pytest.raises(UserError, match="already holds results"):
        run_sequential(editor, cases[:5], cases[5:], tmp_path, run, SequentialPlan(5, 2))


def test_perplexity_is_the_exponent_of_the_models_own_loss(tiny_lm_factory, tokenizer):
    lm = tiny_lm_factory("gpt2")
    windows = heldout_windows(tokenizer, n_tokens=256, seq_len=64)
    assert windows.shape == (4, 64)
    with torch.no_grad():
        losses = [float(lm.model(input_ids=w[None], labels=w[None]).loss) for w in windows]
    assert perplexity(lm, windows, batch_size=3) == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-5)


def test_next_tokens_ignore_padding_and_the_probe_measures_drift(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    prompts = ["The mother tongue of Jean Gabin is", "Paris is the capital of", "A"]
    alone = [next_tokens(lm, [p])[0] for p in prompts]
    assert next_tokens(lm, prompts) == alone
    probe = AbilityProbe.build(lm, prompts, n_tokens=128, seq_len=64)
    assert probe.measure(lm) == probe.unedited()
    with torch.no_grad():
        lm.model.lm_head.weight.neg_()  # reverses every preference
    try:
        assert probe.measure(lm)["neighbor_agreement"] < 1.0
    finally:
        with torch.no_grad():
            lm.model.lm_head.weight.neg_()  # exact: the shared tiny model is left as it was
