"""What REP's two trainers (``rep_reference.py``, ``rep_paper.py``) share: the fitted adaptor with
its diagnostics, the whitened goal C⁻¹k*, the gate's width and the similarity they report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from robustedit.editors.adaptors import KeyAdaptor


@dataclass
class AdaptorFit:
    adaptor: KeyAdaptor
    info: dict[str, Any]


def whitened_targets(C: torch.Tensor, k_star: torch.Tensor) -> torch.Tensor:
    """C⁻¹ k* ``(n, d_in)`` float32 for keys k* ``(n, d_in)``, solved in float64."""
    return torch.linalg.solve(C.to(torch.float64), k_star.to(torch.float64).T).T.float()


def gate_width(cfg, d_in: int) -> int:
    """Hidden units of the gate: ``gate_hidden_fraction`` of the key width, truncated as the
    authors' ``int(feature_dim * ratio)`` (the paper variant keeps its earlier rounding)."""
    width = cfg.gate_hidden_fraction * d_in
    return max(1, int(width) if cfg.variant == "reference" else round(width))


def unit_similarity(keys: torch.Tensor, goal: torch.Tensor) -> float:
    """Mean of normalize(k)ᵀ normalize(goal) over rows: the cosine the trainers report, whatever
    the goal's scale (for C⁻¹k* it is the whitened similarity of Eq. 6 up to a constant)."""
    return float((F.normalize(keys.float(), dim=-1) * F.normalize(goal.float(), dim=-1)).sum(-1).mean())
