"""Throughput of evaluation on Ray workers: 1 worker vs 2, one torch thread each.

Evaluates the first N CounterFact cases with ROME (the shipped settings for the model) on each
worker count, from the moment the workers are ready (Ray started, model loaded and editor
prepared in every worker: that startup is printed but not counted) to the last record, and prints cases/s and the
speed-up over the first count. Then, per worker count, the median time per case of the edit and of
its evaluation beyond the edit (``timing.eval_s``: scoring before and after), read from the
records: two workers on two cores also slow each case down when they compete for memory bandwidth.

    python benchmarks/eval_workers.py --limit 20
    python benchmarks/eval_workers.py --model /tmp/tiny-llama --limit 4 --set layer=1 \\
        --set stats.n_tokens=2048 --set stats.seq_len=64     # a quick check on a tiny HF directory
"""

from __future__ import annotations

import argparse
import statistics
import time

from robustedit.data import load_cases
from robustedit.eval.distributed import RayEvaluator
from robustedit.eval.runner import EvalOptions
from robustedit.eval.distributed import EditorSpec


def run(spec: EditorSpec, cases, workers: int, threads: int) -> dict:
    """Startup seconds, evaluation seconds (ready → last record) and the records of one run."""
    with RayEvaluator(spec, EvalOptions(), workers=workers, threads=threads) as evaluator:
        t0 = time.perf_counter()
        evaluator.prepare()
        startup = time.perf_counter() - t0
        t0 = last = time.perf_counter()
        records = []
        for record in evaluator.records(cases):  # its shutdown, after the last record, is not counted
            records.append(record)
            last = time.perf_counter()
    return {"startup_s": startup, "eval_s": last - t0, "records": records}


def median_timing(records: list[dict], phase: str) -> float:
    return statistics.median(r["timing"][phase] for r in records)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="embedded model name or local Hugging Face directory")
    ap.add_argument("--limit", type=int, default=20, help="CounterFact cases to evaluate")
    ap.add_argument("--workers", default="1,2", help="worker counts to compare, comma-separated")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (and Ray CPUs) per worker")
    ap.add_argument("--set", action="append", default=[], help="editor setting key=value (repeatable)")
    args = ap.parse_args()
    spec = EditorSpec(editor="rome", model=args.model, sets=tuple(args.set))
    cases = load_cases("counterfact", limit=args.limit)
    counts = [int(w) for w in args.workers.split(",")]
    results = {w: run(spec, cases, w, args.threads) for w in counts}

    base = len(cases) / results[counts[0]]["eval_s"]
    print(f"ROME on {args.model}, {len(cases)} CounterFact cases, {args.threads} thread(s) per worker\n")
    print("| workers | startup s (not counted) | eval s | cases/s | speed-up | edit s / case | eval s / case | eval share |")
    print("|---|---|---|---|---|---|---|---|")
    for w, res in results.items():
        rate = len(cases) / res["eval_s"]
        edit, ev = median_timing(res["records"], "edit_s"), median_timing(res["records"], "eval_s")
        print(f"| {w} | {res['startup_s']:.1f} | {res['eval_s']:.1f} | {rate:.3f} | {rate / base:.2f}× | "
              f"{edit:.2f} | {ev:.2f} | {ev / (edit + ev):.0%} |")


if __name__ == "__main__":
    main()
