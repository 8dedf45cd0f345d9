"""Why edits fail to generalise: the key analyses of the REP paper (§4–5.2, Figures 3–5).

A ROME edit answers a key k in proportion to its whitened similarity kᵀC⁻¹k* with the inserted
key k* (the update is Λ (C⁻¹k*)ᵀ / (k*ᵀC⁻¹k*)). So an edit reaches a perturbed prompt exactly as
far as that prompt's subject key resembles k*. Each analysis here is a pure computation returning
a JSON-ready dict; ``analysis/key_plots.py`` draws them.

- ``similarity_distributions``: kᵀC⁻¹k* for the keys of each case's robustness probes (rephrased
  subject, shuffled subject, long context), of its bare edit prompt, and of random tokens of
  unrelated text (the baseline), at the ROME layer (Figure 3, left).
- ``perturbed_keys_pca``: a 2-D PCA of one subject's keys under every perturbation (Figure 3, right).
- ``nearest_prefixes``: over a slice of WikiText, the ten token positions whose keys are most
  similar to each subject's k*, excluding positions whose recent prefix contains the subject's last
  token (the paper's "similar but non-related keys", Figure 4).
- ``value_norms``: ‖v₀‖ = ‖W k*‖ before and ‖v*‖ after ROME's value optimisation (Figure 5, "loud
  voices"): the edited value must be large to move distant keys.
"""

from __future__ import annotations

import torch

from robustedit.data import Case
from robustedit.editors.keys import at_subjects, corpus_keys
from robustedit.editors.rep import whitened_targets
from robustedit.data.perturb import RobustnessConfig, probes_of_case
from robustedit.models.hooks import run_until
from robustedit.models.text import encode
from robustedit.progress import progress
from robustedit.stats.corpus import token_windows

PREFIX_TOKENS = 12  # tokens of context shown for a nearest prefix (and searched for the subject)


def inserted_key(editor, case: Case) -> torch.Tensor:
    """k* ``(d_in,)``: ROME's key of the case's subject, averaged over its context templates."""
    templates = [c.format(case.request.prompt) for c in editor.context_templates()]
    module = editor.lm.down_proj(editor.config.layer)
    return at_subjects(editor.lm, module, [(t, case.request.subject) for t in templates], output=False).float().mean(0)


@torch.no_grad()
def random_keys(lm, layer: int, n: int, corpus: str, seed: int = 0) -> torch.Tensor:
    """``n`` keys ``(n, d_in)`` at random token positions of ``corpus`` (the unrelated baseline)."""
    keys = corpus_keys(lm, lm.down_proj(layer), corpus, max(4 * n, 1024))
    g = torch.Generator().manual_seed(seed)
    return keys[torch.randperm(len(keys), generator=g)[:n].to(keys.device)]


@torch.no_grad()
def similarity_distributions(editor, cases: list[Case], rob: RobustnessConfig, n_random: int = 10,
                             corpus: str = "enwiki-sample") -> dict:
    """kᵀC⁻¹k* per case and kind (module docstring), with the random-key baseline."""
    lm, layer = editor.lm, editor.config.layer
    C = editor.covariance()
    module = lm.down_proj(layer)
    baseline = random_keys(lm, layer, n_random * len(cases), corpus)
    out: dict[str, list[float]] = {"prompt": [], "rephrase_subject": [], "shuffle_subject": [], "long_context": [],
                                   "random": []}
    per_case = []
    for i, case in enumerate(progress(cases, desc="key similarities")):
        k_star = inserted_key(editor, case)
        goal = whitened_targets(C, k_star[None])[0]
        row = {"case_id": case.case_id, "subject": case.request.subject,
               "self": float(k_star @ goal)}  # k*ᵀC⁻¹k*: what a key identical to k* would score
        prompts = {"prompt": [(case.request.prompt, case.request.subject)]}
        for kind, probes in probes_of_case(case, lm.tokenizer, rob).items():
            prompts[kind] = [(p.template, p.subject) for p in probes]
        for kind, filled in prompts.items():
            sims = (at_subjects(lm, module, filled, output=False).float() @ goal).tolist()
            out[kind] += sims
            row[kind] = sims
        rand = (baseline[i * n_random : (i + 1) * n_random] @ goal).tolist()
        out["random"] += rand
        row["random"] = rand
        per_case.append(row)
    return {"layer": layer, "model": lm.name, "n_cases": len(cases), "similarities": out, "cases": per_case}


@torch.no_grad()
def perturbed_keys_pca(editor, case: Case, rob: RobustnessConfig) -> dict:
    """2-D PCA coordinates of one subject's keys: k*, the bare prompt, every probe (module docstring)."""
    lm, layer = editor.lm, editor.config.layer
    module = lm.down_proj(layer)
    labels, filled = ["prompt"], [(case.request.prompt, case.request.subject)]
    for kind, probes in probes_of_case(case, lm.tokenizer, rob).items():
        labels += [kind] * len(probes)
        filled += [(p.template, p.subject) for p in probes]
    keys = torch.cat([inserted_key(editor, case)[None], at_subjects(lm, module, filled, output=False).float()])
    labels = ["k*", *labels]
    centred = keys - keys.mean(0)
    _, s, v = torch.linalg.svd(centred.double(), full_matrices=False)
    coords = (centred.double() @ v[:2].T).tolist()
    explained = (s[:2] ** 2 / (s**2).sum()).tolist()
    subjects = ["(k*: context average)", case.request.subject] + [t[1] if lab != "long_context" else "(long context) " + t[1]
                                                                    for lab, t in zip(labels[2:], filled[1:])]
    return {"layer": layer, "model": lm.name, "case_id": case.case_id, "subject": case.request.subject,
            "explained_variance": explained,
            "points": [{"kind": lab, "text": txt, "x": c[0], "y": c[1]} for lab, txt, c in zip(labels, subjects, coords)]}


@torch.no_grad()
def nearest_prefixes(editor, cases: list[Case], n_tokens: int = 100_000, top: int = 10,
                     corpus: str = "wikitext2-valid") -> dict:
    """For each case, the ``top`` token positions of ``corpus`` whose keys score highest under
    kᵀC⁻¹k*, skipping positions whose last ``PREFIX_TOKENS`` tokens contain the subject's last token."""
    lm, layer = editor.lm, editor.config.layer
    C = editor.covariance()
    module = lm.down_proj(layer)
    k_stars = torch.stack([inserted_key(editor, c) for c in cases])  # (n, d_in)
    goals = whitened_targets(C, k_stars)
    subject_last = torch.tensor([encode(lm.tokenizer, " " + c.request.subject)[-1] for c in cases], device=lm.device)
    windows = token_windows(lm.tokenizer, corpus, n_tokens, 256).to(lm.device)
    best_sim = torch.full((len(cases), top), -float("inf"), device=lm.device)
    best_pos = torch.zeros((len(cases), top), dtype=torch.long, device=lm.device)
    flat_ids = windows.reshape(-1)
    for w_index, w in enumerate(progress(list(windows), desc="scanning prefixes")):
        keys = run_until(lm.model, module, input_ids=w[None], use_cache=False)[0].float()  # (T, d_in)
        sims = (keys @ goals.T).T  # (n, T)
        # a position whose recent prefix holds the subject's last token is the subject, not an unrelated key
        recent = torch.stack([torch.roll(w, s) for s in range(PREFIX_TOKENS)])  # (P, T): token t - s at column t
        recent[:, :PREFIX_TOKENS] = -1  # roll wraps around; the window start has no prefix there
        holds = (recent[None] == subject_last[:, None, None]).any(1)  # (n, T)
        sims = sims.masked_fill(holds, -float("inf"))
        pos = torch.arange(len(w), device=lm.device) + w_index * w.shape[0]
        cand_sim = torch.cat([best_sim, sims], 1)
        cand_pos = torch.cat([best_pos, pos.expand(len(cases), -1)], 1)
        best_sim, idx = cand_sim.topk(top, dim=1)
        best_pos = cand_pos.gather(1, idx)
    out = []
    all_sims = []
    for i, case in enumerate(cases):
        entries = []
        for sim, p in zip(best_sim[i].tolist(), best_pos[i].tolist()):
            if sim == -float("inf"):
                continue
            start = max(0, p - PREFIX_TOKENS + 1)
            entries.append({"similarity": sim, "prefix": lm.tokenizer.decode(flat_ids[start : p + 1].tolist())})
            all_sims.append(sim)
        out.append({"case_id": case.case_id, "subject": case.request.subject,
                    "self": float(k_stars[i] @ goals[i]), "nearest": entries})
    return {"layer": layer, "model": lm.name, "corpus": corpus, "n_tokens": int(windows.numel()), "top": top,
            "similarities": all_sims, "cases": out}


def value_norms(editor, cases: list[Case]) -> dict:
    """‖v₀‖ and ‖v*‖ of ROME's value at the subject for each case (module docstring)."""
    rows = []
    for case in progress(cases, desc="value norms"):
        info = editor.edit([case.request]).info
        rows.append({"case_id": case.case_id, "subject": case.request.subject,
                     "v0_norm": info["v0_norm"], "v_star_norm": info["v_star_norm"], "delta_norm": info["delta_norm"]})
    return {"layer": editor.config.layer, "model": editor.lm.name, "cases": rows}
