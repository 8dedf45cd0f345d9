"""Which layers carry facts in a model? Average causal-tracing effects over many known facts.

For each of the first facts of the bundled CounterFact file that the model knows (its greedy next
token is the first token of the true object), trace MLP (and attention) restorations and read the
average indirect effect AIE = P(answer | corrupted, state restored) − P(answer | corrupted) at the
subject's last token, per layer, as in the ROME paper's Fig. 2 / the MEMIT paper's §4 layer choice.
Writes ``OUT/trace_layers.json`` and ``OUT/trace_layers.png``; prints the per-layer table.

    python benchmarks/trace_layers.py --n 20 --kinds mlp,attn --out docs/results/trace-layers
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from robustedit.analysis import embedding_std, trace
from robustedit.data import load_cases
from robustedit.eval.ability import next_tokens
from robustedit.models.load import load_model
from robustedit.models.text import target_ids


def known(lm, case) -> bool:
    r = case.request
    first = target_ids(lm.tokenizer, r.text, r.target_true)[0]
    return next_tokens(lm, [r.text])[0] == first


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n", type=int, default=20, help="known facts to trace")
    ap.add_argument("--kinds", default="mlp,attn")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--out", default="runs/trace-layers")
    args = ap.parse_args()
    lm = load_model(args.model)
    kinds = args.kinds.split(",")
    noise_std = embedding_std(lm)
    effects = {k: [] for k in kinds}  # per fact: (n_layers,) AIE at the subject's last token
    last_token = {k: [] for k in kinds}  # and at the prompt's last token, for contrast
    traced = []
    t0 = time.perf_counter()
    for case in load_cases("counterfact"):
        if len(traced) >= args.n:
            break
        if not known(lm, case):
            continue
        r = case.request
        res = trace(lm, r.prompt, r.subject, answer=r.target_true, kinds=kinds, samples=args.samples, noise_std=noise_std)
        s_last = res.subject_range[1] - 1
        for k in kinds:
            effects[k].append((res.scores[k][:, s_last] - res.corrupted_prob).tolist())
            last_token[k].append((res.scores[k][:, -1] - res.corrupted_prob).tolist())
        traced.append({"case_id": case.case_id, "prompt": r.text, "clean": res.clean_prob, "corrupted": res.corrupted_prob})
        print(f"case {case.case_id}: clean {res.clean_prob:.3f}, corrupted {res.corrupted_prob:.3f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    mean = {k: torch.tensor(v).mean(0).tolist() for k, v in effects.items()}
    mean_last = {k: torch.tensor(v).mean(0).tolist() for k, v in last_token.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "trace_layers.json").write_text(json.dumps({
        "model": lm.name, "facts": traced, "aie_subject_last": mean, "aie_prompt_last": mean_last,
        "samples": args.samples, "command": "python benchmarks/trace_layers.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())}, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), constrained_layout=True)
    for k in kinds:
        ax.plot(mean[k], marker="o", label=f"{k}, subject's last token")
        ax.plot(mean_last[k], linestyle="--", label=f"{k}, prompt's last token")
    ax.set_xlabel("layer (centre of the restored window)")
    ax.set_ylabel("average indirect effect on P(true object)")
    ax.set_title(f"Causal tracing, {len(traced)} known CounterFact facts ({lm.name})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(out / "trace_layers.png", dpi=110)
    print("\n| layer | " + " | ".join(f"{k} AIE (subject last) | {k} AIE (prompt last)" for k in kinds) + " |")
    print("|---|" + "---|---|" * len(kinds))
    for layer in range(lm.n_layers):
        print(f"| {layer} | " + " | ".join(f"{mean[k][layer]:.3f} | {mean_last[k][layer]:.3f}" for k in kinds) + " |")
    print(f"\n{len(traced)} facts in {time.perf_counter() - t0:.0f} s; wrote {out}/trace_layers.json and .png")


if __name__ == "__main__":
    main()
