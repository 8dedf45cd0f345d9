"""Where does a trained REP gate open, and how large is the adapted key? The figures behind the
README's "With the paper's settings the gate never opens" paragraph.

For the first ``--n`` known ``rep-valid`` cases and each ``--set`` group, prints (1) the gate at every
token of the bare edit prompt and (2) per probe kind: mean gate, share ≥ τ, the share of the edit a key
receives, kᵀC⁻¹k* / k*ᵀC⁻¹k*, before → after the adaptor, and ‖k̂ − k‖/‖k‖.

    python benchmarks/rep_gate_diagnostics.py --n 3 "rep.lr=5e-3" "rep.lr=5e-3 rep.absolute=false"
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from robustedit.data import load_cases
from robustedit.editors.keys import at_subjects
from robustedit.editors.rep import whitened_targets
from robustedit.eval.filters import known_cases
from robustedit.data.perturb import RobustnessConfig, in_domain, robustness_probes
from robustedit.models.hooks import capture_input
from robustedit.models.load import load_model
from robustedit.models.text import encode
from robustedit.editors.settings import get_editor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("settings", nargs="+", help="space-separated rep.* overrides, one argument per setting")
    ap.add_argument("--n", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    lm = load_model("smollm2")
    cases = known_cases(lm, load_cases("rep-valid"))[: args.n]
    editors = {s: get_editor("rome+rep", lm, sets=s.split()) for s in args.settings}
    first = next(iter(editors.values()))
    layer = first.config.layer
    module, C = lm.down_proj(layer), first.covariance(layer)
    for case in cases:
        probes = robustness_probes(case, lm.tokenizer, RobustnessConfig())
        request = dataclasses.replace(case.request, in_domain=in_domain(probes))
        base = first.base.edit([request])
        k_star = base.keys[lm.down_proj_weight_name(layer)].T.float()[0]
        goal = whitened_targets(C, k_star[None])[0]
        self_sim = float(k_star @ goal)
        groups = {"bare": [(request.prompt, request.subject)]}
        groups.update({f"{kind}_{split}": [(p.template, p.subject) for p in ps]
                       for kind, splits in probes.items() for split, ps in splits.items() if ps})
        keys = {g: at_subjects(lm, module, v, output=False).float() for g, v in groups.items()}
        ids = torch.tensor([encode(lm.tokenizer, request.text)], device=lm.device)
        with torch.no_grad(), capture_input(module) as seen:
            lm.model(ids)
        tokens = [lm.tokenizer.decode([i]) for i in ids[0]]
        print(f"case {case.case_id} {request.subject!r}: k*ᵀC⁻¹k* = {self_sim:.1f}")
        for setting, editor in editors.items():
            adaptor = next(iter(editor.adapt(base, [request]).adaptors.values()))
            with torch.no_grad():
                gates = adaptor.gate_prob(seen[0][0])[:, 0].tolist()
                print(f"  {setting}\n    gate per token: " + " ".join(f"{t!r}:{g:.2f}" for t, g in zip(tokens, gates)))
                for g, k in keys.items():
                    gate, k_hat = adaptor.gate_prob(k)[:, 0], adaptor(k)
                    grown = ((k_hat - k).norm(dim=-1) / k.norm(dim=-1)).mean()
                    print(f"    {g}: gate {gate.mean():.2f}, ≥τ {(gate >= adaptor.tau).float().mean():.2f}, "
                          f"share of the edit {(k @ goal).mean() / self_sim:.2f} → {(k_hat @ goal).mean() / self_sim:.2f}, "
                          f"‖k̂−k‖/‖k‖ {grown:.2f}")


if __name__ == "__main__":
    main()
