"""Summarise the key analyses of ``robustedit analyze`` (similarity, values, prefixes JSON files in
one folder): the README's table of the share of an edit that reaches each kind of key.

    python benchmarks/rep_analysis_summary.py docs/results/rep-smollm2
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import median


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/analysis")
    sim = json.loads((folder / "similarity.json").read_text())
    print(f"similarity: {sim['n_cases']} cases, layer {sim['layer']}; share = kᵀC⁻¹k* / k*ᵀC⁻¹k*")
    for kind in ("prompt", "rephrase_subject", "shuffle_subject", "long_context", "random"):
        shares = [s / c["self"] for c in sim["cases"] for s in c.get(kind, [])]
        if shares:
            print(f"  {kind:17s} n={len(shares):4d}  median {median(shares):.2f}  "
                  f"share ≥ 0.5: {sum(x >= 0.5 for x in shares) / len(shares):.2f}")
    if (folder / "values.json").exists():
        rows = json.loads((folder / "values.json").read_text())["cases"]
        ratios = [r["v_star_norm"] / r["v0_norm"] for r in rows]
        print(f"values: ‖v*‖/‖v₀‖ median {median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}), {len(rows)} cases")
    if (folder / "prefixes.json").exists():
        pre = json.loads((folder / "prefixes.json").read_text())
        best = [(c["nearest"][0]["similarity"] / c["self"], c["subject"], c["nearest"][0]["prefix"])
                for c in pre["cases"] if c["nearest"]]
        print(f"prefixes: nearest unrelated prefix gets a median {median(b[0] for b in best):.2f} of the edit "
              f"({pre['n_tokens']} tokens); highest: {max(best)[1]!r} ← {max(best)[2][-40:]!r} {max(best)[0]:.2f}")


if __name__ == "__main__":
    main()
