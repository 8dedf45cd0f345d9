"""How large is the SSS term against the edit loss, per run? (the figures of issue 18's session 7)

For each ``records.jsonl`` of an ``ft-l+sss`` run: the medians over cases of the term's value at the
first step (``edit.sss.first``) and of the edit loss there (``edit.losses[0]``), and how many edits
converged. With ``--base`` (the plain FT-L run on the same cases), the paired difference of
reliability, generality and locality in points with its 95% bootstrap interval.

    python benchmarks/sss_term_scale.py runs/sss-table-smollm2/ft-l+sss/{zsre-knowedit,zsre-nq,counterfact}/records.jsonl
    python benchmarks/sss_term_scale.py runs/sss-table-gemma/ft-l+sss/counterfact/records.jsonl --base runs/sss-table-gemma/ft-l/counterfact/records.jsonl
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from robustedit.eval.intervals import paired_difference
from robustedit.eval.runner import read_records

METRICS = ("efficacy_acc", "paraphrase_acc", "locality_acc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+", type=Path, help="records.jsonl of ft-l+sss runs (an FT-L run: convergence only)")
    parser.add_argument("--base", type=Path, help="records.jsonl of the FT-L run to pair the first file with")
    args = parser.parse_args()
    for path in args.records:
        records = read_records(path)
        reported = [r["edit"]["convergence"]["converged"] for r in records if "convergence" in r["edit"]]
        scale = ""
        if all("sss" in r["edit"] for r in records):
            term = statistics.median(r["edit"]["sss"]["first"] for r in records)
            loss = statistics.median(r["edit"]["losses"][0] for r in records)
            scale = f", first-step term {term:.1f} vs edit loss {loss:.2f}"
        print(f"{path}: n {len(records)}{scale}, converged {sum(reported)} of {len(reported)} reporting it")
    if args.base:
        edited = {r["case_id"]: r["metrics"] for r in read_records(args.records[0])}
        base = {r["case_id"]: r["metrics"] for r in read_records(args.base)}
        for metric in METRICS:
            iv = paired_difference({c: m[metric] for c, m in edited.items()}, {c: m[metric] for c, m in base.items()})
            print(f"Δ {metric} (n {iv.n}): {100 * iv.mean:+.1f} [{100 * iv.low:+.1f}, {100 * iv.high:+.1f}]")


if __name__ == "__main__":
    main()
