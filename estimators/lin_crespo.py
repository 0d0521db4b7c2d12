"""Pre- plus in-experiment adjustment (Lin & Crespo 2024).

Step 1 removes what is known before exposure: the residual ``R = y − ŷ`` with the frozen
model prediction (:func:`residual_by_prediction`), or ``R = y − θᵀx`` with pooled CUPED slopes
when there are only covariates (:func:`residual_by_covariates`). Step 2 regresses ``R`` on the
*selected* in-experiment covariates ``z`` with pooled ``γ``: effect ``Δ mean(R − γᵀz)``.
"""

from __future__ import annotations

import numpy as np

from estimators.contrast import Contrast
from estimators.regression import cuped, diff, pooled_bound, pooled_cov, solve_slopes
from estimators.summary import ArmSummary


def _transform(s: ArmSummary, a: np.ndarray) -> ArmSummary:
    return s.transformed(a)


def residual_by_prediction(s: ArmSummary) -> ArmSummary:
    """``(y, ŷ, z…) → (y − ŷ, z…)``."""
    d = len(s.mean)
    a = np.zeros((d - 1, d))
    a[0, 0], a[0, 1] = 1.0, -1.0
    a[1:, 2:] = np.eye(d - 2)
    return _transform(s, a)


def residual_by_covariates(t: ArmSummary, c: ArmSummary, k: int
                           ) -> tuple[ArmSummary, ArmSummary]:
    """``(y, x_1..x_k, z…) → (y − θᵀx, z…)`` with θ pooled over both arms."""
    s = pooled_cov(t, c)
    theta = solve_slopes(s[1:k + 1, 1:k + 1], s[1:k + 1, 0], np.diag(pooled_bound(t, c))[1:k + 1])
    d = len(t.mean)
    a = np.zeros((d - k, d))
    a[0, 0] = 1.0
    a[0, 1:k + 1] = -theta
    a[1:, k + 1:] = np.eye(d - k - 1)
    return _transform(t, a), _transform(c, a)


def lin_crespo(t: ArmSummary, c: ArmSummary) -> Contrast:
    """Effect of residual ``R`` (column 0) adjusted by the selected ``z`` (other columns)."""
    if t.k == 0:
        return diff(t, c)
    return cuped(t, c)
