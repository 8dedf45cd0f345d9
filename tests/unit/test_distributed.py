"""Evaluation sharded over Ray workers: same records as in-process, a killed worker loses no case
and duplicates none, a worker's UserError reaches the driver as itself, and Ray stays optional.

The workers load a tiny random Llama saved to a directory; they see the session's statistics
cache because `RayEvaluator` forwards ``ROBUSTEDIT_CACHE`` (set per test by conftest) to them.
"""

from __future__ import annotations

import os
import signal
import sys

import pytest

from robustedit.data import Case
from robustedit.errors import UserError
from robustedit.eval.runner import EvalOptions, LocalEvaluator, RunInfo, read_records, run_evaluation
from robustedit.request import EditRequest
from robustedit.eval.distributed import EditorSpec

SETS = ("layer=1", "stats.n_tokens=2048", "stats.seq_len=64", "stats.batch_size=8",
        "context_template_length_params=[[3, 5]]", "v_num_grad_steps=3")
SUBJECTS = ["Danielle Darrieux", "Jean Gabin", "Michel Rocard", "Léon Blum", "Edith Piaf", "Albert Camus"]


@pytest.fixture
def ray():
    return pytest.importorskip("ray")


@pytest.fixture(scope="module")
def shared_ray():
    """One local Ray for the tests that need not see an evaluator start its own (~5 s saved each).
    It starts before conftest sets ``ROBUSTEDIT_CACHE`` for the test, so its workers see that
    setting only because `RayEvaluator` forwards it."""
    import logging

    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """A tiny random Llama and its tokenizer as a Hugging Face directory the workers can load."""
    import tiny

    path = tmp_path_factory.mktemp("tiny-llama-dir")
    lm = tiny.tiny_model("llama", tokenizer)
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def spec(model_dir) -> EditorSpec:
    return EditorSpec(editor="rome", model=str(model_dir), sets=SETS)


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return [Case(str(i), EditRequest("The mother tongue of {} is", s, "English", "French"),
                 paraphrase_prompts=(f"{s} speaks",), neighborhood_prompts=("The mother tongue of Léon Blum is",),
                 neighborhood_answer="French")
            for i, s in enumerate(SUBJECTS)]


@pytest.fixture
def unsharded(spec, cases, tmp_path) -> list[dict]:
    """Records of the same spec's editor evaluated in this process, without timing, by case id.

    Function-scoped on purpose: conftest sets one torch thread and the test cache per test, after
    any module fixture; with two threads the last bits of some floats (and so records) differ."""
    editor, config = spec.build()
    out = tmp_path / "unsharded"
    run_evaluation(LocalEvaluator(editor, EvalOptions()), cases, out, RunInfo("rome", "tiny", "hand-made", config),
                   show_progress=False)
    return without_timing(read_records(out / "records.jsonl"))


def without_timing(records: list[dict]) -> list[dict]:
    return sorted(({k: v for k, v in r.items() if k != "timing"} for r in records), key=lambda r: r["case_id"])


class KillAfterFirst:
    """An Evaluator passing records through, SIGKILLing a busy worker when the first arrives."""

    def __init__(self, inner):
        self.inner, self.killed = inner, None

    def prepare(self) -> None:
        self.inner.prepare()

    def records(self, cases):
        for record in self.inner.records(cases):
            if self.killed is None:
                self.killed = self.inner.worker_pids()[0]
                os.kill(self.killed, signal.SIGKILL)
            yield record


def test_sharded_records_equal_unsharded_ones_and_ray_is_left_as_found(ray, spec, cases, unsharded, tmp_path):
    from robustedit.eval.distributed import RayEvaluator

    was_up = ray.is_initialized()  # run alone or first: no, so the evaluator starts and stops its own
    evaluator = RayEvaluator(spec, EvalOptions(), workers=2, chunk_size=2)
    run_evaluation(evaluator, cases, tmp_path / "ray", RunInfo("rome", "tiny", "hand-made", {}), show_progress=False)
    assert without_timing(read_records(tmp_path / "ray" / "records.jsonl")) == unsharded
    assert ray.is_initialized() == was_up


def test_a_killed_worker_loses_and_duplicates_no_case(shared_ray, spec, cases, unsharded, tmp_path):
    from robustedit.eval.distributed import RayEvaluator

    with RayEvaluator(spec, EvalOptions(), workers=2) as evaluator:
        killer = KillAfterFirst(evaluator)
        run_evaluation(killer, cases, tmp_path / "ray", RunInfo("rome", "tiny", "hand-made", {}), show_progress=False)
    records = read_records(tmp_path / "ray" / "records.jsonl")
    assert sorted(r["case_id"] for r in records) == [c.case_id for c in cases]  # each exactly once
    assert without_timing(records) == unsharded
    assert evaluator.retries >= 1  # the killed worker's chunk was evaluated again elsewhere
    assert killer.killed not in evaluator.worker_pids()


def test_a_user_error_in_a_worker_reaches_the_driver_as_itself(shared_ray, tmp_path):
    from robustedit.eval.distributed import RayEvaluator

    (tmp_path / "not-a-model").mkdir()  # exists on the driver too: only loading it fails, in the worker
    spec = EditorSpec(editor="rome", model=str(tmp_path / "not-a-model"), sets=SETS)
    with pytest.raises(UserError) as caught:
        with RayEvaluator(spec, EvalOptions(), workers=1) as evaluator:
            evaluator.prepare()
    assert type(caught.value) is UserError
    assert str(caught.value) == f"{tmp_path / 'not-a-model'} is not a Hugging Face model directory (no config.json)"
    assert shared_ray.is_initialized()  # a Ray the evaluator did not start is left running


def test_without_ray_asking_for_workers_is_a_one_line_user_error(monkeypatch, spec):
    from robustedit.eval.distributed import RayEvaluator

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(UserError, match=r"pip install 'robustedit\[ray\]'") as caught:
        RayEvaluator(spec, EvalOptions(), workers=2)
    assert "\n" not in str(caught.value) and caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_chunk_lost_more_than_max_retries_times_stops_the_run(ray, spec, cases):
    from robustedit.eval.distributed import RayEvaluator, _Chunk

    evaluator = RayEvaluator(spec, EvalOptions(), workers=1, max_retries=1)  # starts nothing yet
    chunk = _Chunk(cases[:2])
    lost = ray.exceptions.ActorDiedError()
    assert evaluator._retry(chunk, lost) is chunk and evaluator.retries == 1
    with pytest.raises(RuntimeError, match=r"evaluating cases 0, 1 was lost 2 times \(max_retries=1\)"):
        evaluator._retry(chunk, lost)


def test_workers_get_the_drivers_cache_settings_but_no_progress_bars_or_tokens(monkeypatch):
    from robustedit.eval.distributed import worker_env

    monkeypatch.setenv("ROBUSTEDIT_CACHE", "/somewhere/cache")
    monkeypatch.setenv("ROBUSTEDIT_QUIET", "0")
    monkeypatch.setenv("HF_HOME", "/somewhere/hf")
    monkeypatch.setenv("HF_TOKEN", "secret")
    env = worker_env()
    assert env["ROBUSTEDIT_CACHE"] == "/somewhere/cache" and env["HF_HOME"] == "/somewhere/hf"
    assert env["ROBUSTEDIT_QUIET"] == "1" and env["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert "HF_TOKEN" not in env


def test_evaluators_sharing_pre_scores_score_each_case_unedited_once_and_write_the_same_records(
        spec, cases, unsharded, tmp_path, monkeypatch):
    import robustedit.eval.runner as runner

    calls = []
    real = runner.score_case
    monkeypatch.setattr(runner, "score_case", lambda lm, case, probes=None: calls.append(case.case_id) or real(lm, case, probes))
    editor, config = spec.build()
    shared: dict = {}
    for name in ("first", "second"):
        run_evaluation(LocalEvaluator(editor, EvalOptions(), shared), cases, tmp_path / name,
                       RunInfo("rome", "tiny", "hand-made", config), show_progress=False)
        assert without_timing(read_records(tmp_path / name / "records.jsonl")) == unsharded
    # each case: once unedited (first run only) and once edited per run
    assert sorted(calls) == sorted([c.case_id for c in cases] * 3)
