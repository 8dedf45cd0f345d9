"""REP, the Robust Edit Pathway (Yan et al., "Keys to robust edits", §6, Eq. 5–6, Algorithm 1,
appendix B.2): ROME or MEMIT, plus a trained adaptor on the keys of each edited layer.

A ROME edit inserts the key k* (and MEMIT one key per fact and layer). It fails when the subject
is rephrased, its words shuffled or a long text comes first, because those keys k_s lie far from
k* under the whitened similarity k_sᵀ C⁻¹ k* (§5.2; ``analysis`` shows it on the embedded model).
REP trains a small gated adaptor (``adaptors.KeyAdaptor``) on the keys entering the edited
down-projection, k̂ = k + m(k)·proj(k), to pull the subject's in-domain keys toward k*:

    L = − mean_s | normalize(k̂_s)ᵀ C⁻¹ k* |            (Eq. 6; Adam, lr 5e-4, 10 steps)

and at test time opens the branch only where gate(k) ≥ τ (0.9), so other keys pass unchanged.

**The keys k_s** are those at the subject's last token (for a shuffled subject, its last token
after shuffling) of the request's in-domain robustness probes (``EditRequest.in_domain``, from
``eval.robustness``: rephrased subject, shuffled subject, long context), and, with
``contexts=True``, of the rephrased and shuffled prompts inside the base editor's context
templates: "several contexts and templates" (§6). A request without in-domain probes (e.g. from
``robustedit edit``) gets shuffles and long contexts generated the same way (no rephrasings).
The target never enters: the in-domain probes contribute only keys, as the paper says.

**Where the paper is ambiguous** (each choice a hyperparameter):

- *Residual in training.* Eq. 5 has k̂ = gate·proj + k; Algorithm 1 (line 14) trains
  k̂ = proj(k)∘gate(k) with no k. With the normalised loss, the gate of the latter cancels
  (normalize(g·p) = normalize(p) for g > 0), so the gate would never be trained and, starting near
  0.5, never pass τ = 0.9. Default: Eq. 5 (``residual_in_training=True``); false reproduces
  Algorithm 1 literally.
- *What τ is compared with.* The text thresholds the gate's output s = sigmoid(o); Algorithm 1
  (line 22) writes m = int(o ≥ τ) with the logit o. We compare s (``adaptors.KeyAdaptor``); the
  logit reading o ≥ 0.9 is s ≥ sigmoid(0.9) ≈ 0.71, a point of the τ sweep (``rep-table``).
- *|·| in the loss.* Taken as written (``absolute=True``): a key pulled to −k* counts as aligned.
  ``absolute=False`` maximises the signed similarity instead (a ROME update adds −Λ to −k*).
- *What keeps the gate closed elsewhere.* Nothing in the paper trains the gate on other keys; only
  τ protects them. Default: as the paper (``negatives=0``). Beyond the paper, ``negatives=N``
  also trains the gate as a classifier (binary cross-entropy, weight ``negative_weight``, the two
  classes weighing the same): open on the subject's training keys, shut on N keys of
  unrelated text: the nearest ones to k* under the whitened similarity among the keys of the
  statistics corpus (the "similar but unrelated prefixes" of §5.2) plus as many random ones; and
  ``prompt_negatives=True`` adds the keys at every other token of the training prompts (the
  relation's words, the other subject tokens, the long contexts), where the adaptor also sits.
  On SmolLM2, a gate trained without negatives at a learning rate that opens it at all opens on
  exactly those tokens (``benchmarks/rep_select.py``; README, "Robustness and REP").
- *Size of the adapted key.* Eq. 6 normalises k̂, so nothing bounds ‖proj(k)‖: on SmolLM2, once
  the gate opens, the branch grows to ~10‖k‖ and the edit answers such a key ~8 times as strongly
  as k* (and W·proj(k) adds an unrelated value). Default: as the paper; ``preserve_norm=True``
  rescales k + m·proj(k) to ‖k‖ (``adaptors.KeyAdaptor``), which leaves the loss unchanged.
- *Scale of the loss.* kᵀC⁻¹k* is in the units of C⁻¹ (hundreds on SmolLM2, varying by edit), so
  Eq. 6 as written would swamp any other term and weigh edits in one call by ‖C⁻¹k*‖. With
  ``unit_goal=True`` (default) the loss uses C⁻¹k*/‖C⁻¹k*‖: for one edit this is Eq. 6 times a
  constant, and Adam's steps are invariant to that (up to its ε), so the paper's setting trains
  the same adaptor; the negatives' cross-entropy then weighs as ``negative_weight`` says.
- *Several edits.* One adaptor per edited module per ``edit`` call, trained on the keys of all the
  call's requests, each pulled toward its own k*. Across calls (sequential editing) adaptors add
  their branches, each on the unadapted key (``adaptors.AdaptorStack``).
- *MEMIT.* The paper does not apply REP to MEMIT. Default: an adaptor on every edited layer
  (``adapt_layers="all"``), each with that layer's C and keys, read on the model carrying the MEMIT
  update (a layer's keys depend on the layers below). ``adapt_layers="last"`` adapts only the last
  edited layer, where MEMIT optimised its values. ``chain=True`` trains the layers bottom-up with
  the adaptors already trained installed, so each is trained on the keys it will see at test time
  (an open gate below moves every key above it).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from robustedit.data import Case
from robustedit.editors.adaptors import KeyAdaptor, install, uninstall
from robustedit.editors.base import Delta, Editor, Stopwatch, applied, register_editor
from robustedit.editors.keys import corpus_keys, subject_and_other_states
from robustedit.editors.memit import MEMIT, MEMITConfig
from robustedit.editors.rome import ROME, ROMEConfig
from robustedit.errors import UserError
from robustedit.eval.robustness import RobustnessConfig, in_domain, robustness_probes
from robustedit.request import EditRequest, Probe


@dataclass(frozen=True)
class REPConfig:
    tau: float = field(default=0.9, metadata={"help": "test-time gate threshold τ (paper: 0.9)"})
    rank: int = field(default=32, metadata={"help": "inner width of the projection (paper: 32)"})
    gate_hidden_fraction: float = field(default=0.1, metadata={"help": "gate width as a share of d_in (paper: 0.1)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout before the projection (rate not given in the paper)"})
    lr: float = field(default=5e-4, metadata={"help": "Adam learning rate (paper: 5e-4)"})
    steps: int = field(default=10, metadata={"help": "Adam steps (paper: 10)"})
    residual_in_training: bool = field(default=True, metadata={
        "help": "train k̂ = k + gate·proj (Eq. 5); false: gate·proj alone (Algorithm 1), whose gate gets no gradient"})
    absolute: bool = field(default=True, metadata={"help": "loss −|similarity| as written; false: −similarity"})
    contexts: bool = field(default=True, metadata={
        "help": "also train on the rephrased/shuffled prompts inside the base editor's context templates"})
    negatives: int = field(default=0, metadata={
        "help": "beyond the paper: train the gate closed on this many nearest + this many random unrelated keys"})
    prompt_negatives: bool = field(default=False, metadata={
        "help": "beyond the paper: also train the gate closed at every other token of the training prompts"})
    negative_weight: float = field(default=1.0, metadata={"help": "weight of the gate's loss on negatives"})
    negative_tokens: int = field(default=8192, metadata={"help": "corpus tokens searched for negatives"})
    preserve_norm: bool = field(default=False, metadata={
        "help": "beyond the paper: rescale an adapted key to its original norm (the loss sees only directions)"})
    unit_goal: bool = field(default=True, metadata={
        "help": "divide each C⁻¹k* by its norm in the loss (same Adam steps for one edit; comparable to the negatives' loss)"})
    adapt_layers: str = field(default="all", metadata={
        "help": "MEMIT: adapt every edited layer (all) or only the last one (last); ROME has one layer"})
    chain: bool = field(default=False, metadata={
        "help": "MEMIT: train layers bottom-up, reading keys with the lower layers' adaptors installed"})
    seed: int = field(default=0, metadata={"help": "seed of the adaptor's initialisation and dropout"})
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig, metadata={
        "help": "how probes are generated for a request that carries no in-domain probes"})

    def __post_init__(self) -> None:
        if not 0 < self.tau < 1:
            raise UserError(f"rep.tau must be in (0, 1), got {self.tau}")
        if self.rank < 1 or self.steps < 0 or self.lr <= 0 or not 0 < self.gate_hidden_fraction <= 1:
            raise UserError("rep needs rank >= 1, steps >= 0, lr > 0 and 0 < gate_hidden_fraction <= 1")
        if self.negatives < 0 or self.negative_weight < 0:
            raise UserError("rep.negatives and rep.negative_weight must be >= 0")
        if self.adapt_layers not in ("all", "last"):
            raise UserError(f"rep.adapt_layers must be 'all' or 'last', got {self.adapt_layers!r}")


@dataclass
class AdaptorFit:
    adaptor: KeyAdaptor
    info: dict[str, Any]


def whitened_targets(C: torch.Tensor, k_star: torch.Tensor) -> torch.Tensor:
    """C⁻¹ k* ``(n, d_in)`` float32 for keys k* ``(n, d_in)``, solved in float64."""
    return torch.linalg.solve(C.to(torch.float64), k_star.to(torch.float64).T).T.float()


def alignment_loss(adaptor: KeyAdaptor, keys: torch.Tensor, goal: torch.Tensor, cfg: REPConfig) -> torch.Tensor:
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


def train_adaptor(keys: torch.Tensor, owners: torch.Tensor, targets: torch.Tensor, cfg: REPConfig,
                  negatives: torch.Tensor | None = None) -> AdaptorFit:
    """Fit one adaptor: keys ``(N, d_in)`` of the subjects, ``owners`` ``(N,)`` the request of each
    key, ``targets`` C⁻¹k* ``(n, d_in)`` per request; ``negatives`` ``(M, d_in)`` keys whose gate
    should stay closed (beyond the paper, see the module docstring)."""
    keys = keys.detach().float()
    d_in = keys.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        adaptor = KeyAdaptor(d_in, cfg.rank, max(1, round(cfg.gate_hidden_fraction * d_in)), cfg.dropout, cfg.tau,
                             cfg.preserve_norm)
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
        before = (F.normalize(keys, dim=-1) * goal).sum(-1)
        soft = (F.normalize(keys + adaptor.branch(keys, hard=False), dim=-1) * goal).sum(-1)
        after = (F.normalize(adaptor(keys), dim=-1) * goal).sum(-1)
        info = {
            "n_keys": len(keys),
            "losses": losses,
            "gate_open_share": float((adaptor.gate_prob(keys) >= cfg.tau).float().mean()),
            "gate_mean": float(adaptor.gate_prob(keys).mean()),
            "similarity_before": float(before.mean()),  # normalize(k)ᵀC⁻¹k*, the quantity of Eq. 6
            "similarity_soft_gate": float(soft.mean()),  # as trained (gate value, not 1[gate ≥ τ])
            "similarity_after": float(after.mean()),  # at test time: the binary gate
        }
        if negatives is not None and len(negatives):
            info["negative_gate_open_share"] = float((adaptor.gate_prob(negatives) >= cfg.tau).float().mean())
    return AdaptorFit(adaptor, info)


def training_prompts(request: EditRequest, contexts: list[str], cfg: REPConfig, tokenizer) -> list[Probe]:
    """The prompts whose subject keys train the adaptor for ``request`` (module docstring)."""
    probes = request.in_domain
    if not probes:  # nothing given: generate shuffles and long contexts as the evaluation would
        case = Case(case_id=request.text, request=request)
        probes = in_domain(robustness_probes(case, tokenizer, cfg.robustness))
    out = list(probes)
    if cfg.contexts:
        short = [p for p in probes if p.template == request.prompt]  # rephrased / shuffled subjects
        out += [Probe(c.format(p.template), p.subject) for p in short for c in contexts if c != "{}"]
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


class _WithREP(Editor):
    """The base editor's delta plus one trained adaptor per edited layer (module docstring)."""

    base_cls: ClassVar[type[Editor]]
    base_config_cls: ClassVar[type]
    wants_in_domain: ClassVar[bool] = True  # the evaluation passes each request's in-domain probes

    def __init__(self, lm, config=None) -> None:
        super().__init__(lm, config)
        names = [f.name for f in dataclasses.fields(self.base_config_cls)]
        self.base = self.base_cls(lm, self.base_config_cls(**{n: getattr(self.config, n) for n in names}))

    def prepare(self) -> None:
        self.base.prepare()

    def commit(self, delta: Delta) -> None:
        self.base.commit(delta)

    def layers(self) -> list[int]:
        raise NotImplementedError

    def covariance(self, layer: int) -> torch.Tensor:
        raise NotImplementedError

    def edit(self, requests: list[EditRequest]) -> Delta:
        return self.adapt(self.base.edit(requests), requests)

    def adapt(self, delta: Delta, requests: list[EditRequest]) -> Delta:
        """``delta`` (the base editor's edit of ``requests``) plus the trained adaptors. Separate from
        ``edit`` so that adaptor settings can be compared on one base edit (benchmarks/rep_select.py)."""
        cfg, lm, sw = self.config.rep, self.lm, Stopwatch()
        contexts = self.base.context_templates()
        adaptors, infos = {}, {}
        layers = sorted(self.layers())  # bottom-up, so that `chain` sees the lower adaptors at work
        layers = layers if cfg.adapt_layers == "all" else layers[-1:]
        with applied(lm, delta), contextlib.ExitStack() as trained:  # MEMIT: keys move with the layers below
            for layer in layers:
                name = lm.down_proj_weight_name(layer)
                module = lm.down_proj(layer)
                with sw("rep_keys"):
                    filled, owners = [], []
                    for i, request in enumerate(requests):
                        prompts = training_prompts(request, contexts, cfg, lm.tokenizer)
                        filled += [(p.template, p.subject) for p in prompts]
                        owners += [i] * len(prompts)
                    keys, others = subject_and_other_states(lm, module, filled, output=False,
                                                            others=cfg.prompt_negatives)
                    keys = keys.float()
                    k_star = delta.keys[name].T.float()  # (n, d_in): the keys the update inserted
                    C = self.covariance(layer)
                    negs = [others.float()] if cfg.prompt_negatives else []
                    if cfg.negatives:
                        negs.append(negative_keys(lm, module, C, k_star, cfg.negatives, cfg.negative_tokens,
                                                  self.base.config.stats.corpus, cfg.seed))
                    neg = torch.cat(negs) if negs else None
                with sw("rep_train"), torch.enable_grad():
                    fit = train_adaptor(keys, torch.tensor(owners, device=keys.device), whitened_targets(C, k_star),
                                        cfg, neg)
                adaptors[name.removesuffix(".weight")] = fit.adaptor
                infos[str(layer)] = fit.info
                if cfg.chain:
                    install(module, fit.adaptor)
                    trained.callback(uninstall, module, fit.adaptor)
        info = dict(delta.info)
        info["rep"] = infos
        info["timing"] = {**delta.info.get("timing", {}), **sw.times}  # a new dict: the base delta stays as it was
        return Delta(delta.weights, info, keys=delta.keys, adaptors=adaptors)


@dataclass(frozen=True)
class ROMEREPConfig(ROMEConfig):
    rep: REPConfig = field(default_factory=REPConfig, metadata={"help": "the Robust Edit Pathway's adaptor"})


@dataclass(frozen=True)
class MEMITREPConfig(MEMITConfig):
    rep: REPConfig = field(default_factory=REPConfig, metadata={"help": "the Robust Edit Pathway's adaptors"})


@register_editor
class ROMEWithREP(_WithREP):
    name = "rome+rep"
    config_cls = ROMEREPConfig
    base_cls = ROME
    base_config_cls = ROMEConfig

    def layers(self) -> list[int]:
        return [self.config.layer]

    def covariance(self, layer: int) -> torch.Tensor:
        return self.base.covariance()


@register_editor
class MEMITWithREP(_WithREP):
    name = "memit+rep"
    config_cls = MEMITREPConfig
    base_cls = MEMIT
    base_config_cls = MEMITConfig

    def layers(self) -> list[int]:
        return list(self.config.layers)

    def covariance(self, layer: int) -> torch.Tensor:
        return self.base.covariances()[layer]
