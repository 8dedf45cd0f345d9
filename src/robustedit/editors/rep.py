"""REP, the Robust Edit Pathway (Yan et al., "Keys to robust edits", §6): ROME or MEMIT, plus a
trained gated adaptor on the keys of each edited layer (``adaptors.KeyAdaptor``).

A ROME edit inserts the key k* (and MEMIT one key per fact and layer). It fails when the subject
is rephrased, its tokens shuffled or a long text comes first, because those keys k_s lie far from
k* under the whitened similarity k_sᵀ C⁻¹ k* (§5.2; ``analysis`` shows it on the embedded model).
REP trains an adaptor k̂ = k + m(k)·proj(k) on the keys entering the edited down-projection to pull
the subject's in-domain keys toward the inserted key, and at test time opens the branch only where
the gate reaches τ (0.9), so other keys pass unchanged.

**Two variants** (``rep.variant``), each in its own module:

- ``reference`` (default): the authors' released code (``rep_reference.py``), without its two bugs;
- ``paper``: the paper's text, Eq. 5–6 and Algorithm 1 (``rep_paper.py``), with the options that
  cover its ambiguities.

Where the paper's text, the authors' code and ours differ:

| point | paper (text) | authors' code | ours |
|---|---|---|---|
| projection | two linear maps (Fig. 6) | LoRA: no bias, second factor 0, α/r = 1 | ``arch`` follows the variant |
| dropout | not stated | 0.1 in training, *also at test time* (bug) | 0.1 in training only |
| loss | −|normalize(k̂)ᵀC⁻¹k*| | −normalize(k̂)ᵀg, signed, g = u (ROME) or k_l (MEMIT) | as each variant; ``goal`` |
| anchor | none | 5·10⁴·MSE(k̂, k) at the bare prompt's subject key | reference: ``anchor_weight`` |
| keys | in-domain probes, "several contexts" | + original subject in 20 prefixes; ID probes × 21 templates | as each variant |
| long contexts | in-domain ones trained on | intended, dropped (bug: no ``{}``) | trained on in both |
| batches | not stated | 15 + the anchor per step | reference: ``batch_size``; paper: all keys |
| Adam | lr 5e-4, 10 steps | the same | shipped per model, chosen on ``rep-valid`` |
| τ compared with | sigmoid output (text) / logit (Alg. 1) | sigmoid output, > τ | sigmoid output, ≥ τ |
| MEMIT | not covered | every layer, trained jointly, lower adaptors active | reference: the same; paper: ``adapt_layers``, ``chain`` |

The keys' prompts come from the request's in-domain robustness probes (``EditRequest.in_domain``:
rephrased subject, shuffled subject, long context; the evaluation fills them in, a user passes
rephrasings to ``robustedit edit --rephrase``). A request without them gets shuffles and long
contexts generated as the evaluation would (no rephrasings). The target never enters.
Several requests in one call train one adaptor per edited module, each request's keys pulled toward
its own goal. Across calls (sequential editing) adaptors add their branches, each on the unadapted
key (``adaptors.AdaptorStack``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from robustedit.data import Case
from robustedit.editors.adaptors import install, uninstall
from robustedit.editors.base import Delta, Editor, Stopwatch, applied, register_editor
from robustedit.editors.keys import subject_and_other_states
from robustedit.editors.memit import MEMIT, MEMITConfig
from robustedit.editors.rep_fit import whitened_targets
from robustedit.editors.rep_paper import negative_keys, train_adaptor, training_prompts
from robustedit.editors.rep_reference import fit_reference, reference_prompts
from robustedit.editors.rome import ROME, ROMEConfig
from robustedit.errors import UserError
from robustedit.data.perturb import RobustnessConfig, in_domain, robustness_probes
from robustedit.request import EditRequest, Probe

VARIANTS = ("reference", "paper")
GOALS = ("auto", "whitened", "key")


@dataclass(frozen=True)
class REPConfig:
    variant: str = field(default="reference", metadata={
        "help": "reference: the authors' code (aggregator.py); paper: the paper's text (Eq. 5-6, Algorithm 1)"})
    tau: float = field(default=0.9, metadata={"help": "test-time gate threshold τ on the gate's sigmoid (paper: 0.9)"})
    rank: int = field(default=32, metadata={"help": "inner width of the projection (paper: 32)"})
    gate_hidden_fraction: float = field(default=0.1, metadata={"help": "gate width as a share of d_in (paper: 0.1)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout before the projection in training (reference: 0.1)"})
    lr: float = field(default=5e-4, metadata={"help": "Adam learning rate (paper: 5e-4)"})
    steps: int = field(default=10, metadata={"help": "Adam steps (paper: 10)"})
    goal: str = field(default="auto", metadata={
        "help": "what keys are pulled toward: whitened (C⁻¹k*/‖C⁻¹k*‖) or key (the inserted key k itself); "
                "auto: the reference's choice (ROME whitened, MEMIT key; paper variant: whitened)"})
    seed: int = field(default=0, metadata={"help": "seed of the adaptor's initialisation, dropout and batches"})
    # --- the reference variant (rep_reference.py); ignored by the paper variant
    anchor_weight: float = field(default=5e4, metadata={
        "help": "reference: weight of MSE(k̂, k) at the bare edit prompt's subject key (authors: 5e4)"})
    batch_size: int = field(default=15, metadata={"help": "reference: training keys per step, plus the anchor (authors: 15)"})
    prefixes: bool = field(default=True, metadata={
        "help": "reference: also train on the original subject inside the generated prefixes"})
    context_weight: float = field(default=0.0, metadata={
        "help": "reference: weight of MSE(k̂, k) at every other token of the batch's prompts (the authors' "
                "kl_loss of type mse; 0 in their script)"})
    long_contexts: bool = field(default=True, metadata={
        "help": "reference: train on the in-domain long-context prompts (the authors' code means to, but drops them)"})
    # --- the paper variant (rep_paper.py); ignored by the reference variant
    residual_in_training: bool = field(default=True, metadata={
        "help": "paper: train k̂ = k + gate·proj (Eq. 5); false: gate·proj alone (Algorithm 1), whose gate gets no gradient"})
    absolute: bool = field(default=True, metadata={"help": "paper: loss −|similarity| as written; false: −similarity"})
    contexts: bool = field(default=True, metadata={
        "help": "paper: also train on the rephrased/shuffled prompts inside the base editor's context templates"})
    negatives: int = field(default=0, metadata={
        "help": "paper, beyond it: train the gate closed on this many nearest + this many random unrelated keys"})
    prompt_negatives: bool = field(default=False, metadata={
        "help": "paper, beyond it: also train the gate closed at every other token of the training prompts"})
    negative_weight: float = field(default=1.0, metadata={"help": "paper: weight of the gate's loss on negatives"})
    negative_tokens: int = field(default=8192, metadata={"help": "paper: corpus tokens searched for negatives"})
    preserve_norm: bool = field(default=False, metadata={
        "help": "paper, beyond it: rescale an adapted key to its original norm (the loss sees only directions)"})
    unit_goal: bool = field(default=True, metadata={
        "help": "paper: divide each goal by its norm in the loss (same Adam steps for one edit)"})
    adapt_layers: str = field(default="all", metadata={
        "help": "paper, MEMIT: adapt every edited layer (all) or only the last one (last)"})
    chain: bool = field(default=False, metadata={
        "help": "paper, MEMIT: train layers bottom-up, reading keys with the lower layers' adaptors installed"})
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig, metadata={
        "help": "how probes are generated for a request that carries no in-domain probes"})

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise UserError(f"rep.variant must be one of {', '.join(VARIANTS)}, not {self.variant!r}")
        if self.goal not in GOALS:
            raise UserError(f"rep.goal must be one of {', '.join(GOALS)}, not {self.goal!r}")
        if not 0 < self.tau < 1:
            raise UserError(f"rep.tau must be in (0, 1), got {self.tau}")
        if self.rank < 1 or self.steps < 0 or not self.lr > 0 or not 0 < self.gate_hidden_fraction <= 1:
            raise UserError("rep needs rank >= 1, steps >= 0, lr > 0 and 0 < gate_hidden_fraction <= 1")
        if not 0 <= self.dropout < 1:
            raise UserError(f"rep.dropout must be in [0, 1), got {self.dropout}")
        if self.batch_size < 1 or not self.anchor_weight >= 0 or not self.context_weight >= 0:
            raise UserError("rep needs batch_size >= 1, anchor_weight >= 0 and context_weight >= 0")
        if self.negatives < 0 or not self.negative_weight >= 0:
            raise UserError("rep.negatives and rep.negative_weight must be >= 0")
        if self.adapt_layers not in ("all", "last"):
            raise UserError(f"rep.adapt_layers must be 'all' or 'last', got {self.adapt_layers!r}")


def request_probes(request: EditRequest, tokenizer, cfg: RobustnessConfig) -> tuple[Probe, ...]:
    """The request's in-domain probes, or, if it carries none, shuffles and long contexts generated
    as the evaluation would (``data.perturb``)."""
    if request.in_domain:
        return request.in_domain
    return in_domain(robustness_probes(Case(case_id=request.text, request=request), tokenizer, cfg))


def user_probes(request: EditRequest, rephrasings: list[str], tokenizer, cfg: RobustnessConfig) -> EditRequest:
    """``request`` carrying, as in-domain probes, every rephrasing a user gave for its subject and
    the in-domain half of generated token shuffles and long contexts (``robustedit edit
    --rephrase``): a user's own rephrasings are all for training, none held out."""
    generated = [p for p in request_probes(request, tokenizer, cfg) if p.kind != "rephrase_subject"]
    names = dict.fromkeys(r.strip() for r in rephrasings)
    given = [Probe(request.prompt, r, "rephrase_subject") for r in names if r and r != request.subject]
    return dataclasses.replace(request, in_domain=(*given, *generated))


class _WithREP(Editor):
    """The base editor's delta plus one trained adaptor per edited layer (module docstring)."""

    base_cls: ClassVar[type[Editor]]
    base_config_cls: ClassVar[type]
    default_goal: ClassVar[str]  # the reference's goal for this base editor
    wants_in_domain = True  # REP trains its adaptor on each request's in-domain probes

    def __init__(self, lm, config=None) -> None:
        super().__init__(lm, config)
        names = [f.name for f in dataclasses.fields(self.base_config_cls)]
        self.base = self.base_cls(lm, self.base_config_cls(**{n: getattr(self.config, n) for n in names}))
        self.config.rep.robustness.check_fits(lm.max_positions, lm.name)

    def prepare(self) -> None:
        self.base.prepare()

    def commit(self, delta: Delta) -> None:
        self.base.commit(delta)

    def layers(self) -> list[int]:
        raise NotImplementedError

    def covariance(self, layer: int) -> torch.Tensor:
        raise NotImplementedError

    def goal_kind(self) -> str:
        cfg = self.config.rep
        if cfg.goal != "auto":
            return cfg.goal
        return self.default_goal if cfg.variant == "reference" else "whitened"

    def goals(self, layer: int, k_star: torch.Tensor) -> torch.Tensor:
        """What the keys of each request are pulled toward at ``layer``, ``(n, d_in)``, for the
        inserted keys ``k_star`` ``(n, d_in)``: C⁻¹k* (the reference's u = C⁻¹k*/‖C⁻¹k*‖; the paper
        variant normalises or not by ``unit_goal``), or k* itself (the reference's MEMIT goal)."""
        if self.goal_kind() == "key":
            return k_star.float()
        goal = whitened_targets(self.covariance(layer), k_star)
        return torch.nn.functional.normalize(goal, dim=-1) if self.config.rep.variant == "reference" else goal

    def edit(self, requests: list[EditRequest]) -> Delta:
        return self.adapt(self.base.edit(requests), requests)

    def adapt(self, delta: Delta, requests: list[EditRequest]) -> Delta:
        """``delta`` (the base editor's edit of ``requests``) plus the trained adaptors. Separate from
        ``edit`` so that adaptor settings can be compared on one base edit (benchmarks/rep_select.py)."""
        cfg, sw = self.config.rep, Stopwatch()
        layers = sorted(self.layers())  # bottom-up: the lower adaptors change the keys above
        probes = [request_probes(r, self.lm.tokenizer, cfg.robustness) for r in requests]
        with applied(self.lm, delta):  # MEMIT: a layer's keys move with the updates below it
            if cfg.variant == "reference":
                adaptors, infos = self._adapt_reference(delta, requests, probes, layers, sw)
            else:
                adaptors, infos = self._adapt_paper(delta, requests, probes, layers, sw)
        info = dict(delta.info)
        info["rep"] = infos
        info["timing"] = {**delta.info.get("timing", {}), **sw.times}  # a new dict: the base delta stays as it was
        return Delta(delta.weights, info, keys=delta.keys, adaptors=adaptors)

    def _adapt_reference(self, delta, requests, probes, layers, sw):
        lm = self.lm
        with sw("rep_keys"):
            cfg = self.config.rep
            positives, anchors = reference_prompts(requests, probes, self.base.context_templates(), cfg.prefixes,
                                                   cfg.long_contexts)
            names = [lm.down_proj_weight_name(layer) for layer in layers]
            goals = [self.goals(layer, delta.keys[name].T) for layer, name in zip(layers, names)]
        with sw("rep_train"):
            fits = fit_reference(lm, [lm.down_proj(layer) for layer in layers], goals, positives, anchors,
                                 self.config.rep)
        adaptors = {name.removesuffix(".weight"): fit.adaptor for name, fit in zip(names, fits)}
        return adaptors, {str(layer): fit.info for layer, fit in zip(layers, fits)}

    def _adapt_paper(self, delta, requests, probes, layers, sw):
        cfg, lm = self.config.rep, self.lm
        contexts = self.base.context_templates()
        layers = layers if cfg.adapt_layers == "all" else layers[-1:]
        adaptors, infos = {}, {}
        with contextlib.ExitStack() as trained:
            for layer in layers:
                name = lm.down_proj_weight_name(layer)
                module = lm.down_proj(layer)
                with sw("rep_keys"):
                    filled, owners, kinds = [], [], Counter()
                    for i, (request, request_probes_) in enumerate(zip(requests, probes)):
                        prompts = training_prompts(request, request_probes_, contexts, cfg)
                        filled += [(p.template, p.subject) for p in prompts]
                        owners += [i] * len(prompts)
                        kinds.update(p.kind or "subject_variant" for p in prompts)
                    keys, others = subject_and_other_states(lm, module, filled, output=False,
                                                            others=cfg.prompt_negatives)
                    k_star = delta.keys[name].T.float()  # (n, d_in): the keys the update inserted
                    negs = [others.float()] if cfg.prompt_negatives else []
                    if cfg.negatives:
                        negs.append(negative_keys(lm, module, self.covariance(layer), k_star, cfg.negatives,
                                                  cfg.negative_tokens, self.base.config.stats.corpus, cfg.seed))
                    neg = torch.cat(negs) if negs else None
                with sw("rep_train"), torch.enable_grad():
                    fit = train_adaptor(keys.float(), torch.tensor(owners, device=keys.device),
                                        self.goals(layer, k_star), cfg, neg)
                adaptors[name.removesuffix(".weight")] = fit.adaptor
                infos[str(layer)] = {"variant": "paper", "kinds": dict(kinds), **fit.info}
                if cfg.chain:
                    install(module, fit.adaptor)
                    trained.callback(uninstall, module, fit.adaptor)
        return adaptors, infos


@dataclass(frozen=True)
class ROMEREPConfig(ROMEConfig):
    rep: REPConfig = field(default_factory=REPConfig, metadata={"help": "the Robust Edit Pathway's adaptor"})


@dataclass(frozen=True)
class MEMITREPConfig(MEMITConfig):
    rep: REPConfig = field(default_factory=REPConfig, metadata={"help": "the Robust Edit Pathway's adaptors"})


@register_editor
class ROMEWithREP(_WithREP):
    name = "rome+rep"
    extends = "rome"
    config_cls = ROMEREPConfig
    base_cls = ROME
    base_config_cls = ROMEConfig
    default_goal = "whitened"  # the reference passes ROME's u = C⁻¹k*/‖C⁻¹k*‖

    def layers(self) -> list[int]:
        return [self.config.layer]

    def covariance(self, layer: int) -> torch.Tensor:
        return self.base.covariance()


@register_editor
class MEMITWithREP(_WithREP):
    name = "memit+rep"
    extends = "memit"
    batch_edits = True
    config_cls = MEMITREPConfig
    base_cls = MEMIT
    base_config_cls = MEMITConfig
    default_goal = "key"  # the reference passes MEMIT's raw keys layer_ks

    def layers(self) -> list[int]:
        return list(self.config.layers)

    def covariance(self, layer: int) -> torch.Tensor:
        return self.base.covariances()[layer]
