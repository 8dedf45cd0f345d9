"""Result files: ``summary.json`` and the same as a Markdown table, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

from robustedit.eval.metrics import METRICS


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def summary_markdown(summary: dict) -> str:
    lines = [
        f"# {summary['editor']} on {summary['dataset']} ({summary['model']})",
        "",
        f"{summary['n_cases']} cases. Command: `{summary.get('command', '')}`",
        "",
        "| metric | value | meaning |",
        "|---|---|---|",
    ]
    for name, value in summary["metrics"].items():
        help_ = METRICS.get(name).help if name in METRICS else ""
        lines.append(f"| {name} | {value:.3f} | {help_} |")
    if summary.get("pre_edit"):
        lines += ["", f"Unedited model: true target top-1 on {summary['pre_edit']['true_top1']:.1%} of edit prompts."]
    lines += ["", "| timing | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in summary["timing"].items()]
    return "\n".join(lines) + "\n"


def write_summary(out_dir: Path, summary: dict) -> None:
    _atomic_write(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    _atomic_write(out_dir / "summary.md", summary_markdown(summary))
