"""``robustedit analyze``: run one key analysis (``analysis/keys.py``) and write JSON + PNG."""

from __future__ import annotations

from pathlib import Path

from robustedit.analysis import key_plots, keys
from robustedit.data import Case
from robustedit.errors import UserError
from robustedit.output import write_json
from robustedit.data.perturb import RobustnessConfig

ANALYSES = ("similarity", "pca", "prefixes", "values")
ANALYSIS_EDITOR = "rome"  # the analyses read ROME's single edited layer, its C and its context templates


def run_analysis(what: str, editor, cases: list[Case], out: Path, *, command: str = "", case_index: int = 0,
                 n_tokens: int = 100_000, rob: RobustnessConfig | None = None) -> list[Path]:
    """Compute ``what`` for ``cases`` with the ROME ``editor`` (its layer, C and context templates)
    and write ``OUT/<what>.json`` and ``OUT/<what>.png``; returns the paths written."""
    if what not in ANALYSES:
        raise UserError(f"unknown analysis {what!r}; choose from {', '.join(ANALYSES)}")
    rob = rob or RobustnessConfig()
    if what == "similarity":
        result, plot = keys.similarity_distributions(editor, cases, rob), key_plots.plot_similarities
    elif what == "pca":
        if not 0 <= case_index < len(cases):
            raise UserError(f"--case-index {case_index} is out of range: {len(cases)} cases")
        result, plot = keys.perturbed_keys_pca(editor, cases[case_index], rob), key_plots.plot_pca
    elif what == "prefixes":
        result, plot = keys.nearest_prefixes(editor, cases, n_tokens=n_tokens), key_plots.plot_prefix_similarities
    else:
        result, plot = keys.value_norms(editor, cases), key_plots.plot_value_norms
    result["command"] = command
    out = Path(out)
    write_json(out / f"{what}.json", result, indent=1)
    return [out / f"{what}.json", plot(result, out / f"{what}.png")]
