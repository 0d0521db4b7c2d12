"""Mean-difference and regression-adjusted estimators on two :class:`ArmSummary` values.

Column 0 of each summary is the outcome, the others are adjustment columns ``w``.

* :func:`diff` — ``ȳ_t − ȳ_c``.
* :func:`cuped` — pooled ``θ = S_ww⁻¹ S_wy`` (Deng, Xu, Kohavi & Walker 2013).
* :func:`cupac` — :func:`cuped` whose only covariate is a model prediction
  (Tang, Huang et al. 2020, DoorDash).
* :func:`mlrate` — interacted regression, per-arm ``θ_a`` (Lin 2013; Guo et al. 2021).
* :func:`adjusted` — :func:`cuped` on every pre-experiment column, the prediction and the
  selected in-experiment covariates together: the recommended default.

>>> import numpy as np
>>> from estimators.summary import ArmSummary
>>> t = ArmSummary(100, np.array([1.2, 0.1]), np.array([[1.0, 0.5], [0.5, 1.0]]))
>>> c = ArmSummary(100, np.array([1.0, 0.0]), np.array([[1.0, 0.5], [0.5, 1.0]]))
>>> round(cuped(t, c).effect, 6)
0.15
"""

from __future__ import annotations

import numpy as np

from estimators.contrast import Contrast, NotEstimable
from estimators.moments import FloatArray
from estimators.summary import ArmSummary, is_constant, transform_bound

_CONDITION_LIMIT = 1e12


def require_units(t: ArmSummary, c: ArmSummary) -> None:
    for label, arm in (("treatment", t), ("control", c)):
        if arm.n < 2:
            raise NotEstimable(f"{label} arm has {arm.n} unit(s); at least 2 are needed")


def diff(t: ArmSummary, c: ArmSummary) -> Contrast:
    """Difference in means; ``SE² = s²_t/n_t + s²_c/n_c``."""
    require_units(t, c)
    return Contrast(t.y_mean, c.y_mean, _variance(t) / t.n, _variance(c) / c.n, r_squared=0.0,
                    treatment_var_bound=t.y_bound / t.n, control_var_bound=c.y_bound / c.n)


def _variance(arm: ArmSummary) -> float:
    """The outcome's variance, 0 when it is zero up to rounding."""
    return 0.0 if arm.y_constant else arm.y_var


def solve_slopes(s_ww: FloatArray, s_wy: FloatArray,
                 w_bound: FloatArray | None = None) -> FloatArray:
    """``S_ww⁻¹ S_wy``, refusing constant or collinear covariates with a reason.

    ``w_bound``: the rounding bound of ``diag(S_ww)`` (a variance within it is zero).
    """
    diag = np.diag(s_ww)
    if np.any(~np.isfinite(s_ww)):
        raise NotEstimable("non-finite covariate statistics (an arm without data?)")
    bounds = np.zeros(len(diag)) if w_bound is None else w_bound
    if any(is_constant(float(v), float(b)) for v, b in zip(diag, bounds, strict=True)):
        raise NotEstimable("a covariate has zero variance: the covariate matrix is singular")
    scale = 1.0 / np.sqrt(diag)
    corr = s_ww * np.outer(scale, scale)
    eig = np.linalg.eigvalsh(corr) if len(corr) > 1 else np.ones(1)
    if eig[0] <= eig[-1] / _CONDITION_LIMIT:
        raise NotEstimable("covariates are collinear: the covariate matrix is singular")
    out: FloatArray = scale * np.linalg.solve(corr, s_wy * scale)
    return out


def pooled_cov(t: ArmSummary, c: ArmSummary) -> FloatArray:
    """Within-arm pooled covariance ``((n_t−1)C_t + (n_c−1)C_c) / (n_t + n_c − 2)``."""
    out: FloatArray = ((t.n - 1) * t.cov + (c.n - 1) * c.cov) / (t.n + c.n - 2)
    return out


def pooled_bound(t: ArmSummary, c: ArmSummary) -> FloatArray:
    """Rounding bound of :func:`pooled_cov` (the same weights on the arms' bounds)."""
    out: FloatArray = ((t.n - 1) * t.bound + (c.n - 1) * c.bound) / (t.n + c.n - 2)
    return out


def pooled_mean(t: ArmSummary, c: ArmSummary) -> FloatArray:
    out: FloatArray = (t.n * t.mean + c.n * c.mean) / (t.n + c.n)
    return out


def _residual_var(cov: FloatArray, theta: FloatArray) -> float:
    """``Var(y − θᵀw)`` from a covariance of ``(y, w)`` (≥ 0: rounding cannot go below)."""
    return max(0.0, float(cov[0, 0] - 2.0 * theta @ cov[1:, 0] + theta @ cov[1:, 1:] @ theta))


def _residual_bound(arm: ArmSummary, theta: FloatArray) -> float:
    """Rounding bound of :func:`_residual_var` (:func:`transform_bound` with ``a = (1, −θ)``)."""
    a = np.concatenate([[1.0], -theta])[None, :]
    return float(transform_bound(a, arm.cov, arm.bound)[0, 0])


def _arm_residual(arm: ArmSummary, theta: FloatArray) -> tuple[float, float]:
    """Residual variance and its bound; exactly 0 when within the bound."""
    v, b = _residual_var(arm.cov, theta), _residual_bound(arm, theta)
    return (0.0 if is_constant(v, b) else v), b


def cuped(t: ArmSummary, c: ArmSummary) -> Contrast:
    """CUPED with pooled θ: effect ``Δ(ȳ_a − θᵀ(w̄_a − w̄))``, ``SE² = Σ Var_a(y − θᵀw)/n_a``."""
    require_units(t, c)
    if t.k == 0:
        raise NotEstimable("no covariate to adjust with")
    s = pooled_cov(t, c)
    w_bar = pooled_mean(t, c)[1:]
    theta = solve_slopes(s[1:, 1:], s[1:, 0], np.diag(pooled_bound(t, c))[1:])
    mt = t.y_mean - float(theta @ (t.mean[1:] - w_bar))
    mc = c.y_mean - float(theta @ (c.mean[1:] - w_bar))
    (vt, bt), (vc, bc) = _arm_residual(t, theta), _arm_residual(c, theta)
    r2 = 1.0 - _residual_var(s, theta) / s[0, 0] if s[0, 0] > 0 else None
    return Contrast(mt, mc, vt / t.n, vc / c.n, r_squared=r2,
                    treatment_var_bound=bt / t.n, control_var_bound=bc / c.n)


def cupac(t: ArmSummary, c: ArmSummary) -> Contrast:
    """CUPAC: :func:`cuped` with the frozen model prediction ŷ as the covariate."""
    return cuped(t, c)


def adjusted(t: ArmSummary, c: ArmSummary) -> Contrast:
    """Pooled regression on pre-experiment covariates, ŷ and selected in-experiment ones."""
    return cuped(t, c)


def mlrate(t: ArmSummary, c: ArmSummary) -> Contrast:
    """Interacted regression ``y ~ T * (w − w̄)``: per-arm slopes, pooled centring.

    Effect ``(ȳ_t − θ_tᵀ(w̄_t − w̄)) − (ȳ_c − θ_cᵀ(w̄_c − w̄))`` equals the OLS treatment
    coefficient. Variance: residual variances per arm (n − k − 1) plus the heterogeneity term
    ``(θ_t − θ_c)ᵀ Σ_ww (θ_t − θ_c) / N`` from estimating ``w̄`` (Lin 2013; Guo et al. 2021).
    """
    require_units(t, c)
    if t.k == 0:
        raise NotEstimable("no covariate to adjust with")
    for label, arm in (("treatment", t), ("control", c)):
        if arm.n <= arm.k + 2:
            raise NotEstimable(f"{label} arm has {arm.n} units, too few for {arm.k} slopes")
    w_bar = pooled_mean(t, c)[1:]
    theta_t = solve_slopes(t.cov[1:, 1:], t.cov[1:, 0], np.diag(t.bound)[1:])
    theta_c = solve_slopes(c.cov[1:, 1:], c.cov[1:, 0], np.diag(c.bound)[1:])
    mt = t.y_mean - float(theta_t @ (t.mean[1:] - w_bar))
    mc = c.y_mean - float(theta_c @ (c.mean[1:] - w_bar))
    k = t.k
    (rt, bt), (rc, bc) = _arm_residual(t, theta_t), _arm_residual(c, theta_c)
    dof_t, dof_c = (t.n - 1) / (t.n - k - 1), (c.n - 1) / (c.n - k - 1)
    vt, vc = rt * dof_t, rc * dof_c
    n = t.n + c.n
    total_ww = _total_cov(t, c)[1:, 1:]
    dtheta = theta_t - theta_c
    extra = float(dtheta @ total_ww @ dtheta) / n
    s = pooled_cov(t, c)
    r2 = None
    if s[0, 0] > 0:
        resid = ((t.n - 1) * _residual_var(t.cov, theta_t)
                 + (c.n - 1) * _residual_var(c.cov, theta_c)) / (n - 2)
        r2 = 1.0 - resid / s[0, 0]
    return Contrast(mt, mc, vt / t.n, vc / c.n, extra_var=extra, r_squared=r2,
                    treatment_var_bound=bt * dof_t / t.n, control_var_bound=bc * dof_c / c.n)


def _total_cov(t: ArmSummary, c: ArmSummary) -> FloatArray:
    """Covariance of both arms taken as one sample."""
    n = t.n + c.n
    mean = pooled_mean(t, c)
    scatter = (t.n - 1) * t.cov + (c.n - 1) * c.cov
    for arm in (t, c):
        dm = arm.mean - mean
        scatter = scatter + arm.n * np.outer(dm, dm)
    out: FloatArray = scatter / (n - 1)
    return out
