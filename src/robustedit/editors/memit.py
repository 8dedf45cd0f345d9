"""MEMIT: Mass-Editing Memory in a Transformer (Meng et al. 2023).

ROME writes one fact into one layer; MEMIT writes many facts into a range of layers R = l₁ < … < L
(§4 and Algorithm 1 of the paper; ``memit_main.execute_memit`` in the reference code):

1. For each request i, the target hidden state zᵢ = h_L + δᵢ at the subject's last token, with δᵢ
   added to the *output of layer L* (the residual stream) and optimised exactly as ROME's value
   (``values.optimize_values`` with ``site="layer_out"``), each request with its own δ and loss,
   on the unedited model (several requests share a batched forward pass; the result is the same).
2. For each l in R, ascending, on the model already carrying the updates of the layers below:
   the keys K_l (d_in × n) of the subjects at layer l, the current h_L (bare prompts), and the
   residual R_l = (Z − H_L) / (layers left, l included) spread over the remaining layers; then

       ΔW_l = R_l K_lᵀ (λ C_l + K_l K_lᵀ)⁻¹      (λ = ``mom2_update_weight``)

   which minimises ‖ΔW K_l − R_l‖² + λ tr(ΔW C_l ΔWᵀ): the new keys move by R_l while keys that
   are typical under C_l = E[k kᵀ] move little. Each ΔW_l is applied before the next layer's keys
   are read, and every change is undone before ``edit`` returns.

The keys follow the reference ``compute_ks``: each request's key is the mean over the groups of
context templates of the per-group mean (``keys.group_mean``), so the bare prompt weighs as much as
all the sampled prefixes together. The residuals are measured on the bare prompt, like the
reference ``get_module_input_output_at_words`` call in ``execute_memit``.

Because of λ, h_L reaches z only approximately (the reference says as much). And h_L is linear in
ΔW_L only where the MLP output enters the residual stream unnormalised (Llama, GPT-2, GPT-NeoX,
GPT-J); Gemma 2/3 normalise it first (``post_feedforward_layernorm``), so there h_L moves only part
of the way (about half in the tiny-model tests).

λ is commensurate with kᵀC⁻¹k, which for a typical key is about d_in (the MLP width): the
reference's 15000 was tuned for GPT-J (d_in = 16384); a model with a narrower MLP needs a
proportionally smaller λ for the same balance (SmolLM2: d_in = 1536).

``nullspace.enabled`` replaces the closed form at each layer by AlphaEdit's (Fang et al. 2025;
``editors/nullspace.py``): ΔW_l = R_l K_lᵀ P_l (K_p K_pᵀ P_l + K_l K_lᵀ P_l + l2 I)⁻¹ with P_l the
null-space projector of C_l and K_p the keys at l of committed edits (``commit``), as the reference
``AlphaEdit_main.apply_AlphaEdit_to_model``. The values, the keys and the spreading of the residual
over the layers are unchanged; λ (``mom2_update_weight``) is unused, as in the reference.

``edit_memory`` keeps MEMIT's update and only adds what AlphaEdit adds besides the projection: the
keys K_p of committed edits, ΔW_l = R_l K_lᵀ (λ C_l + K_p K_pᵀ + K_l K_lᵀ)⁻¹. That is the recursive
least-squares step: for one linear layer with fixed keys, n calls of this update end where a
single call with all n edits would (‖W k − v‖² over every edit so far, plus λ tr(ΔW C ΔWᵀ) from
the original weights), so a later edit cannot silently overwrite an earlier one; plain MEMIT
forgets the earlier keys and pays for it in sequential editing. Wang et al. 2026 ("The Labyrinth
and the Thread", arXiv 2605.26670) argue that this accumulated constraint, not the null-space
projection, is what keeps AlphaEdit stable. It adds no hyperparameter; on SmolLM2, whose 1536-wide
MLP leaves AlphaEdit a null space of a few hundred directions per layer, it is the measured
alternative (README, sequential editing). The keys of the layers' memory are those ``edit`` used,
as for AlphaEdit (``nullspace.py``, "the memory").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import torch

from robustedit.editors.base import (
    Delta,
    Editor,
    Stopwatch,
    apply_delta,
    register_editor,
)
from robustedit.editors.context import generate_context_groups
from robustedit.editors.keys import at_subjects, group_mean
from robustedit.editors.nullspace import (
    NullspaceConfig,
    NullSpaceState,
    alphaedit_update,
    fit_error,
)
from robustedit.editors.rome import solve_dtype
from robustedit.editors.values import ValueConfig, optimize_values, site_module
from robustedit.errors import UserError
from robustedit.progress import detail_bar
from robustedit.request import EditRequest
from robustedit.stats.covariance import StatsConfig, second_moments


@dataclass(frozen=True)
class MEMITConfig:
    """MEMIT's hyperparameters. Defaults follow the reference GPT-J file
    (``hparams/MEMIT/EleutherAI_gpt-j-6B.json``: layers 3–8, λ = 15000). A model's own file in
    ``resources/configs/memit/<model>.yaml`` overrides them; SmolLM2's (layers 2–6, λ = 600) was
    measured with ``benchmarks/memit_sweep.py``: the reference λ leaves efficacy at 0.34 there.
    Without such a file ``get_editor`` takes the layers from the model's depth
    (``editors/settings.py``: 4–8 on a 28- or 32-layer model); these defaults apply only when the
    depth is unknown."""

    layers: tuple[int, ...] = field(default=(3, 4, 5, 6, 7, 8), metadata={
        "help": "edited layers, strictly increasing; δ is optimised at the last; default: from the model's "
                "depth (editors/settings.py) unless the model's shipped file sets them"})
    v_num_grad_steps: int = field(default=25, metadata={"help": "Adam steps for each δᵢ"})
    v_lr: float = field(default=0.5, metadata={"help": "Adam learning rate for δᵢ"})
    v_weight_decay: float = field(default=0.5, metadata={"help": "weight of ‖δ‖/‖h₀‖² in the loss"})
    clamp_norm_factor: float = field(default=0.75, metadata={"help": "‖δ‖ ≤ factor·‖h₀‖ (h₀: hidden state at L)"})
    kl_factor: float = field(default=0.0625, metadata={"help": "weight of the KL essence term"})
    early_stop_loss: float = field(default=5e-2, metadata={"help": "stop optimising δ below this loss"})
    kl_prompts: tuple[str, ...] = field(default=("{} is a",), metadata={"help": "prompts whose next-token distribution is kept"})
    context_template_length_params: tuple[tuple[int, int], ...] = field(
        default=((10, 5),), metadata={"help": "[[new tokens, count], ...] of generated prefixes (reference: [[10, 5]])"})
    context_seed: int = field(default=0, metadata={"help": "seed for sampling the prefixes"})
    mom2_update_weight: float = field(default=15000.0, metadata={
        "help": "λ in (λC + KKᵀ)⁻¹; scale with the MLP width (reference: 15000 for GPT-J); unused by AlphaEdit"})
    v_batch_size: int = field(default=16, metadata={
        "help": "requests whose δ are optimised together in one batched forward (same result, faster)"})
    stats: StatsConfig = field(default_factory=StatsConfig, metadata={"help": "key statistics C per layer"})
    nullspace: NullspaceConfig = field(default_factory=NullspaceConfig, metadata={
        "help": "AlphaEdit's null-space-constrained update at every layer (off by default)"})
    edit_memory: bool = field(default=False, metadata={
        "help": "keep the keys of committed edits in the preserved term (recursive least squares; module docstring)"})

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        object.__setattr__(self, "layers", layers)  # a list given in Python becomes the tuple it claims
        if not layers:
            raise UserError("MEMIT needs at least one layer in `layers`")
        if any(b <= a for a, b in pairwise(layers)):
            raise UserError(f"MEMIT `layers` must be strictly increasing, got {list(layers)}")
        if self.v_num_grad_steps < 1 or self.v_lr <= 0 or self.clamp_norm_factor <= 0:
            raise ValueError("v_num_grad_steps >= 1, v_lr > 0 and clamp_norm_factor > 0 are required")
        if self.v_batch_size < 1:
            raise UserError("v_batch_size must be >= 1")
        if self.edit_memory and self.nullspace.enabled:
            raise UserError("edit_memory and nullspace.enabled both add the committed keys; choose one "
                            "(AlphaEdit's update already keeps them)")
        if self.mom2_update_weight <= 0:
            raise ValueError("mom2_update_weight must be > 0 (λC keeps λC + KKᵀ invertible)")

    @property
    def value(self) -> ValueConfig:
        return ValueConfig(self.v_num_grad_steps, self.v_lr, self.v_weight_decay, self.clamp_norm_factor,
                           self.kl_factor, self.early_stop_loss, tuple(self.kl_prompts), site="layer_out")


def memit_update(K: torch.Tensor, R: torch.Tensor, C: torch.Tensor, mom2_update_weight: float,
                 preserved: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW ``(d_out, d_in)`` = R Kᵀ (λC + K_p K_pᵀ + K Kᵀ)⁻¹ for keys K ``(d_in, n)`` and residuals
    R ``(d_out, n)``; ``preserved`` is K_p K_pᵀ of earlier edits' keys (``edit_memory``) or None.

    The minimiser of ‖ΔW K − R‖² + ‖ΔW K_p‖² + λ tr(ΔW C ΔWᵀ), solved in float64 (C symmetric).
    """
    K64, R64 = K.to(torch.float64), R.to(torch.float64)
    # C may wait on the CPU while the keys are on an accelerator: the solve runs where the keys are.
    # In place (the same values as λC + KKᵀ): two d_in² float64 matrices at a time, not four.
    A = C.to(device=K64.device, dtype=torch.float64, copy=True).mul_(mom2_update_weight)  # (d_in, d_in), symmetric
    A.add_(K64 @ K64.T)
    if preserved is not None:
        A.add_(preserved.to(device=A.device, dtype=torch.float64))
    adj_k = torch.linalg.solve(A, K64)  # (d_in, n) = A⁻¹K
    return R64 @ adj_k.T


@register_editor
class MEMIT(Editor):
    name = "memit"
    batch_edits = True
    config_cls = MEMITConfig

    def __init__(self, lm, config=None) -> None:
        super().__init__(lm, config)
        for layer in self.config.layers:
            lm.check_layer(layer)
        self._groups: list[list[str]] | None = None
        self._C: dict[int, torch.Tensor] | None = None
        self._null = NullSpaceState(self.config.nullspace)

    @property
    def z_layer(self) -> int:
        return self.config.layers[-1]

    def context_groups(self) -> list[list[str]]:
        if self._groups is None:  # generated once per editor: the same for every request
            cfg = self.config
            self._groups = generate_context_groups(self.lm, cfg.context_template_length_params, cfg.context_seed)
        return self._groups

    def context_templates(self) -> list[str]:
        return [t for group in self.context_groups() for t in group]

    def covariances(self) -> dict[int, torch.Tensor]:
        if self._C is None:  # every edited layer from one pass over the corpus (or the disk cache)
            self._C = second_moments(self.lm, list(self.config.layers), self.config.stats)
        return self._C

    def null_basis(self, layer: int) -> torch.Tensor:
        """Û ``(d_in, r)``: AlphaEdit's null space of C at ``layer`` (computed once per editor)."""
        return self._null.basis(layer, self.covariances()[layer])

    def commit(self, delta: Delta) -> None:
        """With ``nullspace.enabled`` or ``edit_memory``, remember the keys of an applied delta at
        every edited layer: later edits then leave them nearly unchanged. Otherwise nothing."""
        if self.config.nullspace.enabled or self.config.edit_memory:
            self._null.commit(delta, {self.lm.down_proj_weight_name(layer): layer for layer in self.config.layers})

    def prepare(self) -> None:
        self.context_groups()
        self.covariances()
        if self.config.nullspace.enabled:
            for layer in self.config.layers:
                self.null_basis(layer)

    def target_values(self, requests: list[EditRequest]) -> tuple[torch.Tensor, list[dict]]:
        """z ``(n, d)`` at the last edited layer for each request, on the current model, and
        per-request diagnostics. Each request has its own δ and loss, as in the reference; up to
        ``v_batch_size`` of them share each forward pass (``values.optimize_values``)."""
        templates_of = [[c.format(r.prompt) for c in self.context_templates()] for r in requests]
        values = optimize_values(self.lm, self.z_layer, requests, templates_of, self.config.value, self.config.v_batch_size)
        zs, infos = [], []
        for value in values:
            zs.append(value.target)
            infos.append({"value_steps": value.steps, "value_loss": value.losses[-1],
                          "delta_norm": float(value.delta.norm()), "h0_norm": float(value.target_init.norm()),
                          "convergence": value.convergence()})
        return torch.stack(zs), infos

    def layer_keys(self, layer: int, requests: list[EditRequest]) -> torch.Tensor:
        """K ``(d_in, n)``: each subject's group-averaged key at ``layer`` on the current model
        (the prompts of all requests share padded batches)."""
        sizes = [len(g) for g in self.context_groups()]
        contexts = self.context_templates()
        filled = [(c.format(r.prompt), r.subject) for r in requests for c in contexts]
        # float32 before averaging, whatever the model's dtype (the solve itself is float64)
        keys = at_subjects(self.lm, self.lm.down_proj(layer), filled, output=False).to(solve_dtype(self.lm.dtype))  # (n·N, d_in)
        return torch.stack([group_mean(k, sizes) for k in keys.split(len(contexts))], dim=1)

    def current_hidden(self, requests: list[EditRequest]) -> torch.Tensor:
        """h_L ``(n, d)`` at each subject's last token in its bare prompt, on the current model."""
        module = site_module(self.lm, self.z_layer, "layer_out")
        return at_subjects(self.lm, module, [(r.prompt, r.subject) for r in requests], output=True).float()

    def edit(self, requests: list[EditRequest]) -> Delta:
        if not requests:
            raise ValueError("no requests to edit")
        cfg, lm, sw = self.config, self.lm, Stopwatch()
        with sw("context"):
            self.context_groups()
        with sw("stats"):
            C = self.covariances()
            bases = {layer: self.null_basis(layer) for layer in cfg.layers} if cfg.nullspace.enabled else None
        with sw("value"):
            Z, value_infos = self.target_values(requests)  # (n, d)
        weights: dict[str, torch.Tensor] = {}
        keys: dict[str, torch.Tensor] = {}
        z_error: list[float] = []
        null_info: dict[str, list] = {"rank": [], "fit_error": [], "preserved_keys": []}
        backups = []
        bar = detail_bar(len(cfg.layers), f"MEMIT: spreading {len(requests)} edit(s) over layers")
        try:
            for i, layer in enumerate(cfg.layers):
                bar.update()
                with sw("key"):
                    K = self.layer_keys(layer, requests)  # (d_in, n)
                    H = self.current_hidden(requests)  # (n, d)
                residual = (Z - H).T  # (d, n)
                z_error.append(float(residual.norm(dim=0).mean()))
                resid = residual / (len(cfg.layers) - i)  # spread over this and the layers above
                with sw("update"), torch.no_grad():
                    if bases is None:
                        memory = self._null.preserved(layer) if cfg.edit_memory else None
                        upd = memit_update(K, resid, C[layer], cfg.mom2_update_weight, memory)
                        if cfg.edit_memory:
                            null_info["preserved_keys"].append(self._null.counts.get(layer, 0))
                    else:
                        upd = alphaedit_update(K, resid, bases[layer], self._null.preserved(layer), cfg.nullspace.l2)
                        null_info["rank"].append(bases[layer].shape[1])
                        null_info["fit_error"].append(fit_error(upd, K, resid))
                        null_info["preserved_keys"].append(self._null.counts.get(layer, 0))
                    name = lm.down_proj_weight_name(layer)
                    W = lm.down_proj(layer).weight
                    dW = lm.spec.stored(upd).to(W.dtype)
                weights[name] = dW
                keys[name] = K
                backups.append(apply_delta(lm, Delta({name: dW})))
        finally:
            bar.close()
            for backup in reversed(backups):
                backup.restore()
        info = {
            "editor": self.name,
            "layers": list(cfg.layers),
            "z_layer": self.z_layer,
            "n_requests": len(requests),
            "z_error": z_error,  # mean ‖z − h_L‖ before each layer's update
            "requests": value_infos,
            "convergence": [v["convergence"] for v in value_infos],  # one per request
            "timing": sw.times,
        }
        if bases is not None:
            info["nullspace"] = null_info  # per layer, in the order of `layers`
        elif cfg.edit_memory:
            info["preserved_keys"] = null_info["preserved_keys"]  # per layer: committed keys kept
        return Delta(weights, info, keys=keys)
