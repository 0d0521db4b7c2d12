"""Bayesian posterior means, as LaunchDarkly documents them (references/003).

Posterior mean = w · data mean + (1 − w) · prior mean. The treatment prior is centred on the
control mean: the relative difference has prior ``N(0, σ²)``, so the prior sd of the
treatment mean is ``σ·|m_c|``. The control's weight is 1 (its data mean is its posterior).

* normal–normal (numeric and adjusted metrics): ``w = (1/v_t) / (1/v_t + 1/τ²)``;
* beta–binomial (unadjusted binary metrics): prior ``Beta(a, b)`` with mean ``p_c`` and the
  same relative sd, ``w = n / (n + a + b)``.

The difference ``treatment − control`` is then approximated as normal for the credible
interval, chance to beat control and expected loss (loss of shipping the treatment).

>>> r = normal_normal(1.1, 0.01, 1.0, 0.01, prior_sigma=0.3)
>>> round(r.precision_weight, 4), round(r.treatment_posterior_mean, 4)
(0.9, 1.09)
"""

from __future__ import annotations

import math
from statistics import NormalDist

from estimators.records import BayesResult

_STANDARD = NormalDist()


def _decision(model: str, estimator: str, w: float, post_t: float, post_var_t: float,
              m_c: float, v_c: float, alpha: float) -> BayesResult:
    mu = post_t - m_c
    sd = math.sqrt(post_var_t + v_c)
    z = _STANDARD.inv_cdf(1.0 - alpha / 2.0)
    if sd > 0:
        chance = _STANDARD.cdf(mu / sd)
        loss = sd * _STANDARD.pdf(mu / sd) - mu * _STANDARD.cdf(-mu / sd)
    else:
        chance = 1.0 if mu > 0 else 0.0 if mu < 0 else 0.5
        loss = max(0.0, -mu)
    return BayesResult(model, estimator, control_posterior_mean=m_c,
                       treatment_posterior_mean=post_t, precision_weight=w,
                       ci_low=mu - z * sd, ci_high=mu + z * sd,
                       chance_to_beat_control=chance, expected_loss=loss)


def normal_normal(m_t: float, v_t: float, m_c: float, v_c: float, prior_sigma: float,
                  alpha: float = 0.05, estimator: str = "diff") -> BayesResult:
    """Posterior of the treatment mean given its data mean ``m_t`` with variance ``v_t``."""
    model = "normal-normal"
    if m_c == 0.0:
        return BayesResult(model, estimator,
                           note="control mean is 0: a relative prior is undefined")
    if v_t <= 0.0:
        return BayesResult(model, estimator, note="treatment mean has zero variance")
    tau2 = (prior_sigma * m_c) ** 2
    w = (1.0 / v_t) / (1.0 / v_t + 1.0 / tau2)
    post = w * m_t + (1.0 - w) * m_c
    post_var = 1.0 / (1.0 / v_t + 1.0 / tau2)
    return _decision(model, estimator, w, post, post_var, m_c, v_c, alpha)


def beta_binomial(x_t: float, n_t: int, x_c: float, n_c: int, prior_sigma: float,
                  alpha: float = 0.05) -> BayesResult:
    """Beta–binomial posterior for a conversion rate (``x`` conversions of ``n`` units)."""
    model = "beta-binomial"
    if n_t < 1 or n_c < 1:
        return BayesResult(model, "diff", note="an arm has no units")
    p_c = x_c / n_c
    if p_c <= 0.0 or p_c >= 1.0:
        return BayesResult(model, "diff",
                           note=f"control rate is {p_c:g}: a relative prior is undefined")
    pseudo = max(0.0, (1.0 - p_c) / (prior_sigma**2 * p_c) - 1.0)  # a + b
    a = pseudo * p_c
    w = n_t / (n_t + pseudo)
    post = (a + x_t) / (pseudo + n_t)
    post_var = post * (1.0 - post) / (pseudo + n_t + 1.0)
    return _decision(model, "diff", w, post, post_var, p_c, p_c * (1.0 - p_c) / n_c, alpha)
