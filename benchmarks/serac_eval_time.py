"""SERAC's evaluation time per case, and whether its records match an earlier run's.

SERAC's scoring runs the base model, then its scope classifier (an encoder forward) and the
counterfactual model on every in-scope row; this times the whole evaluation of a case after its
edit (``timing.eval_s`` of the records: scoring before and after) over the first N cases, and with
``--records`` checks that every token accuracy equals that of an earlier run's ``records.jsonl``
(e.g. the SSS table's SERAC row) on the same cases.

    python benchmarks/serac_eval_time.py --n 20 --records runs/sss-table-smollm2/serac/zsre-knowedit/records.jsonl
    python benchmarks/serac_eval_time.py --n 12 --profile   # where a case's time goes (cProfile, cumulative)
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
from pathlib import Path

import torch

from robustedit.data import load_cases
from robustedit.editors.settings import get_editor
from robustedit.eval.runner import LocalEvaluator, read_records
from robustedit.models.load import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--editor", default="serac")
    parser.add_argument("--dataset", default="zsre-knowedit")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--records", help="an earlier run's records.jsonl to compare the token accuracies with")
    parser.add_argument("--profile", action="store_true", help="print the cProfile functions by cumulative time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model("smollm2")
    evaluator = LocalEvaluator(get_editor(args.editor, lm))
    evaluator.prepare()
    cases = load_cases(args.dataset)[: args.n]
    profiler = cProfile.Profile()
    if args.profile:
        profiler.enable()
    records = list(evaluator.records(cases))
    if args.profile:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(r"serac\.py|scoring\.py|memory\.py", 15)
    times = [r["timing"]["eval_s"] for r in records[1:]]  # the first case warms up
    print(f"{args.editor} on {args.dataset}: evaluation per case (median of {len(times)}): {statistics.median(times):.3f} s")
    if args.records:
        earlier = {r["case_id"]: r["metrics"] for r in read_records(Path(args.records))}
        keys = ("efficacy_acc", "paraphrase_acc", "locality_acc")
        pairs = [(r["metrics"], earlier[r["case_id"]]) for r in records if r["case_id"] in earlier]
        worst = max((abs(a[k] - b[k]) for a, b in pairs for k in keys if k in a and k in b), default=float("nan"))
        print(f"compared with {len(pairs)} earlier records: largest difference in {', '.join(keys)}: {worst:.2e}")


if __name__ == "__main__":
    main()
