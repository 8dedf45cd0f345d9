"""Which null-space setting (AlphaEdit option of MEMIT) should ``reproduce sequential`` use? Run a short
sequential edit (batches of 10, no rollback) on held-out ``counterfact-val`` cases for each candidate
and print the metrics at the end, next to plain MEMIT's and the edit memory's.

The held-out slices are disjoint from the reproduction's (edits 0..999, probes 1000..1049): edits
start at ``--start`` (default 1100) and the ability probes are the 50 cases after them.

    python benchmarks/nullspace_select.py --n 100 \\
        --configs "l2=0.1;l2=1;threshold=0.2,l2=1"

Each config is a ``;``-separated entry of ``,``-separated ``nullspace.*`` overrides. Results land in
``runs/nullspace-select/<tag>/`` (a folder that already has a summary is reused, not rerun).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from robustedit.data import load_cases
from robustedit.eval.runner import RunInfo
from robustedit.eval.sequential import SequentialPlan, run_sequential
from robustedit.models.load import load_model
from robustedit.editors.settings import get_editor

COLUMNS = ["efficacy", "efficacy_top1", "paraphrase", "neighborhood", "locality_top1"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--configs", default="l2=0.1;l2=1;threshold=0.2,l2=1")
    ap.add_argument("--references", default="", help="also run these MEMIT variants: plain,memory")
    ap.add_argument("--start", type=int, default=1100)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--out", default="runs/nullspace-select")
    args = ap.parse_args()
    torch.manual_seed(0)
    lm = load_model(args.model)
    cases = load_cases("counterfact-val")
    edited, probes = cases[args.start : args.start + args.n], cases[args.start + args.n : args.start + args.n + 50]
    runs = {f"nullspace {c}": ["nullspace.enabled=true", *(f"nullspace.{kv}" for kv in c.split(","))]
            for c in args.configs.split(";") if c}
    refs = {"plain": [], "memory": ["edit_memory=true"]}
    runs.update({f"memit {r}": refs[r] for r in args.references.split(",") if r})
    rows = []
    for tag, sets in runs.items():
        folder = Path(args.out) / tag.replace(" ", "-").replace(",", "_").replace("=", "")
        if not (folder / "summary.json").exists():
            for leftover in folder.glob("*.jsonl"):
                leftover.unlink()
            editor = get_editor("memit", lm, sets=sets)
            cfg = editor.settings()
            info = RunInfo("memit", lm.name, "counterfact-val", cfg, command=f"benchmarks/nullspace_select.py {tag}")
            run_sequential(editor, edited, probes, folder, info, SequentialPlan(args.n, 10), save_edits=False)
        summary = json.loads((folder / "summary.json").read_text())
        last = summary["sequential"]["checkpoints"][-1]
        rows.append({"config": tag, **{c: last["metrics"].get(c) for c in COLUMNS},
                     "perplexity": last["perplexity"], "neighbor_agreement": last["neighbor_agreement"]})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nheld-out counterfact-val cases {args.start}..{args.start + args.n - 1}, after {args.n} edits:\n")
    head = ["config", *COLUMNS, "perplexity", "neighbor_agreement"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r["config"] if h == "config" else f"{r[h]:.3f}" for h in head) + " |")


if __name__ == "__main__":
    main()
