"""Where does ROME + REP lose Success? Compare a REP row with its base row of one
``reproduce rep-table`` output: the cases whose edit prompt the base editor got right and the REP
row did not, and the adaptor's gate diagnostics (recorded with each edit) on those cases and on all.

    python benchmarks/rep_success_loss.py runs/rep-table-smollm2 --row rome+rep --base rome
"""

from __future__ import annotations

import argparse
from pathlib import Path
from statistics import fmean

from robustedit.eval.runner import read_records

FIELDS = ("anchor_gate_open_share", "context_gate_open_share", "gate_open_share")


def gate_means(records: list[dict]) -> dict[str, float]:
    """Mean of each gate diagnostic over the records' adapted layers."""
    layers = [fit for r in records for fit in r["edit"]["rep"].values()]
    return {f: fmean(fit[f] for fit in layers) for f in FIELDS}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("table", type=Path, help="a reproduce rep-table --out folder")
    ap.add_argument("--row", default="rome+rep")
    ap.add_argument("--base", default="rome")
    args = ap.parse_args()
    rep = {r["case_id"]: r for r in read_records(args.table / args.row / "records.jsonl")}
    base = {r["case_id"]: r for r in read_records(args.table / args.base / "records.jsonl")}
    lost = [rep[c] for c in rep if c in base
            and base[c]["metrics"]["efficacy_top1"] > rep[c]["metrics"]["efficacy_top1"]]
    for label, records in (("Success lost", lost), ("all cases", list(rep.values()))):
        if records:
            means = ", ".join(f"{k} {v:.3f}" for k, v in gate_means(records).items())
            print(f"{label} ({len(records)} cases): {means}")


if __name__ == "__main__":
    main()
