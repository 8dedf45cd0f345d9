"""The rank-one factors of a linear layer's weight gradient, and MEND's transform of them
(Mitchell et al. 2022a, "Fast Model Editing at Scale", §3.1–3.2; reference ``algs/mend.py``).

For a linear map y = W u applied at T positions, the gradient of a loss is a sum of rank-one
terms, ∇_W L = Σ_t δ_t u_tᵀ with δ_t = ∂L/∂y_t. MEND never forms ∇_W: it records u_t and δ_t
(:func:`gradient_factors`) and a small network maps each pair to (ũ_t, δ̃_t)
(:class:`GradientTransform`); the edit is ΔW = α Σ_t δ̃_t ũ_tᵀ (:func:`factor_update`).

The transform follows the reference: each factor is standardised with running statistics kept
during training (Welford), then passed through a stack of residual low-rank MLPs whose second
matrix starts at zero, so that at initialisation the network is the standardisation alone.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn


@dataclass
class Factors:
    """Inputs u ``(N, d_in)`` and output gradients δ ``(N, d_out)`` of one layer, one row per
    position that took part (padding rows, whose δ is zero, included)."""

    u: torch.Tensor
    delta: torch.Tensor


@contextmanager
def gradient_factors(modules: dict[str, nn.Module]) -> Iterator[dict[str, Factors]]:
    """Inside the block, every forward of a module in ``modules`` keeps its input and every
    backward through it its output gradient; on exit of the first backward, ``found[name]`` holds
    the :class:`Factors` of that module (one forward per module is expected)."""
    found: dict[str, Factors] = {}
    inputs: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def post(_mod, args, out):
            inputs[name] = args[0].detach()

            def on_grad(grad):
                u = inputs[name]
                found[name] = Factors(u.reshape(-1, u.shape[-1]), grad.detach().reshape(-1, grad.shape[-1]))
            if out.requires_grad:
                out.register_hook(on_grad)
        return post

    with ExitStack() as stack:
        for name, module in modules.items():
            stack.callback(module.register_forward_hook(keep(name)).remove)
        yield found


def factor_update(u: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Σ_t δ_t u_tᵀ, ``(d_out, d_in)``."""
    return delta.T @ u


class RunningNorm(nn.Module):
    """Standardise vectors with mean and standard deviation accumulated over every vector seen in
    training mode (Welford's algorithm, as the reference); frozen in eval mode."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64)
        n, batch_mean = len(x), x.mean(0)
        total = self.count + n
        shift = batch_mean - self.mean
        self.m2 += ((x - batch_mean) ** 2).sum(0) + shift ** 2 * self.count * n / total
        self.mean += shift * n / total
        self.count.copy_(total)

    @property
    def std(self) -> torch.Tensor:
        return (self.m2 / (self.count - 1).clamp(min=1)).sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.update(x)
        if self.count < 2:
            raise RuntimeError("RunningNorm needs at least two vectors before it can standardise")
        return (x - self.mean.to(x.dtype)) / (self.std.to(x.dtype) + 1e-7)


class ResidualLowRank(nn.Module):
    """x + B·act(A·x + a) + b with B (and b) zero at initialisation: the identity until trained."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


class GradientTransform(nn.Module):
    """(u, δ) → (ũ, δ̃): standardise each factor (``normalize``), then ``n_hidden`` residual
    low-rank MLPs of width ``rank`` on each side (the reference's non-combined variant)."""

    def __init__(self, d_in: int, d_out: int, rank: int = 1920, n_hidden: int = 1, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = normalize
        self.u_norm, self.delta_norm = RunningNorm(d_in), RunningNorm(d_out)
        self.u_net = nn.Sequential(*[ResidualLowRank(d_in, min(rank, d_in)) for _ in range(n_hidden)])
        self.delta_net = nn.Sequential(*[ResidualLowRank(d_out, min(rank, d_out)) for _ in range(n_hidden)])

    def forward(self, u: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, delta = u.float(), delta.float()
        keep = (u != 0).any(-1) & (delta != 0).any(-1)  # padding and positions the loss ignores
        u, delta = u[keep], delta[keep]
        if self.normalize:
            u, delta = self.u_norm(u), self.delta_norm(delta)
        return self.u_net(u), self.delta_net(delta)


class MENDNet(nn.Module):
    """MEND's editor network: one :class:`GradientTransform` per edited weight and a learned step
    α per weight (initialised to ``init_lr``, as the reference's ``edit_lrs``).

    ``shapes`` maps each edited weight's name to (d_in, d_out). The update is
    ΔW = −α Σ_t δ̃_t ũ_tᵀ: with transforms still at the identity and no standardisation this is one
    gradient-descent step of size α (the reference adds +α·(…) and lets training find the sign; we
    start from the descent direction).
    """

    def __init__(self, shapes: dict[str, tuple[int, int]], rank: int = 1920, n_hidden: int = 1,
                 init_lr: float = 1e-4, normalize: bool = True) -> None:
        super().__init__()
        self.names = list(shapes)
        # ModuleDict keys may not contain "."; weight names do.
        self.transforms = nn.ModuleDict({
            _key(n): GradientTransform(d_in, d_out, rank, n_hidden, normalize) for n, (d_in, d_out) in shapes.items()})
        self.lrs = nn.Parameter(torch.full((len(self.names),), float(init_lr)))

    def transform(self, name: str) -> GradientTransform:
        return self.transforms[_key(name)]

    def updates(self, factors: dict[str, Factors], stored=lambda update: update) -> dict[str, torch.Tensor]:
        """ΔW by weight name from each weight's recorded :class:`Factors`, in the storage layout
        ``stored`` gives (``ArchSpec.stored``; default ``nn.Linear``'s ``(d_out, d_in)``)."""
        out = {}
        for i, name in enumerate(self.names):
            u, delta = self.transform(name)(factors[name].u, factors[name].delta)
            out[name] = -self.lrs[i] * stored(factor_update(u, delta))
        return out


def _key(name: str) -> str:
    return name.replace(".", "#")
