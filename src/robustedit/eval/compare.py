"""``robustedit compare RUN_DIR...``: one table across finished runs, and a bar chart.

A run is any folder with a ``summary.json`` (``evaluate``, or a row of ``reproduce``). Columns are
the metrics the runs have (all of them, or ``metrics``), in the registry's order of meaning; each
column's best value is marked using the metric's direction. Runs are labelled by editor and
dataset, with the folder name added where two runs would get the same label.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from robustedit.errors import UserError
from robustedit.eval.metrics import METRICS


@dataclass(frozen=True)
class Run:
    label: str
    folder: Path
    summary: dict


def load_runs(folders: list[Path]) -> list[Run]:
    if not folders:
        raise UserError("give at least one run folder (a folder with a summary.json)")
    summaries = []
    for folder in folders:
        path = Path(folder) / "summary.json"
        if not path.is_file():
            raise UserError(f"{folder} has no summary.json: not a finished run of `robustedit evaluate`")
        try:
            summaries.append(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: invalid JSON ({e.msg})") from None
    labels = [f"{s.get('editor', '?')} · {s.get('dataset', '?')}" for s in summaries]
    clashes = {label for label in labels if labels.count(label) > 1}
    return [Run(f"{label} ({Path(f).name})" if label in clashes else label, Path(f), s)
            for label, f, s in zip(labels, folders, summaries)]


def metric_columns(runs: list[Run], wanted: list[str] | None = None) -> list[str]:
    present = {name for r in runs for name in r.summary.get("metrics", {})}
    if wanted:
        missing = [w for w in wanted if w not in present]
        if missing:
            raise UserError(f"no run has metric(s) {', '.join(missing)}; they have: {', '.join(sorted(present))}")
        return list(wanted)
    order = [n for n in METRICS.names() if n in present]
    return order + sorted(present - set(order))


def best_values(rows: list[dict], columns: list[str]) -> dict[str, float]:
    """The best value of each column among the rows of `comparison`, by the metric's direction."""
    best = {}
    for name in columns:
        values = [r["metrics"][name] for r in rows if r["metrics"].get(name) is not None]
        higher = METRICS.get(name).higher_is_better if name in METRICS else True
        if values:
            best[name] = max(values) if higher else min(values)
    return best


def comparison(runs: list[Run], columns: list[str]) -> dict:
    return {"columns": columns,
            "runs": [{"label": r.label, "folder": str(r.folder), "editor": r.summary.get("editor"),
                      "dataset": r.summary.get("dataset"), "model": r.summary.get("model"),
                      "n_cases": r.summary.get("n_cases"),
                      "metrics": {c: r.summary.get("metrics", {}).get(c) for c in columns},
                      "edit_s_median": r.summary.get("timing", {}).get("edit_s_median")} for r in runs]}


def comparison_markdown(table: dict) -> str:
    columns = table["columns"]
    best = best_values(table["runs"], columns)
    lines = ["| run | cases | " + " | ".join(columns) + " | edit s |", "|---|---|" + "---|" * (len(columns) + 1)]
    for r in table["runs"]:
        cells = []
        for c in columns:
            v = r["metrics"][c]
            marked = v == best.get(c) and len(table["runs"]) > 1
            cells.append("–" if v is None else (f"**{v:.3f}**" if marked else f"{v:.3f}"))
        t = r["edit_s_median"]
        lines.append(f"| {r['label']} | {r['n_cases']} | " + " | ".join(cells) + f" | {'–' if t is None else f'{t:.2f}'} |")
    return "\n".join(lines) + "\n"


def comparison_view(table: dict):
    """The table for a terminal: metrics as rows (runs are fewer), the best of each in bold."""
    from rich.table import Table

    runs, best = table["runs"], best_values(table["runs"], table["columns"])
    view = Table(title=f"{len(runs)} runs (best of each metric in bold)")
    view.add_column("metric", no_wrap=True)
    for r in runs:
        view.add_column(f"{r['label']}\n{r['n_cases']} cases", justify="right")
    for c in table["columns"]:
        cells = ["–" if (v := r["metrics"][c]) is None else (f"[bold]{v:.3f}[/bold]" if v == best.get(c) and len(runs) > 1
                 else f"{v:.3f}") for r in runs]
        view.add_row(c, *cells)
    return view


def plot_comparison(table: dict, path: Path) -> Path:
    from robustedit.output import figure, save_figure

    columns, runs = table["columns"], table["runs"]
    fig, ax = figure(max(6.0, 0.6 * len(columns) * max(1, len(runs)) ** 0.5 + 3), 4.5)
    width = 0.8 / max(1, len(runs))
    for i, r in enumerate(runs):
        ys = [r["metrics"][c] if r["metrics"][c] is not None else float("nan") for c in columns]
        ax.bar([x + i * width for x in range(len(columns))], ys, width, label=r["label"])
    ax.set_xticks([x + width * (len(runs) - 1) / 2 for x in range(len(columns))], columns, rotation=45, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("value (means over cases)")
    ax.legend(fontsize=7, ncol=max(1, min(3, len(runs))))
    return save_figure(fig, path)


def write_comparison(table: dict, out: Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    (out / "compare.md").write_text(comparison_markdown(table), encoding="utf-8")
    return [out / "compare.json", out / "compare.md", plot_comparison(table, out / "compare.png")]
