"""Where a ROME edit's time goes on this machine, and what it costs in memory.

Prints, per edit: context / key / value optimisation / update time, evaluation time, the cost of
the value steps alone (steps × one forward+backward of the rewriting batch, measured separately)
and the ratio edit / steps-alone; then the median, and the process's peak resident memory.

    python benchmarks/rome_edit_time.py --n 10
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from robustedit.data import load_cases
from robustedit.editors import applied
from robustedit.editors.values import rewrite_batch
from robustedit.eval.metrics import score_case
from robustedit.models.forward import logits_at
from robustedit.models.load import load_model
from robustedit.editors.settings import get_editor


def one_step_seconds(editor, request, repeats: int = 3) -> float:
    """One forward+backward of the rewriting batch through the edited layer (no optimiser)."""
    lm, cfg = editor.lm, editor.config
    templates = [c.format(request.prompt) for c in editor.context_templates()]
    rb = rewrite_batch(lm, [request], [templates], tuple(cfg.kl_prompts))
    module = lm.down_proj(cfg.layer)
    delta = torch.zeros(lm.d_model, requires_grad=True)
    handle = module.register_forward_hook(lambda m, a, o: torch.cat([o[:, :1] + delta, o[:, 1:]], 1))
    times = []
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            h = rb.forward.hidden()
            logits_at(lm, h, rb.target_rows, rb.target_cols).logsumexp(-1).sum().backward()
            times.append(time.perf_counter() - t0)
    finally:
        handle.remove()
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    torch.manual_seed(0)
    lm = load_model(args.model)
    editor = get_editor("rome", lm, sets=args.set)
    cfg = editor.settings()
    t0 = time.perf_counter()
    editor.prepare()
    print(f"prepare (statistics + context templates, cached after the first run): {time.perf_counter() - t0:.1f} s")
    print(f"threads: {torch.get_num_threads()}, layer {cfg['layer']}, {cfg['v_num_grad_steps']} max value steps")
    print("| case | steps | key s | value s | update s | edit s | eval s | steps-alone s | edit / steps-alone |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratios, edits = [], []
    for case in load_cases("counterfact", limit=args.n):
        t0 = time.perf_counter()
        delta = editor.edit([case.request])
        edit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        score_case(lm, case)
        with applied(lm, delta):
            score_case(lm, case)
        eval_s = time.perf_counter() - t0
        steps = delta.info["value_steps"]
        alone = steps * one_step_seconds(editor, case.request)
        tm = delta.info["timing"]
        ratios.append(edit_s / alone)
        edits.append(edit_s)
        print(f"| {case.case_id} | {steps} | {tm['key_s']:.2f} | {tm['value_s']:.2f} | {tm['update_s']:.2f} | "
              f"{edit_s:.2f} | {eval_s:.2f} | {alone:.2f} | {edit_s / alone:.2f} |", flush=True)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\nmedian edit {statistics.median(edits):.2f} s; median edit / steps-alone {statistics.median(ratios):.2f}; "
          f"peak memory {peak_gib:.2f} GiB")


if __name__ == "__main__":
    main()
