"""MEND (Mitchell et al. 2022a, "Fast Model Editing at Scale"): a trained hypernetwork turns the
rank-one factors of the edit's gradient into a weight update; ``mend+sss`` is MEND whose
hypernetwork was trained with the SSS regularizer in its loss (the SSS paper, §5).

Editing (this module) takes one forward and one backward pass of the edit loss on the unedited
model, records each edited down-projection's inputs u and output gradients δ
(``editors/gradients.py``) and returns ΔW = −α Σ δ̃ ũᵀ from the trained :class:`MENDNet`.
Training (``training/mend.py``, ``robustedit train mend``) fits the hypernetwork.

**Choices where the paper or the reference leaves room** (each a hyperparameter):

- *Which weights.* The reference edits every MLP matrix of the last three layers (GPT-2's
  ``c_fc`` and ``c_proj``; for Llama EasyEdit lists ``gate_proj``, ``up_proj`` and
  ``down_proj``): ``matrices="mlp"`` (the architecture table's ``mlp_in`` plus the
  down-projection). Default ``matrices="down"``: their down-projections only, the matrix every
  other editor here edits, ``layers=[-3, -2, -1]`` (negative = counted from the top).
- *One transform per weight.* The reference shares one network between same-shaped weights with
  a learned layer embedding (``mend.shared``); here each weight has its own (the reference's
  non-shared variant), simpler and no slower on three layers.
- *The edit gradient of several requests* is that of the sum of their per-request mean token
  NLLs, so that a request's factors do not depend on how many others share the call.
- *The network's shape is read from the checkpoint* (``layers``, ``rank``, ``n_hidden``): the
  trained weights fix it; settings given at edit time that disagree are reported, not used.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch

from robustedit.editors.base import Delta, Editor, Stopwatch, register_editor
from robustedit.editors.gradients import Factors, MENDNet, gradient_factors
from robustedit.editors.sss import SSSConfig, per_example_nll, teacher_forced
from robustedit.errors import UserError
from robustedit.models.load import LanguageModel
from robustedit.request import EditRequest
from robustedit.editors.trained import LoopConfig, load_trained

EDIT_LOSS_ON = ("rephrase", "both")
MATRICES = ("down", "mlp")


@dataclass(frozen=True)
class MENDTrainConfig(LoopConfig):
    steps: int = field(default=300, metadata={"help": "optimizer steps (~12 min for SmolLM2 on 2 CPU cores; +SSS ~25 min)"})
    val_every: int = field(default=100, metadata={"help": "validate every N steps (and at the end); 0 = only at the end"})
    dataset: str = field(default="zsre-train", metadata={"help": "training edits (bundled name or file); tail held out"})
    batch_size: int = field(default=8, metadata={"help": "edits per step, applied as one joint update"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate of the hypernetwork (reference: 1e-6 for ~100k GPU steps)"})
    lr_lr: float = field(default=1e-4, metadata={"help": "Adam learning rate of the learned steps α (reference: 1e-4)"})
    edit_weight: float = field(default=0.1, metadata={"help": "c_e, weight of the edit loss (reference and SSS paper: 0.1)"})
    loc_weight: float = field(default=1.0, metadata={"help": "c_loc, weight of the KL locality loss (reference: 1.0)"})
    edit_loss_on: str = field(default="both", metadata={
        "help": "edit loss on the 'rephrase' only (reference) or on 'both' the rephrase and the edit prompt"})
    grad_clip: float = field(default=100.0, metadata={"help": "gradient-norm clip of the hypernetwork (reference: 100)"})
    seed: int = field(default=0, metadata={"help": "seed of the batch order and the network's initialisation"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1 or self.lr <= 0 or self.lr_lr < 0 or self.edit_weight < 0 or self.loc_weight < 0:
            raise UserError("train.batch_size >= 1, train.lr > 0 and non-negative lr_lr, edit_weight, loc_weight")
        if self.edit_loss_on not in EDIT_LOSS_ON:
            raise UserError(f"train.edit_loss_on must be one of {', '.join(EDIT_LOSS_ON)}")


@dataclass(frozen=True)
class MENDConfig:
    checkpoint: str = field(default="", metadata={
        "help": "folder of the trained editor (default: where `robustedit train mend` saves it)"})
    layers: tuple[int, ...] = field(default=(-3, -2, -1), metadata={"help": "layers whose down-projection is edited (negative: from the top)"})
    rank: int = field(default=1920, metadata={"help": "width of the transform's low-rank MLPs (reference: 1920; capped at the factor's size)"})
    n_hidden: int = field(default=1, metadata={"help": "residual low-rank MLPs per factor (reference: 1)"})
    init_lr: float = field(default=1e-4, metadata={"help": "initial learned step α (reference edit_lr: 1e-4)"})
    matrices: str = field(default="down", metadata={
        "help": "'down': each layer's down-projection; 'mlp': every MLP matrix of the layer, as the reference"})
    train: MENDTrainConfig = field(default_factory=MENDTrainConfig, metadata={"help": "training (robustedit train mend)"})

    def __post_init__(self) -> None:
        if not self.layers or self.rank < 1 or self.n_hidden < 0:
            raise UserError("mend needs at least one layer, rank >= 1 and n_hidden >= 0")
        if self.matrices not in MATRICES:
            raise UserError(f"mend.matrices must be one of {', '.join(MATRICES)}, not {self.matrices!r}")


@dataclass(frozen=True)
class MENDSSSConfig(MENDConfig):
    sss: SSSConfig = field(default_factory=SSSConfig, metadata={"help": "the SSS regularizer, used in training"})


def edited_weights(lm: LanguageModel, layers: tuple[int, ...], matrices: str = "down") -> dict[str, torch.nn.Module]:
    """Weight name → its module for the down-projections of ``layers`` (negative from the top)
    and, with ``matrices="mlp"``, the MLP's input projections before each."""
    out = {}
    for layer in layers:
        i = lm.check_layer(layer % lm.n_layers if layer < 0 else layer)
        if matrices == "mlp":
            for path in lm.spec.mlp_in:
                name = f"{lm.spec.layer_path(i)}.{path}"
                out[f"{name}.weight"] = lm.module(name)
        out[lm.down_proj_weight_name(i)] = lm.down_proj(i)
    return out


def weight_shapes(lm: LanguageModel, modules: dict[str, torch.nn.Module]) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of each edited weight, whatever its storage layout."""
    shapes = {}
    for name, module in modules.items():
        shapes[name] = lm.spec.in_out(module.weight)
    return shapes


@contextmanager
def _grad_only(params: list[torch.nn.Parameter]) -> Iterator[None]:
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
            p.grad = None


def edit_factors(lm: LanguageModel, modules: dict[str, torch.nn.Module], requests: list[EditRequest]) -> dict[str, Factors]:
    """u and δ of each edited weight for the edit loss of ``requests`` on the current weights."""
    tf = teacher_forced(lm, [r.text for r in requests], [r.target_new for r in requests])
    weights = [m.weight for m in modules.values()]
    with _grad_only(weights), gradient_factors(modules) as found:
        logits = lm.model(input_ids=tf.batch.input_ids, attention_mask=tf.batch.attention_mask, use_cache=False).logits
        torch.autograd.grad(per_example_nll(logits, tf).sum(), weights)
    return dict(found)


def build_net(lm: LanguageModel, cfg: MENDConfig) -> tuple[MENDNet, dict[str, torch.nn.Module]]:
    modules = edited_weights(lm, cfg.layers, cfg.matrices)
    net = MENDNet(weight_shapes(lm, modules), rank=cfg.rank, n_hidden=cfg.n_hidden, init_lr=cfg.init_lr)
    return net.to(lm.device), modules


@register_editor
class MEND(Editor):
    name = "mend"
    config_cls = MENDConfig
    trainer = "robustedit.training.mend:MENDTask"

    def __init__(self, lm, config=None) -> None:
        super().__init__(lm, config)
        from robustedit.config import from_dict

        state, meta = load_trained(self.config.checkpoint or None, self.name, lm, self.config)
        trained = meta["config"]
        shape = ("layers", "rank", "n_hidden", "init_lr", "matrices")
        arch = from_dict(MENDConfig, {k: trained[k] for k in shape if k in trained})  # older files: down only
        self.trained_with = {k: trained.get(k, "down") for k in ("layers", "rank", "n_hidden", "matrices")}
        self.net, self.modules = build_net(lm, arch)
        self.net.load_state_dict(state)
        self.net.eval().requires_grad_(False)

    def edit(self, requests: list[EditRequest]) -> Delta:
        if not requests:
            raise ValueError("no requests to edit")
        sw = Stopwatch()
        with sw("gradient"):
            factors = edit_factors(self.lm, self.modules, requests)
        with sw("transform"), torch.no_grad():
            updates = self.net.updates(factors, self.lm.spec.stored)
        info = {"editor": self.name, "trained_with": self.trained_with, "timing": sw.times,
                "delta_norm": {n: float(d.norm()) for n, d in updates.items()}}
        return Delta({n: d.to(self.lm.dtype) for n, d in updates.items()}, info)


@register_editor
class MENDWithSSS(MEND):
    name = "mend+sss"
    extends = "mend"
    config_cls = MENDSSSConfig
