"""A run killed mid-case (SIGKILL, from outside) and resumed loses and duplicates nothing, and its
records equal an uninterrupted run's (per-case seeding makes them independent of what ran before)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from robustedit.eval.runner import read_records

SETS = ["layer=1", "stats.n_tokens=2048", "stats.seq_len=64", "stats.batch_size=8",
        "context_template_length_params=[[3, 5]]", "v_num_grad_steps=3"]
N_CASES = 8


def _dataset(path):
    subjects = ["Danielle Darrieux", "Jean Gabin", "Michel Rocard", "Léon Blum", "Tony Blair", "Paris",
                "Michael Jordan", "Rome"]
    records = [{"case_id": str(i), "prompt": f"The mother tongue of {s} is", "subject": s, "target_new": "English",
                "target_true": "French", "rephrase_prompt": [f"{s} speaks"], "locality_prompt": ["The capital of France is"],
                "locality_ground_truth": "Paris", "subject_rephrase": []} for i, s in enumerate(subjects[:N_CASES])]
    path.write_text(json.dumps(records))
    return path


def _command(model_dir, data, out, *extra):
    cmd = [sys.executable, "-c", "from robustedit.cli import main; main()", "evaluate", "--editor", "rome",
           "--dataset", str(data), "--model", str(model_dir), "--out", str(out), "--no-robustness", *extra]
    for s in SETS:
        cmd += ["--set", s]
    return cmd


def _without_timing(records):
    return sorted(({k: v for k, v in r.items() if k != "timing"} for r in records), key=lambda r: r["case_id"])


@pytest.fixture
def env(session_cache_dir):
    return {**os.environ, "ROBUSTEDIT_CACHE": str(session_cache_dir), "ROBUSTEDIT_QUIET": "1", "OMP_NUM_THREADS": "1"}


def test_a_killed_run_resumes_without_loss_or_duplicates(tiny_model_dir, tmp_path, env):
    data = _dataset(tmp_path / "cases.json")
    full = tmp_path / "full"
    subprocess.run(_command(tiny_model_dir, data, full), env=env, check=True, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_command(tiny_model_dir, data, killed), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(read_records(killed / "records.jsonl")) < 2 and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(read_records(killed / "records.jsonl"))
    assert 2 <= done < N_CASES, "the run must be killed midway for this test to mean anything"
    subprocess.run(_command(tiny_model_dir, data, killed, "--resume"), env=env, check=True, capture_output=True)
    resumed = read_records(killed / "records.jsonl")
    assert sorted(r["case_id"] for r in resumed) == [str(i) for i in range(N_CASES)]  # each exactly once
    assert _without_timing(resumed) == _without_timing(read_records(full / "records.jsonl"))
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["n_cases"] == N_CASES


def test_the_command_line_shards_over_workers_with_the_same_records(tiny_model_dir, tmp_path, env):
    pytest.importorskip("ray")
    data = _dataset(tmp_path / "cases.json")
    subprocess.run(_command(tiny_model_dir, data, tmp_path / "local"), env=env, check=True, capture_output=True)
    sharded = subprocess.run(_command(tiny_model_dir, data, tmp_path / "sharded", "--workers", "2"), env=env,
                             capture_output=True, text=True)
    assert sharded.returncode == 0, sharded.stderr[-2000:]
    records = read_records(tmp_path / "sharded" / "records.jsonl")
    assert _without_timing(records) == _without_timing(read_records(tmp_path / "local" / "records.jsonl"))
    summary = json.loads((tmp_path / "sharded" / "summary.json").read_text())
    assert summary["workers"]["n"] == 2 and summary["n_cases"] == N_CASES


def _default_sigint():
    # A background job of a shell without job control (e.g. `cmd &` in a CI script) inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler; a user's terminal has it on.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_and_wait(cmd, env, out, n_records):
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    deadline = time.time() + 120
    while time.time() < deadline and len(read_records(out / "records.jsonl")) < n_records and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before the test could interrupt it"
    return proc


def test_ctrl_c_exits_130_saying_what_was_kept_and_a_resume_must_match(tiny_model_dir, tmp_path, env):
    data = _dataset(tmp_path / "cases.json")
    out = tmp_path / "run"
    proc = _start_and_wait(_command(tiny_model_dir, data, out), env, out, 2)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    kept = len(read_records(out / "records.jsonl"))
    assert f"interrupted: {kept} finished case(s) kept" in err.strip().splitlines()[-1] and "--resume" in err
    other = subprocess.run(_command(tiny_model_dir, data, out, "--resume", "--seed", "1"), env=env,
                           capture_output=True, text=True)
    assert other.returncode == 2 and "seed: 0 → 1" in other.stderr
    assert len(read_records(out / "records.jsonl")) == kept  # the refused resume wrote nothing


def test_a_second_writer_is_refused_before_the_model_loads(tiny_model_dir, tmp_path, env):
    data = _dataset(tmp_path / "cases.json")
    out = tmp_path / "run"
    hold = ("import sys, time; from robustedit.rundir import writer_lock\n"
            "with writer_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = subprocess.run(_command(tiny_model_dir, data, out), env=env, capture_output=True, text=True)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2 and f"process {holder.pid}" in second.stderr
    assert not (out / "records.jsonl").exists()
