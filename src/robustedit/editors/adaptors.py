"""Key adaptors: small modules that rewrite the keys entering an MLP down-projection.

The Robust Edit Pathway (REP paper §6, Eq. 5, Algorithm 1; ``editors/rep.py`` trains it) puts a
gated low-rank branch on the keys k (the down-projection's input, at every token):

    k̂ = k + m(k) · proj(k),    proj = Dropout → Linear(d_in → r) → Linear(r → d_in),
                                gate = Linear(d_in → h) → GELU → Linear(h → 1) → sigmoid,

with m = gate(k) in training and m = 1[gate(k) ≥ τ] at test time, so that a key whose gate stays
under τ passes through bit-identical. With ``preserve_norm`` (beyond the paper) k + m·proj(k) is
rescaled to ‖k‖ where the gate is open: the branch may turn a key but not enlarge it.

An edit that carries adaptors (``Delta.adaptors``) installs them with a forward pre-hook on their
module; several adaptors on one module *add* their branches,
each computed from the unadapted key: k̂ = k + Σᵢ mᵢ(k) projᵢ(k) (each was trained on unadapted
keys, so none should see another's output). Removing one leaves the others as they were.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from robustedit.editors.installed import InstalledList


class KeyAdaptor(nn.Module):
    """REP's gated low-rank branch on keys of width ``d_in`` (module docstring)."""

    def __init__(self, d_in: int, rank: int = 32, gate_hidden: int | None = None, dropout: float = 0.1,
                 tau: float = 0.9, preserve_norm: bool = False) -> None:
        super().__init__()
        self.d_in, self.rank, self.dropout, self.tau = d_in, rank, dropout, tau
        self.preserve_norm = preserve_norm
        self.gate_hidden = gate_hidden or max(1, round(0.1 * d_in))
        self.gate = nn.Sequential(nn.Linear(d_in, self.gate_hidden), nn.GELU(), nn.Linear(self.gate_hidden, 1))
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_in, rank), nn.Linear(rank, d_in))

    def config(self) -> dict[str, Any]:
        config = {"d_in": self.d_in, "rank": self.rank, "gate_hidden": self.gate_hidden,
                  "dropout": self.dropout, "tau": self.tau}
        if self.preserve_norm:  # only when set: tags of adaptors saved before the option stay valid
            config["preserve_norm"] = True
        return config

    def gate_prob(self, k: torch.Tensor) -> torch.Tensor:
        """sigmoid(gate(k)) ``(..., 1)``, float32."""
        return torch.sigmoid(self.gate(k.float()))

    def branch(self, k: torch.Tensor, hard: bool = True) -> torch.Tensor:
        """m(k)·proj(k) ``(..., d_in)`` float32: m binary (gate ≥ τ) if ``hard``, else the gate."""
        g = self.gate_prob(k)
        m = (g >= self.tau).float() if hard else g
        branch = m * self.proj(k.float())
        if not self.preserve_norm:
            return branch
        # k + branch rescaled to ‖k‖: the key turns but keeps its size; shut rows stay exactly 0
        kf = k.float()
        turned = kf + branch
        turned = turned * (kf.norm(dim=-1, keepdim=True) / turned.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        return torch.where(m > 0, turned - kf, torch.zeros_like(kf))

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        return k + self.branch(k).to(k.dtype)

    def tag(self) -> str:
        """A short hash of the configuration and parameters: names this adaptor in saved edits."""
        h = hashlib.sha256(repr(sorted(self.config().items())).encode())
        for name, p in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


class AdaptorStack(InstalledList):
    """Every adaptor installed on one module, applied by one forward pre-hook: k̂ = k + Σ branches.

    A key whose gates all stay closed is returned as the very same tensor (bit-identical). The
    stack lives on the module (attribute ``_robustedit_adaptors``) while it holds adaptors.
    """

    ATTRIBUTE = "_robustedit_adaptors"

    @property
    def adaptors(self) -> list[KeyAdaptor]:
        return self.items

    def register(self):
        return self.module.register_forward_pre_hook(self._pre)

    def add(self, adaptor: KeyAdaptor) -> None:
        adaptor.eval()
        adaptor.requires_grad_(False)
        super().add(adaptor)

    def apply(self, k: torch.Tensor) -> torch.Tensor:
        added = None
        for adaptor in self.adaptors:
            b = adaptor.to(k.device).branch(k)
            added = b if added is None else added + b
        if added is None or not bool(added.any()):
            return k  # every gate closed: the key itself, untouched
        return k + added.to(k.dtype)

    def _pre(self, _module: nn.Module, args: tuple) -> tuple:
        return (self.apply(args[0]), *args[1:])


def install(module: nn.Module, adaptor: KeyAdaptor) -> None:
    AdaptorStack.of(module).add(adaptor)


def uninstall(module: nn.Module, adaptor: KeyAdaptor) -> None:
    stack = getattr(module, AdaptorStack.ATTRIBUTE, None)
    if stack is not None:
        stack.remove(adaptor)
