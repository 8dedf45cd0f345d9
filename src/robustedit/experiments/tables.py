"""What the experiments' tables share: each cell a mean over cases with its 95% bootstrap
interval, and each variant row's paired difference from the row it is compared with."""

from __future__ import annotations

from typing import Callable

from robustedit.eval.intervals import bootstrap_mean, paired_difference, per_case


def row_statistics(records: dict[str, list[dict]], metrics: list[str],
                   base_of: Callable[[str], str | None]) -> dict[str, dict]:
    """Per row: ``intervals`` (each metric's mean and interval) and, when ``base_of(row)`` names a
    row in ``records``, ``differences`` (the paired difference row − base on the cases both
    scored) and ``compared_with``."""
    out = {}
    for row, recs in records.items():
        stats: dict = {"intervals": {}, "differences": {}}
        base = base_of(row)
        for metric in metrics:
            values = per_case(recs, metric)
            iv = bootstrap_mean(values.values())
            if iv is not None:
                stats["intervals"][metric] = iv.as_dict()
            if base in records:
                d = paired_difference(values, per_case(records[base], metric))
                if d is not None:
                    stats["differences"][metric] = d.as_dict()
        if base in records:
            stats["compared_with"] = base
        out[row] = stats
    return out


def cell(entry: dict | None, signed: bool = False) -> str:
    """"85.0 [78.1, 91.2]" for a share's interval (in %), "–" for none."""
    if entry is None:
        return "–"
    sign = "+" if signed else ""
    return f"{100 * entry['mean']:{sign}.1f} [{100 * entry['low']:{sign}.1f}, {100 * entry['high']:{sign}.1f}]"


def difference_lines(stats: dict[str, dict], columns: list[tuple[str, str]]) -> list[str]:
    """Markdown lines of the paired-difference table (empty if no row has a base)."""
    diffs = {row: s for row, s in stats.items() if s.get("differences")}
    if not diffs:
        return []
    lines = ["", "Paired differences from the base editor, in points, on the cases both rows scored "
             "[95% bootstrap interval of the mean difference]:", "",
             "| editor − base | cases | " + " | ".join(c for c, _ in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for row, s in diffs.items():
        n = max(d["n"] for d in s["differences"].values())
        lines.append(f"| {row} − {s['compared_with']} | {n} | "
                     + " | ".join(cell(s["differences"].get(k), signed=True) for _, k in columns) + " |")
    return lines
