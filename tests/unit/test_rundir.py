"""What a run directory guarantees (rundir.py): one writer, resumes of the same run only, outputs
checked before work, finite edits only, an interrupt that says what it kept."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from robustedit.config import from_dict
from robustedit.editors.base import Delta, apply_delta
from robustedit.editors.rome import ROMEConfig
from robustedit.errors import UserError
from robustedit.eval.ability import AbilityProbe
from robustedit.eval.runner import RunInfo, run_evaluation
from robustedit.rundir import check_output_folder, check_same_run, interrupt_message, on_interrupt, writer_lock

HOLD = ("import sys, time; from robustedit.rundir import writer_lock\n"
        "with writer_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n")


@pytest.fixture
def holder(tmp_path):
    """Another process holding the writer lock of ``tmp_path / 'run'``."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_writer_is_refused_naming_the_first(tmp_path, holder):
    with pytest.raises(UserError, match=rf"process {holder.pid}"):
        with writer_lock(tmp_path / "run"):
            pass
    with pytest.raises(UserError, match="being written"):  # the CLI's check before any model loads
        check_output_folder(tmp_path / "run")


def test_the_lock_dies_with_its_process(tmp_path, holder):
    holder.kill()
    holder.wait()
    with writer_lock(tmp_path / "run"):  # no stale lock after a kill -9
        pass


def test_a_resume_must_match_the_recorded_settings(tmp_path):
    settings = {"editor": "rome", "model": "tiny", "fingerprint": "abc", "config": {"layer": 2, "v_lr": 0.5}, "seed": 0}
    check_same_run(tmp_path, settings, resume=False)
    assert json.loads((tmp_path / "run.json").read_text()) == settings
    check_same_run(tmp_path, settings, resume=True)
    changed = {**settings, "config": {"layer": 3, "v_lr": 0.5}, "seed": 1}
    with pytest.raises(UserError, match=r"config\.layer: 2 → 3; seed: 0 → 1"):
        check_same_run(tmp_path, changed, resume=True)
    check_same_run(tmp_path, {**settings, "fingerprint": None}, resume=True)  # unknown here: not compared


class _Records:
    """An evaluator that returns ready-made records."""

    def __init__(self):
        self.calls = 0

    def prepare(self):
        pass

    def records(self, cases):
        for case in cases:
            self.calls += 1
            yield {"case_id": case.case_id, "metrics": {"m": 1.0}, "pre": {}, "timing": {}}


def _cases(n):
    from robustedit.data import Case
    from robustedit.request import EditRequest

    return [Case(case_id=str(i), request=EditRequest("{} is in", f"S{i}", "X")) for i in range(n)]


def test_run_evaluation_refuses_duplicates_and_other_settings(tmp_path):
    run = RunInfo("rome", "tiny", "d", {"layer": 2})
    run_evaluation(_Records(), _cases(2), tmp_path, run)
    with pytest.raises(UserError, match=r"config\.layer: 2 → 3"):
        run_evaluation(_Records(), _cases(3), tmp_path, RunInfo("rome", "tiny", "d", {"layer": 3}), resume=True)
    records = (tmp_path / "records.jsonl").read_text()
    (tmp_path / "records.jsonl").write_text(records + records)  # two writers' worth
    with pytest.raises(UserError, match="2 duplicate record"):
        run_evaluation(_Records(), _cases(3), tmp_path, run, resume=True)


def test_outputs_are_checked_before_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        check_output_folder(tmp_path / "file")
    with pytest.raises(UserError, match="is a file"):
        check_output_folder(tmp_path / "file" / "sub")
    with pytest.raises(UserError, match="cannot be written"):  # not even root can create files in /proc
        check_output_folder("/proc/robustedit-test/out")
    check_output_folder(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_an_interrupt_remembers_what_was_kept():
    with pytest.raises(KeyboardInterrupt):
        with on_interrupt(lambda: "3 records kept; --resume"):
            raise KeyboardInterrupt
    assert interrupt_message() == "interrupted: 3 records kept; --resume"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", float("nan")])
def test_float_settings_must_be_finite(value):
    with pytest.raises(UserError, match="finite"):
        from_dict(ROMEConfig, {"v_lr": value})


def test_non_finite_deltas_are_refused_and_the_model_is_unchanged(tiny_lm):
    name, param = next(iter(tiny_lm.model.named_parameters()))
    before = param.detach().clone()
    bad = torch.zeros_like(param)
    bad.view(-1)[0] = math.nan
    with pytest.raises(UserError, match="non-finite"):
        apply_delta(tiny_lm, Delta({name: bad}))
    assert torch.equal(param.detach(), before)


def test_no_probe_prompt_means_no_agreement_not_zero(tiny_lm):
    probe = AbilityProbe.build(tiny_lm, [], n_tokens=64, seq_len=32)
    assert "neighbor_agreement" not in probe.unedited() and "neighbor_agreement" not in probe.measure(tiny_lm)
    assert "neighbor_agreement" in AbilityProbe.build(tiny_lm, ["The capital of France is"], n_tokens=64,
                                                      seq_len=32).measure(tiny_lm)


def test_edits_that_did_not_take_are_counted_in_the_summary(tmp_path):
    from robustedit.eval.report import summary_markdown
    from robustedit.eval.runner import summarize

    records = [{"case_id": str(i), "metrics": {"efficacy_top1": float(v)}, "pre": {}, "timing": {}}
               for i, v in enumerate([1, 0, 1, 0, 0])]
    summary = summarize(records, RunInfo("rome", "tiny", "d", {}))
    assert summary["edits_not_taken"] == 3
    assert "3 of 5 edits did not take" in summary_markdown(summary)
