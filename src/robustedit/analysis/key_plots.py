"""PNG figures of the key analyses (``analysis/keys.py``), drawn on an Agg canvas (no pyplot)."""

from __future__ import annotations

from pathlib import Path

from robustedit.output import figure, save_figure

KIND_LABELS = {"prompt": "bare edit prompt", "rephrase_subject": "rephrased subject",
               "shuffle_subject": "shuffled subject", "long_context": "long context", "random": "random tokens",
               "k*": "k* (inserted)"}
KIND_COLOURS = {"prompt": "black", "rephrase_subject": "tab:blue", "shuffle_subject": "tab:orange",
                "long_context": "tab:green", "random": "tab:gray", "k*": "tab:red"}


def plot_similarities(result: dict, path: Path) -> Path:
    """Overlaid histograms of kᵀC⁻¹k* per kind (REP paper Figure 3, left)."""
    import numpy as np

    fig, ax = figure()
    values = {k: v for k, v in result["similarities"].items() if v}
    everything = np.concatenate([np.asarray(v) for v in values.values()])
    bins = np.linspace(everything.min(), everything.max(), 50)
    for kind, v in values.items():
        ax.hist(v, bins=bins, histtype="step", linewidth=1.4, density=True,
                color=KIND_COLOURS.get(kind), label=f"{KIND_LABELS.get(kind, kind)} (n={len(v)})")
    selfs = [c["self"] for c in result["cases"]]
    ax.axvline(float(np.median(selfs)), color="tab:red", linestyle="--", linewidth=1, label="median k*ᵀC⁻¹k*")
    ax.set_xlabel("whitened similarity kᵀC⁻¹k* to the inserted key")
    ax.set_ylabel("density")
    ax.set_title(f"{result['model']}, layer {result['layer']}: keys of perturbed prompts ({result['n_cases']} cases)",
                 fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_pca(result: dict, path: Path) -> Path:
    """One subject's keys in their first two principal components (Figure 3, right)."""
    fig, ax = figure(5.5, 4.5)
    for kind in dict.fromkeys(p["kind"] for p in result["points"]):
        pts = [p for p in result["points"] if p["kind"] == kind]
        ax.scatter([p["x"] for p in pts], [p["y"] for p in pts], s=60 if kind == "k*" else 22,
                   marker="*" if kind == "k*" else "o", color=KIND_COLOURS.get(kind), label=KIND_LABELS.get(kind, kind))
    ev = result["explained_variance"]
    ax.set_xlabel(f"PC 1 ({100 * ev[0]:.0f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * ev[1]:.0f}%)")
    ax.set_title(f"keys of '{result['subject']}' (layer {result['layer']})", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_prefix_similarities(result: dict, path: Path) -> Path:
    """Distribution of the similarity of each subject's nearest unrelated prefixes (Figure 4, left)."""
    fig, ax = figure()
    ax.hist(result["similarities"], bins=40, color="tab:purple", alpha=0.8,
            label=f"top-{result['top']} unrelated prefixes per subject")
    ax.hist([c["self"] for c in result["cases"]], bins=40, histtype="step", color="tab:red", linewidth=1.4,
            label="k*ᵀC⁻¹k* of the subject itself")
    ax.set_xlabel("whitened similarity kᵀC⁻¹k*")
    ax.set_ylabel("count")
    ax.set_title(f"nearest unrelated prefixes in {result['n_tokens']} tokens of {result['corpus']} "
                 f"(layer {result['layer']})", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_value_norms(result: dict, path: Path) -> Path:
    """‖v₀‖ before and ‖v*‖ after the edit (Figure 5)."""
    fig, ax = figure()
    before = [c["v0_norm"] for c in result["cases"]]
    after = [c["v_star_norm"] for c in result["cases"]]
    ax.hist(before, bins=30, alpha=0.6, color="tab:blue", label="before edit ‖v₀‖")
    ax.hist(after, bins=30, alpha=0.6, color="tab:red", label="after edit ‖v*‖")
    ax.set_xlabel("L2 norm of the value at the subject's last token")
    ax.set_ylabel("cases")
    ax.set_title(f"values of ROME edits, {result['model']} layer {result['layer']}", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
