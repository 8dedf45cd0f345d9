"""Time to evaluate one case beyond its edit, and what prefix-tree packing saves.

For the first N cases of a dataset: the number of scored sequences, their tokens padded (the old
batches), real, and as prefix trees; the time of one scoring pass packed and padded (median over
cases, after a warm-up); and, with ROME's edit in between, the evaluation time beyond the edit
(``timing.eval_s``: scoring before and after) and, with --generation, generation's time.

    python benchmarks/eval_case_time.py --limit 10
    python benchmarks/eval_case_time.py --limit 5 --generation --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from robustedit.data import load_cases
from robustedit.eval import scoring
from robustedit.eval.groups import score_items
from robustedit.eval.runner import EvalOptions, LocalEvaluator
from robustedit.models.load import load_model
from robustedit.models.packing import pack
from robustedit.models.text import encode, target_ids
from robustedit.editors.settings import get_editor


def sequences(lm, case) -> list[tuple[int, ...]]:
    tok = lm.tokenizer
    return sorted({tuple(encode(tok, p) + target_ids(tok, p, t)[:-1])
                   for pairs in score_items(case).values() for p, t in pairs}, key=len)


def pass_time(lm, pairs, packed: bool) -> float:
    original = scoring.can_pack
    if not packed:
        scoring.can_pack = lambda lm, seqs: False
    try:
        t0 = time.perf_counter()
        scoring.score_pairs(lm, pairs)
        return time.perf_counter() - t0
    finally:
        scoring.can_pack = original


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="counterfact")
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--generation", action="store_true", help="also generate and score text (ROME's fluency, consistency)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model()
    cases = load_cases(args.dataset, limit=args.limit)
    seqs = [sequences(lm, c) for c in cases]
    padded = [sum(len(b) * len(b[-1]) for b in scoring.length_batches(s, 64, 4096)) for s in seqs]
    trees = [sum(len(r) for r in pack(s, 512)) for s in seqs]
    print(f"{args.dataset}, {len(cases)} cases, {torch.get_num_threads()} threads")
    print(f"sequences per case (median): {statistics.median(map(len, seqs))}; tokens padded / real / prefix tree: "
          f"{statistics.median(padded)} / {statistics.median(sum(map(len, s)) for s in seqs)} / {statistics.median(trees)}")
    pairs = [[p for v in score_items(c).values() for p in v] for c in cases]
    pass_time(lm, pairs[0], True)  # warm-up
    for packed in (True, False):
        times = [pass_time(lm, p, packed) for p in pairs]
        print(f"one scoring pass, {'packed' if packed else 'padded'}: median {statistics.median(times):.3f} s")
    editor = get_editor("rome", lm)
    evaluator = LocalEvaluator(editor, EvalOptions(generation=None))
    if args.generation:
        from robustedit.eval.generation import GenerationConfig

        evaluator = LocalEvaluator(editor, EvalOptions(generation=GenerationConfig()))
    evaluator.prepare()
    records = list(evaluator.records(cases))
    for phase in ("edit_s", "eval_s", "generation_s"):
        values = [r["timing"][phase] for r in records if phase in r["timing"]]
        if values:
            print(f"{phase}: median {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f})")


if __name__ == "__main__":
    main()
