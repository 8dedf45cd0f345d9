"""How long causal tracing takes for one CounterFact fact on the real model, per state kind.

Target: every layer of SmolLM2 (30) for one fact in under a minute on 2 CPU cores. Prints the
prompt, clean / corrupted P(answer), seconds per kind (setup = clean + corrupted runs; restore =
the batched restorations), the threads used and the peak resident memory; writes the JSON and
PNG heatmaps to ``--out``.

    python benchmarks/trace_time.py --case 0 --out results/trace
    python benchmarks/trace_time.py --noise-from subjects --answer true --kinds mlp
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from robustedit.analysis import embedding_std, trace, write_trace
from robustedit.data import load_cases
from robustedit.models.load import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--case", type=int, default=0, help="index of the CounterFact case to trace")
    ap.add_argument("--kinds", nargs="+", default=["all", "mlp", "attn"])
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--noise-factor", type=float, default=3.0)
    ap.add_argument("--noise-from", choices=["corpus", "subjects"], default="corpus",
                    help="embedding std over the Wikipedia sample, or over the subjects of the first "
                         "1000 CounterFact cases (the reference's recipe)")
    ap.add_argument("--answer", choices=["top1", "true"], default="top1",
                    help="trace the clean top-1 token, or the first token of the case's true target")
    ap.add_argument("--max-rows", type=int, default=256)
    ap.add_argument("--out", default="results/trace_time")
    args = ap.parse_args()

    t0 = time.perf_counter()
    lm = load_model(args.model)
    print(f"load {time.perf_counter() - t0:.1f} s; {lm.n_layers} layers; threads {torch.get_num_threads()}")
    case = load_cases("counterfact", limit=args.case + 1)[args.case]
    req = case.request
    t0 = time.perf_counter()
    if args.noise_from == "subjects":
        noise_std = embedding_std(lm, [c.request.subject for c in load_cases("counterfact", limit=1000)])
    else:
        noise_std = embedding_std(lm)
    print(f"embedding std {noise_std:.4f} ({args.noise_from}, {time.perf_counter() - t0:.2f} s)")
    answer = req.target_true if args.answer == "true" else None

    print(f"\ncase {case.case_id}: {req.prompt.format(req.subject)!r}, subject {req.subject!r}")
    print("| kind | window | tokens traced | setup s | restore s | total s |")
    print("|---|---|---|---|---|---|")
    results, total = [], 0.0
    for kind in args.kinds:
        r = trace(lm, req.prompt, req.subject, answer=answer, kinds=[kind], samples=args.samples,
                  noise_factor=args.noise_factor, noise_std=noise_std, max_rows=args.max_rows)
        results.append(r)
        total += r.timing["total_s"]
        traced = len(r.tokens) - r.subject_range[0]
        print(f"| {kind} | {r.windows[kind]} | {traced} of {len(r.tokens)} | {r.timing['setup_s']:.2f} | "
              f"{r.timing['restore_s']:.2f} | {r.timing['total_s']:.2f} |", flush=True)
    r = results[0]
    print(f"\nanswer {r.answer!r}: clean p {r.clean_prob:.4f}, corrupted p {r.corrupted_prob:.4f}")
    for res in results:
        kind = next(iter(res.scores))
        best = res.scores[kind].flatten().argmax()
        layer, tok = divmod(int(best), len(res.tokens))
        print(f"  {kind}: max p {float(res.scores[kind].max()):.4f} at layer {layer}, token {tok} {res.tokens[tok]!r}")
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\nall kinds {total:.1f} s; peak memory {peak_gib:.2f} GiB")
    merged = results[0]
    for res in results[1:]:
        merged.scores.update(res.scores)
        merged.windows.update(res.windows)
    merged.timing = {"total_s": total}
    for path in write_trace(merged, args.out, stem=f"counterfact_{case.case_id}"):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
