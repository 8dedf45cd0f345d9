"""Causal-trace result files: JSON (machine-readable) and one PNG heatmap per kind (Figure 1 of
Meng et al. 2022: tokens down, layers across, subject tokens starred, colour = P(answer)).

Figures are drawn on an Agg canvas without pyplot, so nothing global (backend, current figure)
changes and no window can open.
"""

from __future__ import annotations

import json
from pathlib import Path

from robustedit.analysis.tracing import TraceResult
from robustedit.output import atomic_write, figure, save_figure

CMAPS = {"all": "Purples", "mlp": "Greens", "attn": "Reds"}
TITLES = {"all": "single restored layer", "mlp": "MLP", "attn": "Attn"}


def _dumps(d: dict) -> str:
    """JSON with one line per heatmap row (a layer) instead of one line per number."""
    head = json.dumps({k: v for k, v in d.items() if k != "scores"}, indent=1, ensure_ascii=False)
    kinds = [f'  {json.dumps(kind)}: [\n' + ",\n".join("   " + json.dumps(row) for row in rows) + "\n  ]"
             for kind, rows in d["scores"].items()]
    return head[: -len("\n}")] + ',\n "scores": {\n' + ",\n".join(kinds) + "\n }\n}\n"


def write_json(result: TraceResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, _dumps(result.to_dict()))
    return path


def read_json(path: str | Path) -> TraceResult:
    return TraceResult.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def token_labels(result: TraceResult) -> list[str]:
    """Token strings for the y axis, subject tokens marked with ``*`` as in the paper."""
    s0, s1 = result.subject_range
    labels = [repr(t)[1:-1] for t in result.tokens]  # newlines and tabs stay visible
    return [f"{lab}*" if s0 <= i < s1 else lab for i, lab in enumerate(labels)]


def plot_heatmap(result: TraceResult, kind: str, path: str | Path) -> Path:
    """PNG heatmap of ``result.scores[kind]``: tokens down, layers across."""
    scores = result.scores[kind].float().numpy().T  # (n_tokens, n_layers)
    n_tokens, n_layers = scores.shape
    fig, ax = figure(max(4.5, 2.5 + 0.12 * n_layers), 1.2 + 0.2 * n_tokens)
    vmin = min(result.corrupted_prob, float(scores.min()))
    mesh = ax.pcolormesh(scores, cmap=CMAPS.get(kind, "viridis"), vmin=vmin)
    ax.invert_yaxis()
    ax.set_yticks([0.5 + i for i in range(n_tokens)])
    ax.set_yticklabels(token_labels(result), fontsize=7)
    step = max(1, n_layers // 10)
    ax.set_xticks([0.5 + i for i in range(0, n_layers, step)])
    ax.set_xticklabels([str(i) for i in range(0, n_layers, step)], fontsize=7)
    window = result.windows.get(kind, 1)
    if kind == "all":
        ax.set_title("Impact of restoring state after corrupted input", fontsize=8)
        ax.set_xlabel(f"single restored layer within {result.model}", fontsize=8)
    else:
        ax.set_title(f"Impact of restoring {TITLES.get(kind, kind)} after corrupted input", fontsize=8)
        ax.set_xlabel(f"center of interval of {window} restored {TITLES.get(kind, kind)} layers", fontsize=8)
    bar = fig.colorbar(mesh, ax=ax)
    bar.ax.tick_params(labelsize=7)
    bar.set_label(f"p({result.answer.strip()!r}) with the state restored", fontsize=7)
    return save_figure(fig, Path(path))


def write_trace(result: TraceResult, out_dir: str | Path, stem: str = "trace") -> list[Path]:
    """``<stem>.json`` and ``<stem>_<kind>.png`` for every kind of ``result`` in ``out_dir``."""
    out_dir = Path(out_dir)
    paths = [write_json(result, out_dir / f"{stem}.json")]
    paths += [plot_heatmap(result, kind, out_dir / f"{stem}_{kind}.png") for kind in result.scores]
    return paths
