"""FT-L: constrained fine-tuning of one MLP down-projection (Zhu et al. 2020 via Meng et al. 2022;
as EasyEdit runs it, Yao et al. 2023), and ``ft-l+sss``, the same with the SSS regularizer.

The down-projection weights of ``layers`` (by default the layer ROME edits) are trained with Adam
on the teacher-forced negative log-likelihood of the new target after the edit prompt (Eq. 4 of
the SSS paper), one batch of ``batch_size`` requests per step, for at most ``steps`` passes over
the requests; after every step each weight is clamped to within ``norm_constraint`` of its
original value (the L∞ constraint that gives FT-L its name). Training stops when a pass's mean
loss falls below ``early_stop_loss`` (EasyEdit: 1e-2; a batch whose loss is already under it is
not stepped). The delta is the trained weights minus the originals; the model is restored.

With SSS (``editors/sss.py``) the loss of each step is (1 − C)·J + C·λ_max; early stopping still
looks at J alone (the edit's own loss), since λ_max does not go to zero.

A model in bfloat16 or float16 is trained through float32 master copies of the trained weights
(mixed precision): an Adam step (at most ~lr = 5e-4) is a few bfloat16 units of a typical weight
(|w| ≈ 0.03: one unit is 1.2e-4), so taken on the weights themselves every step would be rounded
and the smaller ones lost; on float32 masters they add up. The model's weights receive the
rounded masters after each step; a float32 model trains its weights directly, as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from robustedit.editors.base import Delta, Editor, Stopwatch, register_editor
from robustedit.editors.sss import SSSConfig, combined_loss, edit_loss_and_sss, teacher_forced
from robustedit.editors.values import convergence
from robustedit.errors import UserError
from robustedit.request import EditRequest


def _full_precision(t: torch.Tensor) -> bool:
    return t.dtype in (torch.float32, torch.float64)


@dataclass(frozen=True)
class FTLConfig:
    layers: tuple[int, ...] = field(default=(4,), metadata={
        "help": "layers whose MLP down-projection is trained (default: ROME's layer from the model's depth, "
                "editors/settings.py, unless the model's shipped file sets it)"})
    steps: int = field(default=25, metadata={"help": "passes over the requests (EasyEdit: 25)"})
    lr: float = field(default=5e-4, metadata={"help": "Adam learning rate (EasyEdit: 5e-4)"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay"})
    norm_constraint: float = field(default=5e-4, metadata={
        "help": "L∞ bound on each weight's change (EasyEdit GPT-2 XL: 5e-4); 0 = unconstrained"})
    early_stop_loss: float = field(default=1e-2, metadata={"help": "stop once a pass's mean loss is below this"})
    batch_size: int = field(default=1, metadata={"help": "requests per Adam step"})

    def __post_init__(self) -> None:
        if not self.layers:
            raise UserError("ft-l needs at least one layer")
        if self.steps < 1 or self.lr <= 0 or self.batch_size < 1 or self.norm_constraint < 0:
            raise UserError("ft-l needs steps >= 1, lr > 0, batch_size >= 1 and norm_constraint >= 0")


@dataclass(frozen=True)
class FTLSSSConfig(FTLConfig):
    sss: SSSConfig = field(default_factory=SSSConfig, metadata={"help": "the Semantic Sparse Space regularizer"})


@register_editor
class FTL(Editor):
    name = "ft-l"
    config_cls = FTLConfig

    def __init__(self, lm, config=None) -> None:
        super().__init__(lm, config)
        for layer in self.config.layers:
            lm.check_layer(layer)

    def sss(self) -> SSSConfig | None:
        return None

    def edit(self, requests: list[EditRequest]) -> Delta:
        if not requests:
            raise ValueError("no requests to edit")
        cfg, lm, sw = self.config, self.lm, Stopwatch()
        sss = self.sss()
        params = dict(lm.model.named_parameters())
        names = [lm.down_proj_weight_name(layer) for layer in cfg.layers]
        weights = [params[n] for n in names]
        originals = [w.detach().clone() for w in weights]
        # What Adam steps: the weights themselves in float32/64, float32 masters of lower precision.
        masters = [w if _full_precision(w) else w.detach().float().clone() for w in weights]
        bounds = [w0 if _full_precision(w0) else w0.float() for w0 in originals]
        flags = {n: p.requires_grad for n, p in params.items()}
        batches = [requests[i: i + cfg.batch_size] for i in range(0, len(requests), cfg.batch_size)]
        with sw("prepare"):
            tfs = [teacher_forced(lm, [r.text for r in b], [r.target_new for r in b]) for b in batches]
        losses, sss_values = [], []
        try:
            for n, p in params.items():
                p.requires_grad_(n in names)
            opt = torch.optim.Adam(masters, lr=cfg.lr, weight_decay=cfg.weight_decay)
            with sw("train"), torch.enable_grad():
                for _ in range(cfg.steps):
                    pass_losses = []
                    for tf in tfs:
                        J, lam = edit_loss_and_sss(lm, tf, sss)
                        pass_losses.append(float(J.detach()))
                        if lam is not None:
                            sss_values.append(float(lam.detach()))
                        if pass_losses[-1] >= cfg.early_stop_loss:
                            opt.zero_grad()
                            combined_loss(J, lam, sss).backward()
                            for w, m in zip(weights, masters):
                                if m is not w:  # the gradient goes to the float32 master
                                    m.grad, w.grad = w.grad.float(), None
                            opt.step()
                            with torch.no_grad():
                                for w, m, w0 in zip(weights, masters, bounds):
                                    if cfg.norm_constraint > 0:
                                        m.copy_(torch.clamp(m, w0 - cfg.norm_constraint, w0 + cfg.norm_constraint))
                                    if m is not w:
                                        w.copy_(m)  # rounded to the model's dtype
                    losses.append(sum(pass_losses) / len(pass_losses))
                    if losses[-1] < cfg.early_stop_loss:
                        break
            # The change the model's weights received, in their dtype (exact in float32/64).
            deltas = {n: (w.detach() - w0) if _full_precision(w) else (w.detach().float() - w0.float()).to(w.dtype)
                      for n, w, w0 in zip(names, weights, originals)}
        finally:
            with torch.no_grad():
                for w, w0 in zip(weights, originals):
                    w.copy_(w0)
            for n, p in params.items():
                p.requires_grad_(flags[n])
                p.grad = None
        info = {"editor": self.name, "layers": list(cfg.layers), "passes": len(losses), "losses": losses,
                "delta_max": max(float(d.abs().max()) for d in deltas.values()), "timing": sw.times,
                # the edit loss J of the last pass, measured before its steps: a cautious estimate
                "convergence": convergence(losses[-1], losses[-1])}
        if sss_values:
            info["sss"] = {"first": sss_values[0], "last": sss_values[-1]}
        return Delta(deltas, info)


@register_editor
class FTLWithSSS(FTL):
    name = "ft-l+sss"
    extends = "ft-l"
    config_cls = FTLSSSConfig

    def sss(self) -> SSSConfig | None:
        return self.config.sss
