"""Which FT-L settings should a model use? Evaluate each candidate on held-out zsRE training edits.

EasyEdit's FT-L settings differ by model (an L∞ clamp of 5e-4 for GPT-2 XL, none for Llama); this
script scores candidates on cases of ``zsre-train`` (MEND's training split, never a test file), in
the SSS paper's terms: reliability, generality and locality as token accuracy.

    python benchmarks/ftl_select.py --n 20 --configs "norm_constraint=5e-4;norm_constraint=5e-3;norm_constraint=0"
    python benchmarks/ftl_select.py --editor ft-l+sss --n 20 --configs "norm_constraint=0"

Each config is a ``;``-separated entry of ``,``-separated overrides. Results in ``--out``/<config>/.
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

COLUMNS = ["efficacy_acc", "paraphrase_acc", "locality_acc", "efficacy_top1", "locality_top1"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--editor", default="ft-l")
    ap.add_argument("--dataset", default="zsre-train")
    ap.add_argument("--configs", default="norm_constraint=5e-4;norm_constraint=5e-3;norm_constraint=0")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--out", default="runs/ftl-select")
    args = ap.parse_args()
    torch.manual_seed(0)
    lm = load_model(args.model)
    cases = load_cases(args.dataset)[args.start: args.start + args.n]
    rows = []
    for config in [c for c in args.configs.split(";") if c]:
        sets = config.split(",")
        editor = get_editor(args.editor, lm, sets=sets)
        cfg = editor.settings()
        out = Path(args.out) / f"{args.editor}-{config.replace('=', '-').replace(',', '_')}"
        run = RunInfo(args.editor, lm.name, args.dataset, cfg,
                      command=f"ftl_select {config}, cases {args.start}..{args.start + args.n - 1}")
        summary = run_evaluation(editor, cases, out, run, resume=True)
        rows.append((config, summary))
        print(json.dumps({"config": config, **summary["metrics"], "edit_s": summary["timing"]["edit_s_median"]}),
              flush=True)
    print(f"\n{args.editor} on {args.dataset} cases {args.start}..{args.start + args.n - 1}")
    print("| setting | " + " | ".join(COLUMNS) + " | edit s |\n|---|" + "---|" * (len(COLUMNS) + 1))
    for config, s in rows:
        m = s["metrics"]
        print(f"| {config} | " + " | ".join(f"{m[c]:.3f}" if c in m else "–" for c in COLUMNS)
              + f" | {s['timing']['edit_s_median']:.1f} |")


if __name__ == "__main__":
    main()
