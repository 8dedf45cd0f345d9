"""AlphaEdit: the null-space-constrained update (Fang et al. 2025, "AlphaEdit: Null-Space Constrained
Knowledge Editing for Language Models", ICLR 2025), an option of ROME and MEMIT.

ROME and MEMIT trade the fit of the new keys against the change on the keys the layer usually sees
(C = E[k kᵀ], ``robustedit.stats``). AlphaEdit instead confines the update to directions those keys
(almost) never use: with C = U Λ Uᵀ, Û the eigenvectors of small eigenvalue and P = Û Ûᵀ, every
update has the form ΔW = M P, so ΔW k ≈ 0 for every preserved key k. Inside that subspace it solves

    min_M  ‖M P K − R‖² + ‖M P K_p‖² + l2 ‖M P‖²

for the new keys K ``(d_in, n)`` with residuals R ``(d_out, n)`` and the keys K_p of edits committed
earlier (sequential editing: a new edit must not undo the old ones), so that

    ΔW = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + l2 I)⁻¹.

Where the paper and the reference code (``AlphaEdit_main.py``, ``get_project`` in
``experiments/evaluate.py``) leave a choice, we take the following:

- **The solve.** The reference computes X = (P (K Kᵀ + K_p K_pᵀ) + l2 I)⁻¹ P K Rᵀ in float32 and uses
  ΔW = Xᵀ. Since l2·X = P (K Rᵀ − (K Kᵀ + K_p K_pᵀ) X), X lies in the range of P: X = Û Y with
  Y = (Ûᵀ (K Kᵀ + K_p K_pᵀ) Û + l2 I)⁻¹ Ûᵀ K Rᵀ. We solve that r×r symmetric positive definite system
  (r = rank P) in float64: the same matrix, cheaper, and ΔW (I − P) = 0 holds to rounding.
- **C** is the uncentred second moment of the keys, as the reference's ``layer_stats(..., "mom2")``,
  over our corpus (``StatsConfig``); the reference uses 100 000 Wikipedia samples. We take its
  eigenvectors with ``eigh`` in float64 (the reference's SVD of a symmetric PSD matrix is the same).
- **The threshold.** The reference keeps the eigenvalues below an absolute 2e-2 (its hparams files
  for GPT-2 XL, GPT-J and Llama3-8B alike). The eigenvalue scale depends on the model and the layer,
  so three kinds are offered; the default is ``energy``: the smallest eigenvalues whose sum is at
  most a share of tr C, i.e. preserved keys keep the rest of their mean squared norm outside the
  subspace the update may touch. The maintainers suggest this form (AlphaEdit issue #38, where
  every eigenvalue fell under the absolute threshold). The reference's absolute 2e-2 would keep
  925–1378 of SmolLM2-135M's 1536 directions (layers 1–10), holding 11–62% of the energy; the
  ``relative`` form (λ < t·λ_max) swings with outlier eigenvalues: at t = 0.01 it keeps 0
  directions at layer 3 (λ_max 0.33) and 1534 at layer 2 (λ_max 76). Too small a null space fails
  too: the maintainers report that a low rank of P makes edits of many unrelated facts fail
  (issue #26), and a 5% share (220–400 directions per layer) collapsed on SmolLM2 before 200
  sequential edits.
- **l2** weighs ‖ΔW‖² against squared errors on keys, so its unit is ‖k‖². The fit at a new key k
  alone is shrunk by ‖P k‖² / (‖P k‖² + l2). The reference uses 10 (the paper's closed form has
  I, i.e. 1) for models with far wider MLPs (Llama3-8B: d_in = 14336).
- **The defaults, threshold 0.2 (energy) and l2 1**, were chosen on SmolLM2 on held-out cases
  (``benchmarks/nullspace_select.py``: 100 sequential edits of ``counterfact-val`` cases
  1100–1199, 10 per call; the reproduction edits cases 0–999). After 100 edits, perplexity
  (unedited 48.9) and top-1 success: 0.05 / 0.1 gave 59.5 and 0.96, 0.05 / 1 56.2 and 0.94,
  0.2 / 1 52.3 and 0.99 (plain MEMIT: 51.0 and 0.95). At 0.2 the null space has 673–755 of 1536
  directions at layers 3–6 (1534 at layer 2). Measured earlier on cases 0–99: 0.05 / 1e-2
  (the first default) 64.6 and 0.92, collapsing before 200 edits; 0.05 / 10 50.0 but 0.35, as the
  fit shrinks by ‖Pk‖²/(‖Pk‖² + 10) with ‖Pk‖² ≈ 1–3. Other models may want other values: rerun
  the benchmark.
- **The memory** is Σ K_p K_pᵀ per layer over the keys of committed edits (``Editor.commit``); the
  reference adds the keys it recomputes after applying the batch, which equal the keys the update
  used, because a layer's keys depend only on the layers below it, already updated when read.
- **λ C is dropped.** In AlphaEdit mode MEMIT's ``mom2_update_weight`` is unused, as in the
  reference (whose hparams still carry it), and so is ROME's ``mom2_adjustment``: P takes the
  place of C⁻¹.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from robustedit.editors.base import Delta
from robustedit.errors import UserError

log = logging.getLogger(__name__)
THRESHOLD_KINDS = ("energy", "relative", "absolute")


@dataclass(frozen=True)
class NullspaceConfig:
    """AlphaEdit's switch and hyperparameters, shared by ROME and MEMIT (see the module docstring)."""

    enabled: bool = field(default=False, metadata={
        "help": "replace the editor's update by AlphaEdit's null-space-constrained one"})
    threshold: float = field(default=0.2, metadata={
        "help": "which eigen-directions of C count as null; its meaning depends on threshold_kind"})
    threshold_kind: str = field(default="energy", metadata={
        "help": "'energy': smallest eigenvalues summing to <= threshold·tr C; 'relative': λ < threshold·λ_max; "
                "'absolute': λ < threshold (reference: 2e-2)"})
    l2: float = field(default=1.0, metadata={
        "help": "ridge on ‖ΔW‖², in units of ‖k‖² (reference: 10 for Llama3-8B)"})

    def __post_init__(self) -> None:
        if self.threshold_kind not in THRESHOLD_KINDS:
            raise ValueError(f"nullspace threshold_kind must be one of {', '.join(THRESHOLD_KINDS)}, "
                             f"not {self.threshold_kind!r}")
        if not self.threshold > 0:
            raise ValueError(f"nullspace threshold must be > 0, got {self.threshold}")
        if self.threshold_kind != "absolute" and not self.threshold < 1:
            raise ValueError(f"a {self.threshold_kind} nullspace threshold is a fraction in (0, 1), got {self.threshold}")
        if not self.l2 > 0:
            raise ValueError(f"nullspace l2 must be > 0 (it keeps the solve invertible), got {self.l2}")


def null_space_basis(C: torch.Tensor, threshold: float, kind: str = "energy") -> torch.Tensor:
    """Û ``(d_in, r)`` float64: orthonormal eigenvectors of C ``(d_in, d_in)`` with small eigenvalues.

    ``kind`` as in :class:`NullspaceConfig`. No direction selected is an error (the update would be
    zero and every edit silently fail); all of them only a warning (the update is unconstrained).
    """
    if kind not in THRESHOLD_KINDS:
        raise ValueError(f"unknown threshold kind {kind!r}; choose from {', '.join(THRESHOLD_KINDS)}")
    evals, evecs = torch.linalg.eigh(C.to(torch.float64))  # ascending
    if kind == "absolute":
        keep = evals < threshold
    elif kind == "relative":
        keep = evals < threshold * evals[-1]
    else:  # ascending, so the selection is the prefix of smallest eigenvalues
        keep = evals.cumsum(0) <= threshold * evals.sum()
    rank = int(keep.sum())
    if rank == 0:
        advice = "raise nullspace.threshold" + (" or use threshold_kind 'energy'" if kind != "energy" else "")
        raise UserError(f"no eigenvalue of the key covariance falls under the {kind} null-space threshold "
                        f"{threshold} (eigenvalues {float(evals[0]):.3g} to {float(evals[-1]):.3g}); {advice}")
    if rank == len(evals):
        log.warning("the %s null-space threshold %s selects all %d directions: the update is unconstrained",
                    kind, threshold, rank)
    return evecs[:, keep]


def projector(basis: torch.Tensor) -> torch.Tensor:
    """P = Û Ûᵀ ``(d_in, d_in)`` for an orthonormal basis Û ``(d_in, r)``."""
    return basis @ basis.T


def alphaedit_update(K: torch.Tensor, R: torch.Tensor, basis: torch.Tensor, preserved: torch.Tensor | None,
                     l2: float) -> torch.Tensor:
    """ΔW ``(d_out, d_in)`` float64 = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + l2 I)⁻¹, P = Û Ûᵀ.

    K ``(d_in, n)`` new keys, R ``(d_out, n)`` their residuals, ``basis`` Û ``(d_in, r)``,
    ``preserved`` Σ K_p K_pᵀ ``(d_in, d_in)`` of committed edits or None. Solved in the basis (see
    the module docstring), so the result is M Ûᵀ: zero on every direction outside the null space.
    """
    if not l2 > 0:
        raise ValueError(f"l2 must be > 0, got {l2}")
    K64, R64 = K.to(torch.float64), R.to(torch.float64)
    U = basis.to(device=K64.device, dtype=torch.float64)
    KU = U.T @ K64  # (r, n): the new keys in the null-space coordinates
    A = KU @ KU.T  # (r, r)
    if preserved is not None:
        A = A + U.T @ preserved.to(device=K64.device, dtype=torch.float64) @ U
    A = A + l2 * torch.eye(A.shape[0], dtype=torch.float64, device=A.device)  # symmetric positive definite
    Y = torch.linalg.solve(A, KU @ R64.T)  # (r, d_out)
    return (U @ Y).T


def fit_error(update: torch.Tensor, K: torch.Tensor, R: torch.Tensor) -> float:
    """‖ΔW K − R‖ / ‖R‖: 0 when the update maps every new key exactly to its residual."""
    R64 = R.to(torch.float64)
    return float((update @ K.to(torch.float64) - R64).norm() / R64.norm())


class NullSpaceState:
    """One editor's AlphaEdit state: Û per layer (from C, computed once) and the memory Σ K_p K_pᵀ
    per layer of the keys of committed edits (float64, on the keys' device). MEMIT's
    ``edit_memory`` uses the memory alone."""

    def __init__(self, config: NullspaceConfig) -> None:
        self.config = config
        self._bases: dict[int, torch.Tensor] = {}
        self._preserved: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}  # committed keys per layer

    def basis(self, layer: int, C: torch.Tensor) -> torch.Tensor:
        if layer not in self._bases:  # an eigendecomposition of C: ~1 s for d_in = 1536, so once
            self._bases[layer] = null_space_basis(C, self.config.threshold, self.config.threshold_kind)
        return self._bases[layer]

    def preserved(self, layer: int) -> torch.Tensor | None:
        return self._preserved.get(layer)

    def remember(self, layer: int, K: torch.Tensor) -> None:
        """Add committed keys K ``(d_in, n)`` to the layer's memory."""
        K64 = K.detach().to(torch.float64)
        outer = K64 @ K64.T
        self._preserved[layer] = outer if layer not in self._preserved else self._preserved[layer] + outer
        self.counts[layer] = self.counts.get(layer, 0) + K.shape[1]

    def commit(self, delta: Delta, layers: dict[str, int]) -> None:
        """Remember the keys of ``delta`` at each edited layer it touches (``layers``: parameter
        name → layer); parameters of other layers are none of this editor's business."""
        for name, layer in layers.items():
            if name not in delta.weights:
                continue
            if name not in delta.keys:
                raise ValueError(f"the delta changes {name} but carries no keys for it (was it loaded from disk, "
                                 f"or made by another editor?); AlphaEdit cannot remember what it preserved")
            self.remember(layer, delta.keys[name])


def with_keys(preserved: torch.Tensor | None, keys: list[torch.Tensor]) -> torch.Tensor | None:
    """``preserved`` + Σ k kᵀ over ``keys`` (each ``(d_in,)``), without changing ``preserved``."""
    for k in keys:
        k64 = k.to(torch.float64)
        outer = torch.outer(k64, k64)
        preserved = outer if preserved is None else preserved.to(torch.float64) + outer
    return preserved
