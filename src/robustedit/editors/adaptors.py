"""Key adaptors: small modules that rewrite the keys entering an MLP down-projection.

The Robust Edit Pathway (REP paper §6, Eq. 5, Algorithm 1; ``editors/rep.py`` trains it) puts a
gated low-rank branch on the keys k (the down-projection's input, at every token):

    k̂ = k + m(k) · proj(k),    proj = Dropout → Linear(d_in → r) → Linear(r → d_in),
                                gate = Linear(d_in → h) → GELU → Linear(h → 1) → sigmoid,

with m = gate(k) and dropout in training (``adaptor.train()``) and m = 1[gate(k) ≥ τ] without
dropout at test time (``adaptor.eval()``), so that a key whose gate stays under τ passes through
bit-identical. Two forms of ``proj`` (``arch``):

- ``"linear"`` (the paper's figure, our first reading): two ordinary ``nn.Linear`` with biases, so
  the branch starts as a random map of the key;
- ``"lora"`` (the authors' code, ``aggregator.py``): LoRA factors without biases, the first
  Kaiming-uniform, the second zero, so the branch starts at exactly 0 and the adapted key is the
  key itself until training moves it (their scaling α/r is 32/32 = 1, hence omitted).

With ``preserve_norm`` (beyond the paper) k + m·proj(k) is rescaled to ‖k‖ where the gate is
open: the branch may turn a key but not enlarge it.

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

    ARCHS = ("linear", "lora")

    def __init__(self, d_in: int, rank: int = 32, gate_hidden: int | None = None, dropout: float = 0.1,
                 tau: float = 0.9, preserve_norm: bool = False, arch: str = "linear") -> None:
        super().__init__()
        if arch not in self.ARCHS:
            raise ValueError(f"adaptor arch must be one of {self.ARCHS}, not {arch!r}")
        self.d_in, self.rank, self.dropout, self.tau = d_in, rank, dropout, tau
        self.preserve_norm, self.arch = preserve_norm, arch
        self.gate_hidden = gate_hidden or max(1, round(0.1 * d_in))
        self.gate = nn.Sequential(nn.Linear(d_in, self.gate_hidden), nn.GELU(), nn.Linear(self.gate_hidden, 1))
        bias = arch == "linear"
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_in, rank, bias=bias), nn.Linear(rank, d_in, bias=bias))
        if arch == "lora":  # nn.Linear's default init is already Kaiming-uniform(a=√5) for the first factor
            nn.init.zeros_(self.proj[2].weight)

    def config(self) -> dict[str, Any]:
        config = {"d_in": self.d_in, "rank": self.rank, "gate_hidden": self.gate_hidden,
                  "dropout": self.dropout, "tau": self.tau}
        # Options only when set: tags of adaptors saved before an option existed stay valid.
        if self.preserve_norm:
            config["preserve_norm"] = True
        if self.arch != "linear":
            config["arch"] = self.arch
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
        """k̂: the soft gate (and dropout) in training mode, the binary gate at test time."""
        return k + self.branch(k, hard=not self.training).to(k.dtype)

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
