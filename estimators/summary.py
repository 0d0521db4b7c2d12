"""Per-arm summaries (n, means, covariances) of an outcome and its adjustment columns.

Every estimator works on an :class:`ArmSummary` whose column 0 is the outcome and whose
remaining columns are covariates. A ratio metric enters through its delta-method
linearisation ``l = (num − R·den) / mean(den)`` (Deng et al. 2018), whose mean is the ratio
``R`` itself, so every regression estimator applies to ratios unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from estimators.moments import FloatArray, MomentMatrix

CONSTANT_TOLERANCE = 1e-14


def is_constant(variance: float, mean: float) -> bool:
    """True when a variance is zero up to float rounding of values of size ``mean``.

    Moment sums of a constant column keep a rounding residue of about ``eps·mean²``; a real
    variance is far larger (a mean 10⁶ standard deviations from zero is beyond float64 anyway).
    """
    return not variance > CONSTANT_TOLERANCE * mean * mean


@dataclass(frozen=True, eq=False)
class ArmSummary:
    """n, mean vector and sample covariance of ``(y, w_1 .. w_k)`` in one arm."""

    n: int
    mean: FloatArray
    cov: FloatArray

    @property
    def y_mean(self) -> float:
        return float(self.mean[0])

    @property
    def y_var(self) -> float:
        return float(self.cov[0, 0])

    @property
    def k(self) -> int:
        """Number of adjustment columns."""
        return len(self.mean) - 1


def summarize(m: MomentMatrix, outcome: str, covariates: Sequence[str] = ()) -> ArmSummary:
    """Summary of ``outcome`` and ``covariates`` from a moment matrix."""
    sub = m.select([outcome, *covariates])
    return ArmSummary(sub.n, sub.mean, sub.cov)


def summarize_ratio(m: MomentMatrix, numerator: str, denominator: str,
                    covariates: Sequence[str] = ()) -> ArmSummary:
    """Summary of the linearised ratio ``Σnum/Σden`` and ``covariates``.

    The outcome column is ``l = R + (num − R·den)/d̄``: its mean is ``R`` and its variance
    is the delta-method variance ``(s_nn − 2R s_nd + R² s_dd)/d̄²`` per unit.
    """
    sub = m.select([numerator, denominator, *covariates])
    mean, cov = sub.mean, sub.cov
    d_bar = float(mean[1])
    k = len(covariates)
    if sub.n == 0 or d_bar == 0.0:
        return ArmSummary(sub.n, np.full(k + 1, np.nan), np.full((k + 1, k + 1), np.nan))
    r = float(mean[0]) / d_bar
    # linear map from (num, den, w...) to (l, w...)
    a = np.zeros((k + 1, k + 2))
    a[0, 0] = 1.0 / d_bar
    a[0, 1] = -r / d_bar
    a[1:, 2:] = np.eye(k)
    new_mean = np.concatenate([[r], mean[2:]])
    return ArmSummary(sub.n, new_mean, a @ cov @ a.T)
