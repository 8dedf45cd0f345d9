"""ROME: Rank-One Model Editing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT").

One MLP down-projection W (keys k → values v) is changed by a rank-one update so that the key of
the subject, k*, maps to a value v* that makes the model state the new target (§3.1, eq. 2):

    Ŵ = W + Λ (C⁻¹ k*)ᵀ,   Λ = (v* − W k*) / ((C⁻¹ k*)ᵀ k*)

where C = E[k kᵀ] over Wikipedia text (``robustedit.stats``). With the same k* in both places
Ŵ k* = v* holds exactly. The reference code uses, in Λ, the key of the bare prompt instead of the
context-averaged k* used for u; Gupta et al. 2024 ("Rebuilding ROME", r-ROME) show this mismatch
causes model collapse and fix it by using k* in both. ``update_key="averaged"`` (default) is the
fix; ``update_key="prompt"`` reproduces the reference behaviour.

Precision: whatever the model's dtype, the keys are averaged in float32, W k is recomputed in
float32 (``layer_output``), the update is solved in float64 (``rank_one_update``) and only the final
ΔW is cast to the weight's dtype, so a bfloat16 model gets the update its float32 copy would, rounded
once.

Several requests are edited one after another, each on the model already carrying the previous
ones (as the reference ``apply_rome_to_model``); the returned delta is their sum.

``nullspace.enabled`` replaces the rank-one C⁻¹ update by AlphaEdit's null-space-constrained one
(``editors/nullspace.py``; Fang et al. 2025) for the single key k = k_update and residual
r = v* − W k at the one layer: ΔW = r kᵀ P (K_p K_pᵀ P + k kᵀ P + l2 I)⁻¹, where K_p are the keys of
committed edits (``commit``) and of the requests edited earlier in the same ``edit`` call. This
applies AlphaEdit, which the paper states for MEMIT, to ROME's single layer: our adaptation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from robustedit.editors.base import (
    Delta,
    Editor,
    Stopwatch,
    apply_delta,
    register_editor,
)
from robustedit.editors.context import generate_context_templates
from robustedit.editors.keys import subject_keys
from robustedit.editors.nullspace import (
    NullspaceConfig,
    NullSpaceState,
    alphaedit_update,
    fit_error,
    with_keys,
)
from robustedit.editors.values import ValueConfig, optimize_value
from robustedit.request import EditRequest
from robustedit.stats.covariance import StatsConfig, second_moment


@dataclass(frozen=True)
class ROMEConfig:
    layer: int = field(default=4, metadata={
        "help": "edited layer (its MLP down-projection); default: from the model's depth (editors/settings.py) "
                "unless the model's shipped file sets it"})
    v_num_grad_steps: int = field(default=25, metadata={"help": "Adam steps for the value δ"})
    v_lr: float = field(default=0.5, metadata={"help": "Adam learning rate for δ"})
    v_weight_decay: float = field(default=1e-3, metadata={"help": "weight of ‖δ‖/‖v₀‖² in the loss"})
    clamp_norm_factor: float = field(default=4.0, metadata={"help": "‖δ‖ ≤ factor·‖v₀‖"})
    kl_factor: float = field(default=0.0625, metadata={"help": "weight of the KL essence term"})
    early_stop_loss: float = field(default=5e-2, metadata={"help": "stop optimising δ below this loss"})
    kl_prompts: tuple[str, ...] = field(default=("{} is a",), metadata={"help": "prompts whose next-token distribution is kept"})
    context_template_length_params: tuple[tuple[int, int], ...] = field(
        default=((5, 10), (10, 10)), metadata={"help": "[[new tokens, count], ...] of generated prefixes"})
    context_seed: int = field(default=0, metadata={"help": "seed for sampling the prefixes"})
    update_key: str = field(default="averaged", metadata={"help": "'averaged' (r-ROME fix) or 'prompt' (reference ROME)"})
    mom2_adjustment: bool = field(default=True, metadata={
        "help": "use C⁻¹ in the update (ROME paper); false = C = I, EasyEdit's Llama setting; unused by AlphaEdit"})
    nullspace: NullspaceConfig = field(default_factory=NullspaceConfig, metadata={
        "help": "AlphaEdit's null-space-constrained update instead of the rank-one one (off by default)"})
    stats: StatsConfig = field(default_factory=StatsConfig, metadata={"help": "key statistics C"})

    def __post_init__(self) -> None:
        if self.update_key not in ("averaged", "prompt"):
            raise ValueError(f"update_key must be 'averaged' or 'prompt', not {self.update_key!r}")
        if self.v_num_grad_steps < 1 or self.v_lr <= 0 or self.clamp_norm_factor <= 0:
            raise ValueError("v_num_grad_steps >= 1, v_lr > 0 and clamp_norm_factor > 0 are required")

    @property
    def value(self) -> ValueConfig:
        return ValueConfig(self.v_num_grad_steps, self.v_lr, self.v_weight_decay, self.clamp_norm_factor,
                           self.kl_factor, self.early_stop_loss, tuple(self.kl_prompts))


def solve_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where a layer's output is recomputed for an update: the weight's own dtype in float32/64,
    float32 for a bfloat16 / float16 model (the update itself is solved in float64)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def layer_output(module: torch.nn.Module, k: torch.Tensor) -> torch.Tensor:
    """``module(k)`` for one key k ``(d_in,)`` in :func:`solve_dtype` of its weight: a float32 model
    runs its own module; a bfloat16 / float16 one a float32 copy of this one layer's weights (exact:
    every bfloat16 / float16 value is a float32), so the residual v* − W k is not rounded to 8 bits."""
    dtype = solve_dtype(module.weight.dtype)
    if dtype == module.weight.dtype:
        return module(k[None].to(dtype))[0]
    params = {n: p.to(dtype) for n, p in module.named_parameters(recurse=False)}
    return torch.func.functional_call(module, params, (k[None].to(dtype),))[0]


def rank_one_update(W_apply, C: torch.Tensor | None, k_star: torch.Tensor, k_update: torch.Tensor, v_star: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The factors (Λ (d_out,), u (d_in,)) of ΔW = Λ uᵀ, solved in float64.

    ``W_apply(k)`` is the layer's original output for key k (bias included); u = C⁻¹k*/‖C⁻¹k*‖ and
    Λ = (v* − W k_update)/(uᵀ k_update), so that (W + Λuᵀ) k_update = v*. ``C=None`` means C = I.
    """
    k64 = k_star.to(torch.float64)
    # C may wait on the CPU while the keys are on an accelerator: the solve runs where the keys are.
    u = k64 if C is None else torch.linalg.solve(C.to(device=k64.device, dtype=torch.float64), k64)  # (d_in,)
    u = u / u.norm()
    residual = v_star.to(torch.float64) - W_apply(k_update).to(torch.float64)  # (d_out,)
    lam = residual / torch.dot(u, k_update.to(torch.float64))
    return lam, u


@register_editor
class ROME(Editor):
    name = "rome"
    config_cls = ROMEConfig

    def __init__(self, lm, config=None) -> None:
        super().__init__(lm, config)
        lm.check_layer(self.config.layer)
        self._templates: list[str] | None = None
        self._C: torch.Tensor | None = None
        self._null = NullSpaceState(self.config.nullspace)

    def context_templates(self) -> list[str]:
        if self._templates is None:  # generated once per editor: the same for every request
            cfg = self.config
            self._templates = generate_context_templates(self.lm, cfg.context_template_length_params, cfg.context_seed)
        return self._templates

    def prepare(self) -> None:
        self.context_templates()
        if self.config.nullspace.enabled:
            self.null_basis()
        elif self.config.mom2_adjustment:
            self.covariance()

    def covariance(self) -> torch.Tensor:
        if self._C is None:  # from the disk cache (or computed) once per editor
            self._C = second_moment(self.lm, self.config.layer, self.config.stats)
        return self._C

    def null_basis(self) -> torch.Tensor:
        """Û ``(d_in, r)``: AlphaEdit's null space of C at the layer (computed once per editor)."""
        return self._null.basis(self.config.layer, self.covariance())

    def commit(self, delta: Delta) -> None:
        """With ``nullspace.enabled``, remember the keys of an applied delta: later edits then
        leave them nearly unchanged. Otherwise nothing (the rank-one update has no memory)."""
        if self.config.nullspace.enabled:
            self._null.commit(delta, {self.lm.down_proj_weight_name(self.config.layer): self.config.layer})

    def edit(self, requests: list[EditRequest]) -> Delta:
        if not requests:
            raise ValueError("no requests to edit")
        total: dict[str, torch.Tensor] = {}
        keys: dict[str, list[torch.Tensor]] = {}
        infos, backups = [], []
        try:
            for request in requests:
                # AlphaEdit preserves the keys of this call's earlier requests like committed ones.
                earlier = [k for ks in keys.values() for k in ks]
                delta = self._edit_one(request, earlier)
                infos.append(delta.info)
                for name, d in delta.weights.items():
                    total[name] = total[name] + d if name in total else d
                    keys.setdefault(name, []).append(delta.keys[name][:, 0])
                if len(requests) > 1:
                    backups.append(apply_delta(self.lm, delta))
        finally:
            for backup in reversed(backups):
                backup.restore()
        info = infos[0] if len(infos) == 1 else {"editor": self.name, "requests": infos}
        return Delta(total, info, keys={name: torch.stack(ks, dim=1) for name, ks in keys.items()})

    def _edit_one(self, request: EditRequest, earlier: list[torch.Tensor]) -> Delta:
        """The delta of one request on the current model; ``earlier`` are the keys ``(d_in,)`` of
        requests edited before it in the same call (used by AlphaEdit only)."""
        cfg, lm, sw = self.config, self.lm, Stopwatch()
        module = lm.down_proj(cfg.layer)
        with sw("context"):
            contexts = self.context_templates()
        with sw("stats"):
            C = self.covariance() if cfg.mom2_adjustment and not cfg.nullspace.enabled else None
            basis = self.null_basis() if cfg.nullspace.enabled else None
        with sw("key"):
            templates = [c.format(request.prompt) for c in contexts]
            keys = subject_keys(lm, cfg.layer, templates, request.subject).to(solve_dtype(lm.dtype))  # (N, d_in)
            k_star = keys.mean(0)
            k_update = k_star if cfg.update_key == "averaged" else keys[0]  # contexts[0] is "{}"
        with sw("value"):
            value = optimize_value(lm, cfg.layer, request, templates, cfg.value)
        extra: dict = {}
        with sw("update"), torch.no_grad():
            if basis is None:
                lam, u = rank_one_update(lambda k: layer_output(module, k), C, k_star, k_update, value.target)
                dW = lm.spec.stored(torch.outer(lam, u))
            else:
                K = k_update[:, None]  # (d_in, 1)
                R = (value.target.double() - layer_output(module, k_update).double())[:, None]  # (d_out, 1)
                preserved = with_keys(self._null.preserved(cfg.layer), earlier)
                upd = alphaedit_update(K, R, basis, preserved, cfg.nullspace.l2)  # (d_out, d_in)
                dW = lm.spec.stored(upd)
                extra = {"nullspace": {"rank": basis.shape[1], "fit_error": fit_error(upd, K, R),
                                       "preserved_keys": self._null.counts.get(cfg.layer, 0) + len(earlier)}}
        info = {
            "editor": self.name,
            "layer": cfg.layer,
            "value_steps": value.steps,
            "value_loss": value.losses[-1],
            "convergence": value.convergence(),
            "delta_norm": float(value.delta.norm()),
            "v0_norm": float(value.target_init.norm()),
            "v_star_norm": float(value.target.norm()),
            "timing": sw.times,
            **extra,
        }
        name = lm.down_proj_weight_name(cfg.layer)
        return Delta({name: dW.to(module.weight.dtype)}, info, keys={name: k_update.detach()[:, None]})
