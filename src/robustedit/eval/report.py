"""Result files: ``summary.json`` and the same as a Markdown table, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

from robustedit.eval.metrics import METRICS
from robustedit.output import atomic_write, figure, save_figure


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
    if "edits_not_taken" in summary:
        lines += ["", f"{summary['edits_not_taken']} of {summary['n_cases']} edits did not take (the new target is "
                  "not the top-1 prediction on the edit prompt afterwards; `efficacy_top1` of each record)."]
    if "edits_not_converged" in summary:
        lines += ["", f"{summary['edits_not_converged']} of {summary['n_cases']} edits did not converge (the optimisation "
                  "ended with the new target below half its probability; `edit.convergence` of each record)."]
    env = summary.get("environment", {})
    if env:
        lines += ["", "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items() if v is not None) + "."]
    if summary.get("pre_edit"):
        lines += ["", f"Unedited model: true target top-1 on {summary['pre_edit']['true_top1']:.1%} of edit prompts."]
    if summary.get("sequential"):
        seq = summary["sequential"]
        lines += ["", f"Sequential: {seq['n']} edits, {seq['batch_size']} per call, never rolled back; "
                  "metrics over the facts edited so far at each checkpoint:", "", sequential_markdown(seq["checkpoints"])]
    lines += ["", "| timing | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in summary["timing"].items()]
    return "\n".join(lines) + "\n"


def write_summary(out_dir: Path, summary: dict) -> None:
    atomic_write(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write(out_dir / "summary.md", summary_markdown(summary))


SEQUENTIAL_PANELS = ("efficacy", "paraphrase", "neighborhood", "efficacy_top1", "perplexity", "neighbor_agreement")


def sequential_markdown(points: list[dict]) -> str:
    """One row per checkpoint: the metrics over the facts edited so far and the ability probe."""
    names = sorted({k for p in points for k in p["metrics"]})
    lines = ["| edits | " + " | ".join(names) + " | perplexity | neighbor_agreement |",
             "|---|" + "---|" * (len(names) + 2)]
    for p in points:
        cells = [f"{p['metrics'][k]:.3f}" if k in p["metrics"] else "" for k in names]
        agree = f"{p['neighbor_agreement']:.3f}" if "neighbor_agreement" in p else "–"
        lines.append(f"| {p['n_edits']} | " + " | ".join(cells) + f" | {p['perplexity']:.2f} | {agree} |")
    if any("neighbor_agreement" not in p for p in points):
        lines += ["", "–: no probe case was left (every case was edited), so neighbour agreement was not measured."]
    return "\n".join(lines) + "\n"


def write_sequential_plot(path: Path, runs: dict[str, list[dict]]) -> Path:
    """Metrics against the number of edits (log scale; perplexity too), one line per run; the unedited model's
    perplexity and agreement (n = 0) are the dotted lines."""
    fig, axes = figure(13, 7, rows=2, cols=3)
    for ax, name in zip(axes.flat, SEQUENTIAL_PANELS):
        for label, points in runs.items():
            edited = [p for p in points if p["n_edits"] > 0]
            xs = [p["n_edits"] for p in edited]
            ys = [p.get(name, p["metrics"].get(name, float("nan"))) for p in edited]  # nan: not measured
            line = ax.plot(xs, ys, marker="o", label=label)[0]
            if name in points[0]:  # the unedited model's value
                ax.axhline(points[0][name], color=line.get_color(), linestyle=":", linewidth=1)
        ax.set_xscale("log")
        if name == "perplexity":  # a collapsed model's perplexity is orders of magnitude off
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("sequential edits")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    return save_figure(fig, path)
