"""Spread over seeds for `scripts/bench attack`: the mean and its two-sided 95% confidence
interval by Student's t on the per-seed values (each seed is one independent federation),
``mean ± t(0.975, n−1) · s / √n`` with ``s`` the sample standard deviation."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# t(0.975, df) for df = 1..30 (the usual table, to 3 decimals).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z975 = 1.959964


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (two-sided 95%)."""
    if df < 1:
        raise ValueError("a t quantile needs at least 1 degree of freedom")
    if df <= len(_T975):
        return _T975[df - 1]
    # Cornish-Fisher expansion around the normal quantile: within 1e-4 of the exact value
    # beyond 30 degrees of freedom.
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Spread:
    """Per-seed values summarised: mean, 95% CI half-width (nan for one value), min, max."""

    n: int
    mean: float
    half_width: float
    low: float
    high: float

    @property
    def ci(self) -> tuple[float, float]:
        return self.mean - self.half_width, self.mean + self.half_width

    def cell(self, scale: float = 100.0, digits: int = 1) -> str:
        """``mean ± half-width`` (scaled, e.g. to percent); the mean alone for one seed."""
        if self.n == 0:
            return "–"
        if self.n == 1:
            return f"{scale * self.mean:.{digits}f}"
        return f"{scale * self.mean:.{digits}f} ± {scale * self.half_width:.{digits}f}"


def spread(values: Sequence[float]) -> Spread:
    n = len(values)
    if n == 0:
        return Spread(0, math.nan, math.nan, math.nan, math.nan)
    mean = statistics.fmean(values)
    half = t975(n - 1) * statistics.stdev(values) / math.sqrt(n) if n > 1 else math.nan
    return Spread(n, mean, half, min(values), max(values))


CI_METHOD = (
    "mean ± half-width of its 95% confidence interval over seeds (Student t on the per-seed "
    "values: t(0.975, n−1) · s/√n, n seeds, s their sample standard deviation)"
)
