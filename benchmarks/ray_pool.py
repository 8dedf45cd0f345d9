"""The hand-written Ray scheduler (`RayEvaluator`) against Ray's own: `ActorPool` + actor restarts.

Both schedulers evaluate the same CounterFact cases with ROME on a tiny random Llama (the tests'
model, saved to a temporary folder; the tests' cheap ROME settings) on 2 workers × 1 torch thread:

  A  `RayEvaluator.records(cases)`: chunks handed out one per worker; a chunk whose worker dies goes
     back to the head of the queue for whichever worker is free first, and a replacement starts.
  B  `ray.util.ActorPool.map_unordered` over actors made with ``max_restarts=-1,
     max_task_retries=-1``, whose ``__init__`` builds the editor (`EditorSpec.build`) and whose
     ``evaluate`` runs `LocalEvaluator.records` on a chunk: Ray restarts a dead actor (running its
     ``__init__`` again) and re-runs the lost task on it.

each once without failure and once with one worker SIGKILLed as soon as the first chunk's records
arrive (both workers are busy then: each scheduler has already given the freed worker its next
chunk). Per run it prints the startup (Ray up → every worker has built its editor), the evaluation
time (ready → last record), cases yielded, duplicated and missing case ids, and whether the records
equal (timing aside) those of one local process. After a kill, it prints what A did (chunks
evaluated again) and, for B, whether ActorPool raised, when Ray's restarted actor had finished its
``__init__``, when the lost chunk came back and from which process, and when the other worker
returned its last chunk: where Ray re-ran the lost chunk, and what that cost.

A kill costs B more than A only when the other worker runs out of chunks before the killed one has
restarted; with 24 tiny cases (~0.07 s each) against a ~5 s restart it does, with 160 it does not.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/ray_pool.py               # 24 cases: kill near the end
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/ray_pool.py --limit 160   # kill with a long queue left

Statistics go to a temporary ``ROBUSTEDIT_CACHE`` (computed once, by the local run), so no run
pays for them and nothing is written to the user's cache.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))  # the tests' tiny models

import tiny

from robustedit.data import load_cases
from robustedit.eval.distributed import RayEvaluator, chunked, worker_env
from robustedit.eval.runner import EvalOptions, LocalEvaluator
from robustedit.eval.distributed import EditorSpec

# The tests' ROME settings for the tiny Llama (tests/unit/test_distributed.py).
SETS = ("layer=1", "stats.n_tokens=2048", "stats.seq_len=64", "stats.batch_size=8",
        "context_template_length_params=[[3, 5]]", "v_num_grad_steps=3")
WORKERS, THREADS = 2, 1


def without_timing(records: list[dict]) -> list[dict]:
    return sorted(({k: v for k, v in r.items() if k != "timing"} for r in records), key=lambda r: r["case_id"])


def local_records(spec: EditorSpec, cases, options: EvalOptions) -> tuple[list[dict], float]:
    """The reference: every case evaluated in this process; and its seconds (editor built)."""
    import torch

    torch.set_num_threads(THREADS)
    editor, _ = spec.build()
    evaluator = LocalEvaluator(editor, options)
    evaluator.prepare()  # computes the statistics into the cache the Ray runs then read
    t0 = time.perf_counter()
    records = list(evaluator.records(cases))
    return records, time.perf_counter() - t0


# -- A: the hand-written scheduler ----------------------------------------------------------------

def run_hand_written(spec: EditorSpec, cases, options: EvalOptions, chunk_size: int, kill: bool) -> dict:
    evaluator = RayEvaluator(spec, options, workers=WORKERS, threads=THREADS, chunk_size=chunk_size)
    t0 = time.perf_counter()
    evaluator.prepare()
    ready = time.perf_counter()
    records, arrivals, killed, error = [], [], None, None
    try:
        for record in evaluator.records(cases):  # closes the workers after the last record
            records.append(record)
            arrivals.append(time.perf_counter() - ready)
            if kill and killed is None:
                killed = evaluator.worker_pids()[0]
                os.kill(killed, signal.SIGKILL)
    except Exception as e:  # noqa: BLE001 (reported, not raised: the other runs still tell something)
        error = f"{type(e).__name__}: {e}"
    return {"startup_s": ready - t0, "eval_s": (arrivals[-1] if arrivals else 0.0), "records": records,
            "killed": killed, "error": error, "notes": [f"chunks evaluated again: {evaluator.retries}"]}


# -- B: Ray's ActorPool with actor restarts and task retries --------------------------------------

class PoolWorker:
    """One actor: builds the editor in ``__init__`` (run again by Ray when it restarts the actor)."""

    def __init__(self, spec: EditorSpec, options: EvalOptions, threads: int):
        import torch

        torch.set_num_threads(threads)
        editor, _ = spec.build()
        self.evaluator = LocalEvaluator(editor, options)
        self.evaluator.prepare()
        self.started = time.time()

    def pid(self) -> int:
        return os.getpid()

    def started_at(self) -> float:
        return self.started

    def evaluate(self, cases) -> tuple[int, list[dict]]:
        return os.getpid(), list(self.evaluator.records(cases))


def run_actor_pool(spec: EditorSpec, cases, options: EvalOptions, chunk_size: int, kill: bool) -> dict:
    import ray
    from ray.util import ActorPool

    remote = ray.remote(PoolWorker).options(num_cpus=THREADS, max_restarts=-1, max_task_retries=-1,
                                            runtime_env={"env_vars": worker_env()})
    t0 = time.perf_counter()
    actors = [remote.remote(spec, options, THREADS) for _ in range(WORKERS)]
    pids = ray.get([a.pid.remote() for a in actors])  # waits for every __init__
    ready = time.perf_counter()
    ready_wall = time.time()
    pool = ActorPool(actors)
    records, arrivals, chunks, killed, error = [], [], [], None, None
    try:
        for pid, chunk_records in pool.map_unordered(lambda a, chunk: a.evaluate.remote(chunk),
                                                     chunked(cases, chunk_size)):
            now = time.perf_counter() - ready
            chunks.append((now, pid, [r["case_id"] for r in chunk_records]))
            records += chunk_records
            arrivals += [now] * len(chunk_records)
            if kill and killed is None:
                killed = pids[0]
                os.kill(killed, signal.SIGKILL)
    except Exception as e:  # noqa: BLE001 (what ActorPool raises is one of the things measured)
        error = f"{type(e).__name__}: {e}"
    notes = [] if error else ["ActorPool raised nothing"]
    if killed is not None:
        new_pid = ray.get(actors[0].pid.remote())
        new_ready = ray.get(actors[0].started_at.remote()) - ready_wall
        notes.append(f"killed pid {killed}; Ray restarted that actor as pid {new_pid}, its __init__ "
                     f"(model load + editor build) done at {new_ready:.1f} s")
        # The pool gives an actor nothing new while its task is outstanding, so the first chunk the
        # restarted actor returns is the one lost with the killed process.
        mine = [(t, ids) for t, pid, ids in chunks if pid == new_pid]
        notes.append(f"the restarted actor's first chunk, the lost one: cases {', '.join(mine[0][1])} at "
                     f"{mine[0][0]:.1f} s; {len(mine)} chunk(s) from it in all" if mine else
                     "the restarted actor returned no chunk")
        survivor = [(t, pid) for t, pid, _ in chunks if pid not in (killed, new_pid)]
        if survivor:
            notes.append(f"the other worker (pid {survivor[-1][1]}) returned {len(survivor)} chunks, "
                         f"its last at {survivor[-1][0]:.1f} s")
    for a in actors:
        ray.kill(a, no_restart=True)
    return {"startup_s": ready - t0, "eval_s": (arrivals[-1] if arrivals else 0.0), "records": records,
            "killed": killed, "error": error, "notes": notes}


# -- the comparison ----------------------------------------------------------------------------------

def check(result: dict, cases, reference: list[dict]) -> str:
    counts = Counter(r["case_id"] for r in result["records"])
    duplicated = sorted(c for c, n in counts.items() if n > 1)
    missing = [c.case_id for c in cases if c.case_id not in counts]
    same = without_timing(result["records"]) == reference
    return (f"{len(result['records'])} | {', '.join(duplicated) or '–'} | {', '.join(missing) or '–'} | "
            f"{'yes' if same else 'NO'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=24, help="CounterFact cases to evaluate")
    ap.add_argument("--chunk-size", type=int, default=1, help="cases per task (RayEvaluator's default: 1)")
    ap.add_argument("--only", choices=["A", "B"], help="run one scheduler only")
    args = ap.parse_args()

    import ray

    with tempfile.TemporaryDirectory(prefix="ray-pool-bench-") as tmp:
        os.environ["ROBUSTEDIT_CACHE"] = f"{tmp}/cache"
        os.environ["ROBUSTEDIT_QUIET"] = "1"
        model_dir = tiny.save_tiny("llama", tiny.build_tokenizer(Path(tmp, "tokenizer")), Path(tmp, "tiny-llama"))
        spec = EditorSpec(editor="rome", model=str(model_dir), sets=SETS)
        options = EvalOptions()
        cases = load_cases("counterfact", limit=args.limit)
        local, local_s = local_records(spec, cases, options)
        reference = without_timing(local)

        ray.init(num_cpus=WORKERS * THREADS, include_dashboard=False, logging_level=logging.ERROR)
        results = {}
        for name, run in {"A hand-written": run_hand_written, "B ActorPool": run_actor_pool}.items():
            if args.only and not name.startswith(args.only):
                continue
            for kill in (False, True):
                results[name, kill] = run(spec, cases, options, args.chunk_size, kill)
        ray.shutdown()

    print(f"\nROME on a tiny Llama, {len(cases)} CounterFact cases in chunks of {args.chunk_size}, "
          f"{WORKERS} workers × {THREADS} thread; one local process: {local_s:.1f} s\n")
    print("| scheduler | worker killed | startup s | eval s | cases yielded | duplicated | missing | "
          "records = local |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, kill), res in results.items():
        print(f"| {name} | {'yes' if kill else 'no'} | {res['startup_s']:.1f} | {res['eval_s']:.1f} | "
              f"{check(res, cases, reference)} |")
    for (name, kill), res in results.items():
        if kill or res["error"]:
            print(f"\n{name}, {'one worker killed' if kill else 'no kill'}:")
            for line in res["notes"] + ([f"stopped by {res['error']}"] if res["error"] else []):
                print(f"  {line}")


if __name__ == "__main__":
    main()
