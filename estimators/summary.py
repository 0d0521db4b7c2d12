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

from estimators.moments import FloatArray, MomentMatrix, gamma


def is_constant(variance: float, bound: float) -> bool:
    """True when a variance is zero up to its rounding bound (or NaN).

    ``bound`` comes from the shifted sums (:attr:`MomentMatrix.cov_bound`, carried through
    linear maps by :func:`transform`), so it scales with the spread of the values around the
    shift, not with their mean: a column of 1.7e9 ± 85 is not constant.

    >>> is_constant(0.0, 0.0), is_constant(1e-20, 1e-18), is_constant(7225.0, 1e-3)
    (True, True, False)
    """
    return not variance > bound


def transform_bound(a: FloatArray, cov: FloatArray, bound: FloatArray) -> FloatArray:
    """Rounding bound of ``a·cov·aᵀ``: ``|a|·B·|a|ᵀ + γ_{2d}·|a|·|cov|·|a|ᵀ``.

    The first term carries the inputs' bounds, the second the rounding of the two
    d-term products (Higham 2002, §3.5).
    """
    abs_a = np.abs(a)
    out: FloatArray = (abs_a @ bound @ abs_a.T
                       + gamma(2 * cov.shape[0]) * (abs_a @ np.abs(cov) @ abs_a.T))
    return out


@dataclass(frozen=True, eq=False)
class ArmSummary:
    """n, mean vector and sample covariance of ``(y, w_1 .. w_k)`` in one arm."""

    n: int
    mean: FloatArray
    cov: FloatArray
    cov_bound: FloatArray | None = None  # rounding bound of ``cov`` (None: exact)

    @property
    def bound(self) -> FloatArray:
        """Rounding bound of ``cov`` (zeros when none was given)."""
        if self.cov_bound is None:
            return np.zeros_like(self.cov)
        return self.cov_bound

    @property
    def y_mean(self) -> float:
        return float(self.mean[0])

    @property
    def y_var(self) -> float:
        return float(self.cov[0, 0])

    @property
    def y_bound(self) -> float:
        return float(self.bound[0, 0])

    @property
    def y_constant(self) -> bool:
        """The outcome is constant in this arm (its variance is within rounding of 0)."""
        return is_constant(self.y_var, self.y_bound)

    def transformed(self, a: FloatArray, mean: FloatArray | None = None) -> ArmSummary:
        """The summary of ``a·(y, w)`` (``mean`` overrides ``a·mean``)."""
        new_mean = a @ self.mean if mean is None else mean
        return ArmSummary(self.n, new_mean, a @ self.cov @ a.T,
                          transform_bound(a, self.cov, self.bound))

    @property
    def k(self) -> int:
        """Number of adjustment columns."""
        return len(self.mean) - 1


def summarize(m: MomentMatrix, outcome: str, covariates: Sequence[str] = ()) -> ArmSummary:
    """Summary of ``outcome`` and ``covariates`` from a moment matrix."""
    sub = m.select([outcome, *covariates])
    return ArmSummary(sub.n, sub.mean, sub.cov, sub.cov_bound)


def summarize_ratio(m: MomentMatrix, numerator: str, denominator: str,
                    covariates: Sequence[str] = ()) -> ArmSummary:
    """Summary of the linearised ratio ``Σnum/Σden`` and ``covariates``.

    The outcome column is ``l = R + (num − R·den)/d̄``: its mean is ``R`` and its variance
    is the delta-method variance ``(s_nn − 2R s_nd + R² s_dd)/d̄²`` per unit.
    """
    sub = m.select([numerator, denominator, *covariates])
    mean = sub.mean
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
    return ArmSummary(sub.n, mean, sub.cov, sub.cov_bound).transformed(a, new_mean)
