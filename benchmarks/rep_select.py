"""Which adaptor training settings should REP use on a small model? Compare them on ``rep-valid``,
the REP paper's validation file (the only one on which its hyperparameters may be chosen).

The paper trains with Adam, lr 5e-4, 10 steps on LLaMA2-7B. Whether that opens the gate past τ on
another model depends on the keys' scale and width, so this script edits each known case once
with ROME, trains an adaptor per setting on the same edit (``ROMEWithREP.adapt``), and prints per
setting the adaptor's diagnostics and the REP table's metrics, next to ROME alone.

    python benchmarks/rep_select.py --n 8 --configs "lr=5e-4,steps=10;lr=5e-3,steps=10;lr=5e-3,steps=30"

``--editor memit+rep`` does the same on MEMIT's edit (one fact per call, as the table edits), and
prints each adapted layer's gate diagnostics (``--per-layer``).

Each config is a ``;``-separated entry of ``,``-separated ``rep.*`` overrides. Results in
``runs/rep-select/results.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from statistics import fmean

import torch

from robustedit.data import load_cases
from robustedit.editors.base import Delta, applied
from robustedit.eval.filters import known_cases
from robustedit.eval.metrics import case_metrics, score_case
from robustedit.eval.robustness import RobustnessConfig, in_domain, robustness_probes
from robustedit.models.load import load_model
from robustedit.progress import progress
from robustedit.session import make_editor

METRICS = ["efficacy_top1", "locality_top1", "rephrase_subject_id", "shuffle_subject_id", "long_context_id",
           "rephrase_subject_ood", "shuffle_subject_ood", "long_context_ood"]
FIT = ["gate_mean", "gate_open_share", "similarity_before", "similarity_after"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--dataset", default="rep-valid")
    ap.add_argument("--configs", default="lr=5e-4,steps=10;lr=5e-3,steps=10;lr=5e-3,steps=30")
    ap.add_argument("--editor", default="rome+rep", choices=["rome+rep", "memit+rep"])
    ap.add_argument("--per-layer", action="store_true", help="print each adapted layer's gate diagnostics")
    ap.add_argument("--n", type=int, default=8, help="known cases to use (the first n)")
    ap.add_argument("--start", type=int, default=0, help="skip this many (known) cases first")
    ap.add_argument("--all-cases", action="store_true", help="keep cases the model does not know")
    ap.add_argument("--out", default="runs/rep-select")
    args = ap.parse_args()
    torch.manual_seed(0)
    lm = load_model(args.model)
    cases = load_cases(args.dataset)
    cases = (cases if args.all_cases else known_cases(lm, cases))[args.start: args.start + args.n]
    configs = {c: [f"rep.{kv}" for kv in c.split(",")] for c in args.configs.split(";") if c}
    editors = {c: make_editor(args.editor, lm, sets=sets)[0] for c, sets in configs.items()}
    rob = RobustnessConfig()
    alone = f"{args.editor.split('+')[0].upper()} alone"
    rows: dict[str, list[dict]] = {c: [] for c in [alone, *configs]}
    layer_fits: dict[str, dict[str, list[dict]]] = {c: {} for c in configs}
    any_editor = next(iter(editors.values()))
    for case in progress(cases, desc="cases"):
        probes = robustness_probes(case, lm.tokenizer, rob)
        request = dataclasses.replace(case.request, in_domain=in_domain(probes))
        pre = score_case(lm, case, probes)
        base = any_editor.base.edit([request])
        with applied(lm, Delta(base.weights)):
            rows[alone].append(case_metrics(pre, score_case(lm, case, probes)))
        for c, editor in editors.items():
            t = time.perf_counter()
            delta = editor.adapt(base, [request])
            seconds = time.perf_counter() - t
            with applied(lm, delta):
                m = case_metrics(pre, score_case(lm, case, probes))
            fits = delta.info["rep"]
            for layer, fit in fits.items():
                layer_fits[c].setdefault(layer, []).append(fit)
            fit = {k: fmean(f[k] for f in fits.values()) for k in FIT}  # over the adapted layers
            rows[c].append({**m, **fit, "adapt_s": seconds})
    results = {c: {k: fmean(r[k] for r in rs if k in r) for k in sorted({k for r in rs for k in r})}
               for c, rs in rows.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    per_layer = {c: {layer: {k: fmean(f[k] for f in fs) for k in FIT} for layer, fs in by_layer.items()}
                 for c, by_layer in layer_fits.items()}
    (out / "results.json").write_text(json.dumps({"n_cases": len(cases), "dataset": args.dataset, "start": args.start, "all_cases": args.all_cases,
                                                  "editor": args.editor, "results": results,
                                                  "per_layer": per_layer}, indent=2) + "\n")
    cols = METRICS + FIT + ["adapt_s"]
    kind = "cases" if args.all_cases else "known cases"
    print(f"{len(cases)} {kind} of {args.dataset} from position {args.start}; metrics in %")
    print("| setting | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for c, m in results.items():
        cells = [(f"{100 * m[k]:.1f}" if k in METRICS else f"{m[k]:.3g}") if k in m else "–" for k in cols]
        print(f"| {c} | " + " | ".join(cells) + " |")
    if args.per_layer:
        print("\nper adapted layer (means over cases)\n| setting | layer | " + " | ".join(FIT) + " |\n|---|---|"
              + "---|" * len(FIT))
        for c, by_layer in per_layer.items():
            for layer, m in by_layer.items():
                print(f"| {c} | {layer} | " + " | ".join(f"{m[k]:.3g}" for k in FIT) + " |")


if __name__ == "__main__":
    main()
