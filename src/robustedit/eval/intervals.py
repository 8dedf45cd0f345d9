"""How sure a figure is: 95% percentile-bootstrap intervals over cases.

Every table figure is a mean over cases of a per-case metric (``records.jsonl``). Resampling the
cases with replacement gives the interval of that mean; for "A beats B" the cases both runs scored
are paired and the per-case differences A − B resampled, which removes the variation between
cases that both editors share (a hard case is hard for both) and so resolves smaller effects.
Seeded: the same records always give the same interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_RESAMPLES = 10_000


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` cases and its bootstrap interval ``[low, high]``."""

    mean: float
    low: float
    high: float
    n: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}

    def format(self, scale: float = 100.0, digits: int = 1, signed: bool = False) -> str:
        """"85.0 [78.1, 91.2]" (``scale`` 100: shares as percentages)."""
        sign = "+" if signed else ""
        return f"{self.mean * scale:{sign}.{digits}f} [{self.low * scale:{sign}.{digits}f}, {self.high * scale:{sign}.{digits}f}]"


def bootstrap_mean(values, level: float = 0.95, resamples: int = N_RESAMPLES, seed: int = 0) -> Interval | None:
    """The mean of ``values`` with its percentile-bootstrap interval; None without values."""
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(float(x.mean()), float(low), float(high), int(x.size))


def paired_difference(a: dict[str, float], b: dict[str, float], level: float = 0.95,
                      resamples: int = N_RESAMPLES, seed: int = 0) -> Interval | None:
    """Mean of ``a[c] − b[c]`` over the cases ``c`` both hold, with its bootstrap interval."""
    shared = sorted(set(a) & set(b))
    return bootstrap_mean([a[c] - b[c] for c in shared], level, resamples, seed)


def per_case(records: list[dict], metric: str) -> dict[str, float]:
    """``{case_id: value}`` of ``metric`` over the records that have it."""
    return {str(r["case_id"]): float(r["metrics"][metric]) for r in records if r["metrics"].get(metric) is not None}
