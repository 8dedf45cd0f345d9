"""Which layers and λ (``mom2_update_weight``) should MEMIT use on a model? Edit a batch of held-out
CounterFact cases at once with each candidate and score every case on the edited model.

The target values z depend only on the last edited layer, so they are optimised once per last
layer and shared by every range and λ ending there. Cases [start, start + n) of the bundled file
(default 500..531) are not among the first 200 used for the headline evaluation.

    python benchmarks/memit_sweep.py --ranges 2-4,1-4,4-6,2-6,6-8,4-8 --lambdas 1500,5000,15000 --n 32
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from statistics import mean

import torch

from robustedit.data import load_cases
from robustedit.editors import applied
from robustedit.eval.metrics import case_metrics, score_case
from robustedit.models.load import load_model
from robustedit.progress import progress
from robustedit.editors.settings import get_editor
from robustedit.stats.covariance import StatsConfig, second_moments

COLUMNS = ["efficacy", "paraphrase", "neighborhood", "efficacy_top1", "locality_top1"]


def parse_range(text: str) -> tuple[int, ...]:
    lo, hi = (int(x) for x in text.split("-"))
    return tuple(range(lo, hi + 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--ranges", default="2-4,1-4,4-6,2-6,6-8,4-8")
    ap.add_argument("--lambdas", default="1500,5000,15000")
    ap.add_argument("--start", type=int, default=500)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--out", default="runs/memit-sweep.jsonl")
    args = ap.parse_args()
    torch.manual_seed(0)
    lm = load_model(args.model)
    ranges = [parse_range(r) for r in args.ranges.split(",")]
    lambdas = [float(x) for x in args.lambdas.split(",")]
    second_moments(lm, sorted({layer for r in ranges for layer in r}), StatsConfig())  # one corpus pass
    cases = load_cases("counterfact")[args.start : args.start + args.n]
    requests = [c.request for c in cases]
    pre = [score_case(lm, c) for c in progress(cases, desc="unedited scores")]

    by_last: dict[int, list[tuple[int, ...]]] = defaultdict(list)
    for r in ranges:
        by_last[r[-1]].append(r)
    rows = []
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for last, group in sorted(by_last.items()):
        values = None
        for layers in group:
            for lam in lambdas:
                editor = get_editor("memit", lm, sets=[f"layers={list(layers)}", f"mom2_update_weight={lam}"])
                if values is None:
                    t0 = time.perf_counter()
                    values = editor.target_values(requests)
                    value_s = time.perf_counter() - t0
                editor.target_values = lambda _requests, v=values: v  # same z for every range ending at `last`
                t0 = time.perf_counter()
                delta = editor.edit(requests)
                spread_s = time.perf_counter() - t0
                with applied(lm, delta):
                    post = [score_case(lm, c) for c in cases]
                per_case = [case_metrics(a, b) for a, b in zip(pre, post)]
                m = {k: mean(pc[k] for pc in per_case if k in pc) for k in COLUMNS}
                score = 3 / sum(1 / max(m[c], 1e-9) for c in ("efficacy", "paraphrase", "neighborhood"))
                row = {"layers": list(layers), "lambda": lam, **m, "score": score,
                       "value_s": value_s, "spread_s": spread_s, "n": len(cases)}
                rows.append(row)
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    print(f"\nbatch of {len(cases)} cases ({args.start}..{args.start + len(cases) - 1}), all edited at once")
    print("| layers | λ | " + " | ".join(COLUMNS) + " | score |")
    print("|---|---|" + "---|" * (len(COLUMNS) + 1))
    for row in rows:
        span = f"{row['layers'][0]}–{row['layers'][-1]}"
        print(f"| {span} | {row['lambda']:g} | " + " | ".join(f"{row[c]:.3f}" for c in COLUMNS) + f" | {row['score']:.3f} |")
    print("\nscore = harmonic mean of efficacy, paraphrase and neighborhood (the ROME paper's S)")


if __name__ == "__main__":
    main()
