"""``proxy``: the *predicted metric* — a ridge model of in-experiment signals used AS the metric.

Bernhardsson ("Learning from users faster using machine learning", references/001) replaces
a noisy outcome (did the user convert?) by its prediction from many in-experiment page-hit
indicators, a linear model fitted with heavy regularisation on pooled data; the prediction
has a much smaller variance than the outcome, so intervals are tighter — *at the cost of
bias*: the proxy's effect is ``βᵀ(z̄_t − z̄_c)`` (+ the outcome's own weight), which equals the
outcome's effect only if treatment moves the outcome solely through the indicators, with the
same indicator → outcome relation in both arms, and without shrinkage. Ridge shrinks β, and
a treatment that changes the relation (a page that converts better in treatment) is invisible
to it. So this estimator is labelled ``biased=True`` in every output, is never a primary or
default estimator, and is reported separately from the unbiased ones.

The fit uses only sufficient statistics: the pooled moment matrix of ``(y, z_1..z_K)`` over
both arms gives the centred scatter ``S``; ``β = (S_zz + λ·diag(S_zz))⁻¹ S_zy`` (ridge on
standardised indicators). ``λ = 9`` mimics the post's 90% input dropout: for a linear model,
dropout with rate p is ridge with penalty ``p/(1−p)·diag(XᵀX)`` (Wager, Wang & Liang 2013).
Like the post (which lets dropout make this possible), the outcome itself may be an input
(``include_outcome``): with the penalty the model cannot just copy it.

Per arm the proxy's mean is ``α + βᵀ x̄_a`` and its per-unit variance ``βᵀ Cov_a(x) β``; the SE
treats β as fixed (as the post does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from estimators.contrast import Contrast, Inference, NotEstimable, to_estimate
from estimators.moments import FloatArray, MomentMatrix
from estimators.records import Estimate

__all__ = ["DEFAULT_RIDGE", "NAME", "ProxyFit", "fit_proxy", "proxy_contrast", "proxy_estimate"]

NAME = "proxy"
DEFAULT_RIDGE = 9.0  # ≡ 90% input dropout (Wager, Wang & Liang 2013)
BIAS_NOTE = ("biased by design: the metric is replaced by a ridge prediction from in-experiment "
             "signals (Bernhardsson's predicted metric); valid only if treatment acts through "
             "them with an unchanged relation — never use it as the decision estimate")


@dataclass(frozen=True)
class ProxyFit:
    """``proxy = intercept + Σ coefficients[c]·c`` over the inputs (indicators, outcome)."""

    outcome: str
    inputs: tuple[str, ...]
    intercept: float
    coefficients: FloatArray
    ridge: float
    r_squared: float  # pooled in-sample R² of the proxy for the outcome
    biased: bool = True


def fit_proxy(arms: Mapping[str, MomentMatrix] | Sequence[MomentMatrix], outcome: str,
              indicators: Sequence[str], ridge: float = DEFAULT_RIDGE,
              include_outcome: bool = True) -> ProxyFit:
    """Ridge fit of the outcome on the indicators over all arms pooled (moments only)."""
    if not (ridge >= 0.0 and math.isfinite(ridge)):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge}")
    if not indicators:
        raise NotEstimable("the proxy needs at least one in-experiment indicator")
    mats = list(arms.values()) if isinstance(arms, Mapping) else list(arms)
    if not mats:
        raise NotEstimable("no arms")
    inputs = tuple(dict.fromkeys([*indicators, *([outcome] if include_outcome else [])]))
    pooled = mats[0].select([outcome, *inputs])
    for m in mats[1:]:
        pooled = pooled + m.select([outcome, *inputs])
    if pooled.n < 3:
        raise NotEstimable(f"the pooled data have {pooled.n} unit(s); at least 3 are needed")
    s = pooled.scatter
    s_xx, s_xy, s_yy = s[1:, 1:], s[1:, 0], float(s[0, 0])
    diag = np.clip(np.diag(s_xx), 0.0, None)
    live = diag > 1e-12 * max(float(diag.max()), 1e-300)
    beta = np.zeros(len(inputs))
    if live.any():
        a = s_xx[np.ix_(live, live)] + ridge * np.diag(diag[live])
        beta[live] = np.linalg.lstsq(a, s_xy[live], rcond=None)[0]
    mean = pooled.mean
    intercept = float(mean[0] - beta @ mean[1:])
    resid = s_yy - 2.0 * float(beta @ s_xy) + float(beta @ s_xx @ beta)
    r2 = 1.0 - resid / s_yy if s_yy > 0 else float("nan")
    return ProxyFit(outcome, inputs, intercept, beta, ridge, r2)


def proxy_contrast(fit: ProxyFit, treatment: MomentMatrix, control: MomentMatrix) -> Contrast:
    """Arm means of the proxy and the variances of those means (β held fixed)."""
    out = []
    for label, m in (("treatment", treatment), ("control", control)):
        if m.n < 2:
            raise NotEstimable(f"{label} arm has {m.n} unit(s); at least 2 are needed")
        sub = m.select(list(fit.inputs))
        mean = fit.intercept + float(fit.coefficients @ sub.mean)
        var = max(float(fit.coefficients @ sub.cov @ fit.coefficients), 0.0)
        out.append((mean, var / m.n))
    (mt, vt), (mc, vc) = out
    return Contrast(mt, mc, vt, vc, r_squared=fit.r_squared)


def proxy_estimate(treatment: MomentMatrix, control: MomentMatrix, outcome: str,
                   indicators: Sequence[str], inf: Inference | None = None,
                   ridge: float = DEFAULT_RIDGE, include_outcome: bool = True,
                   pooled: Sequence[MomentMatrix] | None = None,
                   reference_se: float | None = None) -> Estimate:
    """The proxy's estimate, always ``biased=True`` with a note saying why.

    ``pooled``: the arms to fit on (default: these two); pass every arm of the experiment
    to use one fit for all comparisons; ``reference_se``: ``diff``'s SE (variance reduction).
    """
    try:
        fit = fit_proxy(pooled if pooled is not None else (treatment, control), outcome,
                        indicators, ridge, include_outcome)
        return to_estimate(NAME, proxy_contrast(fit, treatment, control),
                           inf if inf is not None else Inference(n_total=treatment.n + control.n),
                           reference_se=reference_se, bias_note=BIAS_NOTE)
    except NotEstimable as exc:
        return Estimate(NAME, biased=True, note=f"{exc}; {BIAS_NOTE}")
