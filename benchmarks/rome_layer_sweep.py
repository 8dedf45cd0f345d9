"""Which layer should ROME edit on a model? Evaluate each candidate on held-out CounterFact cases.

Uses cases [start, start + n) of the bundled CounterFact file (default 500..524), which are not
among the first 200 cases used for the headline evaluation, so the layer is not tuned on them.

    python benchmarks/rome_layer_sweep.py --layers 2,3,4,5,6,8 --n 16
    python benchmarks/rome_layer_sweep.py --layers 2,3,4 --n 16 --set update_key=prompt --out runs/sweep-prompt-key
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from robustedit.data import load_cases
from robustedit.eval.runner import RunInfo, run_evaluation
from robustedit.models.load import load_model
from robustedit.editors.settings import get_editor
from robustedit.stats.covariance import StatsConfig, second_moments

COLUMNS = ["efficacy", "paraphrase", "neighborhood", "efficacy_top1", "locality_top1"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--layers", default="2,3,4,5,6,8,10")
    ap.add_argument("--start", type=int, default=500)
    ap.add_argument("--n", type=int, default=25)
    ap.add_argument("--out", default="runs/rome-layer-sweep")
    ap.add_argument("--set", action="append", default=[], help="extra hyperparameter, key=value")
    args = ap.parse_args()
    torch.manual_seed(0)
    lm = load_model(args.model)
    layers = [int(x) for x in args.layers.split(",")]
    second_moments(lm, layers, StatsConfig())  # one pass over the corpus for every layer
    cases = load_cases("counterfact")[args.start : args.start + args.n]
    rows = []
    for layer in layers:
        editor = get_editor("rome", lm, sets=[*args.set, f"layer={layer}"])
        cfg = editor.settings()
        out = Path(args.out) / f"layer-{layer}"
        run = RunInfo("rome", lm.name, "counterfact", cfg, command=f"layer sweep, cases {args.start}..{args.start + args.n - 1}")
        summary = run_evaluation(editor, cases, out, run, resume=True)
        rows.append((layer, summary))
        print(json.dumps({"layer": layer, **summary["metrics"], "edit_s": summary["timing"]["edit_s_median"]}), flush=True)
    print("\n| layer | " + " | ".join(COLUMNS) + " | score | edit s |")
    print("|---|" + "---|" * (len(COLUMNS) + 2))
    for layer, s in rows:
        m = s["metrics"]
        score = 3 / sum(1 / max(m[c], 1e-9) for c in ("efficacy", "paraphrase", "neighborhood"))
        print(f"| {layer} | " + " | ".join(f"{m[c]:.3f}" for c in COLUMNS) + f" | {score:.3f} | {s['timing']['edit_s_median']:.1f} |")
    print("\nscore = harmonic mean of efficacy, paraphrase and neighborhood (the ROME paper's S)")


if __name__ == "__main__":
    main()
