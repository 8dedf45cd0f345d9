"""Key-statistics throughput against its limit: a bare forward pass up to the same layer.

    python benchmarks/covariance_throughput.py --layer 4 --tokens 40960
"""

from __future__ import annotations

import argparse
import time

import torch

from robustedit.models.hooks import run_until
from robustedit.models.load import load_model
from robustedit.stats.corpus import token_windows
from robustedit.stats.covariance import StatsConfig, compute_second_moments


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--layer", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=40960)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    lm = load_model(args.model)
    cfg = StatsConfig(n_tokens=args.tokens)
    windows = token_windows(lm.tokenizer, cfg.corpus, cfg.n_tokens, cfg.seq_len)
    n = windows.numel()
    bare, stats = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            for s in range(0, len(windows), cfg.batch_size):
                run_until(lm.model, lm.down_proj(args.layer), input_ids=windows[s : s + cfg.batch_size], use_cache=False)
        bare.append(n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        compute_second_moments(lm, [args.layer], cfg, show_progress=False)  # includes tokenising
        stats.append(n / (time.perf_counter() - t0))
    b, s = max(bare), max(stats)
    print(f"layer {args.layer}, {n} tokens, {torch.get_num_threads()} threads")
    print(f"bare forward to layer {args.layer}: {b:,.0f} tokens/s")
    print(f"key statistics:            {s:,.0f} tokens/s ({s / b:.2f}x the bare forward)")


if __name__ == "__main__":
    main()
