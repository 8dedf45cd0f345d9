"""REP as the paper's text describes it (``rep.variant=paper``; Yan et al., "Keys to robust edits",
§6, Eq. 5–6, Algorithm 1, appendix B.2): one adaptor per edited layer, trained on all its keys at
once (full batch) with

    L = − mean_s | normalize(k̂_s)ᵀ C⁻¹ k* |            (Eq. 6; Adam, lr 5e-4, 10 steps)

and ``adaptors.KeyAdaptor`` in its ``"linear"`` form. ``editors/rep.py`` lists where this reading
differs from the authors' code and from ours; the options below cover the paper's ambiguities:

- *Residual in training.* Eq. 5 has k̂ = gate·proj + k; Algorithm 1 (line 14) trains
  k̂ = proj(k)∘gate(k) with no k. With the normalised loss, the gate of the latter cancels
  (normalize(g·p) = normalize(p) for g > 0), so the gate would never be trained and, starting near
  0.5, never pass τ = 0.9. Default: Eq. 5 (``residual_in_training=True``); false reproduces
  Algorithm 1 literally.
- *|·| in the loss.* Taken as written (``absolute=True``): a key pulled to −k* counts as aligned.
  ``absolute=False`` maximises the signed similarity instead (a ROME update adds −Λ to −k*).
- *What keeps the gate closed elsewhere.* Nothing in the paper trains the gate on other keys; only
  τ protects them. Default: as the paper (``negatives=0``). Beyond the paper, ``negatives=N``
  also trains the gate as a classifier (binary cross-entropy, weight ``negative_weight``, the two
  classes weighing the same): open on the subject's training keys, shut on N keys of
  unrelated text: the nearest ones to k* under the whitened similarity among the keys of the
  statistics corpus (the "similar but unrelated prefixes" of §5.2) plus as many random ones; and
  ``prompt_negatives=True`` adds the keys at every other token of the training prompts.
- *Size of the adapted key.* Eq. 6 normalises k̂, so nothing bounds ‖proj(k)‖. Default: as the
  paper; ``preserve_norm=True`` rescales k + m·proj(k) to ‖k‖, which leaves the loss unchanged.
- *Scale of the loss.* kᵀC⁻¹k* is in the units of C⁻¹ (hundreds on SmolLM2, varying by edit). With
  ``unit_goal=True`` (default) the loss uses C⁻¹k*/‖C⁻¹k*‖: for one edit this is Eq. 6 times a
  constant, and Adam's steps are invariant to that (up to its ε).
- *MEMIT.* The paper does not apply REP to MEMIT. An adaptor on every edited layer
  (``adapt_layers="all"``) or the last one (``"last"``), each trained on that layer's keys read on
  the model carrying the MEMIT update; ``chain=True`` trains the layers bottom-up with the adaptors
  already trained installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustedit.editors.adaptors import KeyAdaptor
from robustedit.editors.keys import corpus_keys
from robustedit.editors.rep_fit import AdaptorFit, gate_width, unit_similarity, whitened_targets
from robustedit.errors import UserError
from robustedit.request import EditRequest, Probe


def alignment_loss(adaptor: KeyAdaptor, keys: torch.Tensor, goal: torch.Tensor, cfg) -> torch.Tensor:
    """Eq. 6: − mean | normalize(k̂)ᵀ C⁻¹k* | over keys ``(N, d_in)`` with their goals C⁻¹k*
    ``(N, d_in)``; k̂ as Eq. 5 or, with ``residual_in_training=False``, Algorithm 1 line 14.
    With ``unit_goal`` each goal is divided by its norm (module docstring)."""
    branch = adaptor.branch(keys, hard=False)
    k_hat = keys + branch if cfg.residual_in_training else branch
    if cfg.unit_goal:
        goal = F.normalize(goal, dim=-1)
    sim = (F.normalize(k_hat, dim=-1) * goal).sum(-1)
    return -(sim.abs() if cfg.absolute else sim).mean()


def gate_classification_loss(adaptor: KeyAdaptor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the gate: open (1) on the subject's keys, shut (0) on the negatives,
    each class's mean weighing the same (beyond the paper; module docstring)."""
    pos, neg = adaptor.gate(positives)[:, 0], adaptor.gate(negatives)[:, 0]
    return (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
            + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))) / 2


def train_adaptor(keys: torch.Tensor, owners: torch.Tensor, targets: torch.Tensor, cfg,
                  negatives: torch.Tensor | None = None) -> AdaptorFit:
    """Fit one adaptor: keys ``(N, d_in)`` of the subjects, ``owners`` ``(N,)`` the request of each
    key, ``targets`` C⁻¹k* ``(n, d_in)`` per request; ``negatives`` ``(M, d_in)`` keys whose gate
    should stay closed (beyond the paper, see the module docstring)."""
    keys = keys.detach().float()
    d_in = keys.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        adaptor = KeyAdaptor(d_in, cfg.rank, gate_width(cfg, d_in), cfg.dropout, cfg.tau, cfg.preserve_norm)
        adaptor.to(keys.device).train()
        opt = torch.optim.Adam(adaptor.parameters(), lr=cfg.lr)
        goal = targets.float()[owners]  # (N, d_in)
        losses = []
        for _ in range(cfg.steps):
            loss = alignment_loss(adaptor, keys, goal, cfg)
            if negatives is not None and len(negatives) and cfg.negative_weight > 0:
                loss = loss + cfg.negative_weight * gate_classification_loss(adaptor, keys, negatives.float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    adaptor.eval()
    with torch.no_grad():
        info = {
            "n_keys": len(keys),
            "losses": losses,
            "gate_open_share": float((adaptor.gate_prob(keys) >= cfg.tau).float().mean()),
            "gate_mean": float(adaptor.gate_prob(keys).mean()),
            "similarity_before": unit_similarity(keys, goal),  # normalize(k)ᵀ goal/‖goal‖
            "similarity_soft_gate": unit_similarity(keys + adaptor.branch(keys, hard=False), goal),  # as trained
            "similarity_after": unit_similarity(adaptor(keys), goal),  # at test time: the binary gate
        }
        if negatives is not None and len(negatives):
            info["negative_gate_open_share"] = float((adaptor.gate_prob(negatives) >= cfg.tau).float().mean())
    return AdaptorFit(adaptor, info)


def training_prompts(request: EditRequest, probes: tuple[Probe, ...], contexts: list[str], cfg) -> list[Probe]:
    """The prompts whose subject keys train the adaptor for ``request``: its in-domain probes and,
    with ``contexts``, the rephrased and shuffled ones inside the base editor's context templates
    ("several contexts and templates", §6)."""
    out = list(probes)
    if cfg.contexts:
        short = [p for p in probes if p.template == request.prompt]  # rephrased / shuffled subjects
        out += [Probe(c.format(p.template), p.subject, p.kind) for p in short for c in contexts if c != "{}"]
    if not out:
        raise UserError(f"REP has no prompts to train on for {request.text!r}: the subject has no "
                        "in-domain probes and cannot be shuffled; give it rephrasings")
    return out


@torch.no_grad()
def negative_keys(lm, module: torch.nn.Module, C: torch.Tensor, k_star: torch.Tensor, n: int, n_tokens: int,
                  corpus: str, seed: int) -> torch.Tensor:
    """``2n`` keys of unrelated text at ``module``: the ``n`` nearest to any k* under kᵀC⁻¹k*,
    and ``n`` random others (beyond the paper; module docstring)."""
    keys = corpus_keys(lm, module, corpus, n_tokens)
    sims = (keys @ whitened_targets(C, k_star).T).abs().amax(-1)  # (T,)
    nearest = sims.topk(min(n, len(keys))).indices
    rest = torch.ones(len(keys), dtype=torch.bool, device=keys.device)
    rest[nearest] = False
    pool = rest.nonzero()[:, 0]
    g = torch.Generator().manual_seed(seed)
    random_ = pool[torch.randperm(len(pool), generator=g)[:n].to(pool.device)]
    return torch.cat([keys[nearest], keys[random_]])
