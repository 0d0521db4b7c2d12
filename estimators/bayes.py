"""Bayesian posterior means, as LaunchDarkly documents them (references/003).

Posterior mean = w · data mean + (1 − w) · prior mean. The treatment prior is centred on the
control mean: the relative difference has prior ``N(0, σ²)``, so the prior sd of the
treatment mean is ``σ·|m_c|``. The control's weight is 1 (its data mean is its posterior).

* normal–normal (numeric and adjusted metrics): ``w = (1/v_t) / (1/v_t + 1/τ²)``;
* beta–binomial (unadjusted binary metrics): prior ``Beta(a, b)`` with mean ``p_c`` and the
  same relative sd, ``w = n / (n + a + b)``.

Normal–normal: the difference ``D = treatment − control`` is normal, so the credible
interval, chance to beat control and expected loss (loss of shipping the treatment,
``E[max(0, −D)]``) are closed-form.

Beta–binomial: both posteriors are exact Betas, the treatment's ``Beta(a + x_t, b + n_t − x_t)``
and the control's ``Beta(x_c, n_c − x_c)`` (its data alone: mean exactly ``p_c``, weight 1, as
above). ``P(T > C)``, ``E[max(0, C − T)]`` and the quantiles of ``T − C`` are one-dimensional
integrals over the quantile of the *narrower* posterior (``∫₀¹ F_C(F_T⁻¹(v)) dv`` etc.: the
integrand is then smooth, whatever the sample sizes), by tanh–sinh quadrature (257 nodes,
its error estimated from the rule at twice the step; adaptive ``scipy.integrate.quad`` when
that estimate exceeds 1e-10), the interval's ends by Brent's method to 1e-10.
Tested against independent integration over the densities (``tests/estimators/
test_bayes_exact.py``: largest difference of the chance to beat control < 1e-8). The prior
needs ``a + b = (1 − p_c)/(σ² p_c) − 1``, improper (≤ 0) when ``p_c ≥ 1/(1 + σ²)``; below one
pseudo-unit it is clamped to one pseudo-unit (a proper, weaker-than-asked prior) with a note.

>>> r = normal_normal(1.1, 0.01, 1.0, 0.01, prior_sigma=0.3)
>>> round(r.precision_weight, 4), round(r.treatment_posterior_mean, 4)
(0.9, 1.09)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from statistics import NormalDist

import numpy as np
from scipy import integrate, optimize, special

from estimators.moments import FloatArray
from estimators.records import BayesResult

_STANDARD = NormalDist()
MIN_PRIOR_UNITS = 1.0  # the weakest beta prior used: a + b ≥ one pseudo-unit
QUAD_TOLERANCE = 1e-10
_NEGLIGIBLE = 1e-17  # probability mass below float64 resolution of a probability near 1


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
    """Beta–binomial posterior for a conversion rate (``x`` conversions of ``n`` units).

    >>> r = beta_binomial(130, 5000, 100, 5000, prior_sigma=0.3)
    >>> round(r.chance_to_beat_control, 4), r.note
    (0.9691, None)
    """
    model = "beta-binomial"
    if n_t < 1 or n_c < 1:
        return BayesResult(model, "diff", note="an arm has no units")
    if x_c <= 0 or x_c >= n_c:
        what = "no control unit converted" if x_c <= 0 else "every control unit converted"
        return BayesResult(model, "diff", note=f"{what} (control rate {x_c / n_c:g}): a prior "
                                               "relative to the control rate is undefined")
    p_c = x_c / n_c
    pseudo = (1.0 - p_c) / (prior_sigma**2 * p_c) - 1.0  # a + b
    note = None
    if pseudo < MIN_PRIOR_UNITS:
        kind = "improper" if pseudo <= 0 else "weaker than one unit"
        pseudo = MIN_PRIOR_UNITS
        rel_sd = math.sqrt((1.0 - p_c) / (p_c * (pseudo + 1.0)))
        note = (f"prior clamped: a relative sd of {prior_sigma:g} at control rate {p_c:.4g} "
                f"needs a {kind} Beta prior (improper from rate 1/(1+σ²) = "
                f"{1.0 / (1.0 + prior_sigma**2):.4g}); used {MIN_PRIOR_UNITS:g} pseudo-unit "
                f"(relative sd {rel_sd:.3g})")
    a, b = pseudo * p_c, pseudo * (1.0 - p_c)
    at, bt = a + x_t, b + n_t - x_t
    w = n_t / (n_t + pseudo)
    post = at / (at + bt)
    chance, loss, lo, hi = beta_difference(at, bt, x_c, n_c - x_c, alpha)
    return BayesResult(model, "diff", control_posterior_mean=p_c,
                       treatment_posterior_mean=post, precision_weight=w, ci_low=lo,
                       ci_high=hi, chance_to_beat_control=chance, expected_loss=loss, note=note)


Vec = Callable[[FloatArray], FloatArray]


def _cdf(a: float, b: float) -> Vec:
    return lambda x: special.betainc(a, b, np.clip(x, 0.0, 1.0))


def _sf(a: float, b: float) -> Vec:
    return lambda x: special.betainc(b, a, np.clip(1.0 - x, 0.0, 1.0))


def _tanh_sinh(levels: float = 4.0, step: float = 1.0 / 32.0
               ) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Nodes ``v``, ``1 − v`` (computed apart, for the upper tail) and weights of the
    tanh–sinh rule on (0, 1) with ``step`` (Takahasi & Mori 1974); the even nodes form the
    rule with twice the step, which gives the error estimate."""
    t = np.arange(-levels, levels + step / 2.0, step)
    u = np.pi / 2.0 * np.sinh(t)
    v, vc = special.expit(2.0 * u), special.expit(-2.0 * u)
    w = 2.0 * v * vc * np.pi / 2.0 * np.cosh(t) * step
    return v, vc, w


_V, _VC, _W = _tanh_sinh()


@functools.lru_cache(maxsize=64)
def _quantiles(a: float, b: float) -> FloatArray:
    """``F⁻¹`` of ``Beta(a, b)`` at the tanh–sinh nodes (cached: reused by every integrand)."""
    out: FloatArray = np.where(_V < 0.5, special.betaincinv(a, b, _V),
                               special.betainccinv(a, b, _VC))
    return out


def _over(a: float, b: float, f: Vec, lo: float = 0.0, hi: float = 1.0) -> float:
    """``∫_{lo}^{hi} f(x) dF(x) = ∫_{F(lo)}^{F(hi)} f(F⁻¹(v)) dv`` for ``X ~ Beta(a, b)``.

    Tanh–sinh quadrature (257 nodes; robust to the endpoint behaviour of ``F⁻¹``), its error
    estimated by the rule at twice the step; when that estimate exceeds
    :data:`QUAD_TOLERANCE` adaptive ``scipy.integrate.quad`` is used instead. Callers split
    the range where ``f`` has a kink (the other posterior's support ends), so the integrand
    is smooth on it.
    """
    v0 = float(special.betainc(a, b, lo)) if lo > 0.0 else 0.0
    upper = float(special.betaincc(a, b, hi)) if hi < 1.0 else 0.0  # 1 − F(hi), accurately
    if v0 <= _NEGLIGIBLE and upper <= _NEGLIGIBLE:  # the cut-off mass cannot show: one rule
        v0, width, x = 0.0, 1.0, _quantiles(a, b)
    else:
        width = (1.0 - upper) - v0 if v0 > 0.5 else float(special.betainc(a, b, hi)) - v0
        if not width > 0.0:
            return 0.0
        x = np.where(_V < 0.5, special.betaincinv(a, b, v0 + width * _V),
                     special.betainccinv(a, b, upper + width * _VC))
    fx = f(x)
    fine = float(_W @ fx)
    coarse = 2.0 * float(_W[::2] @ fx[::2])
    if abs(fine - coarse) * width <= QUAD_TOLERANCE:
        return fine * width
    val, _err = integrate.quad(lambda v: float(f(special.betaincinv(a, b, v))), v0, v0 + width,
                               epsabs=QUAD_TOLERANCE, epsrel=QUAD_TOLERANCE, limit=400)
    return float(val)


def beta_difference(at: float, bt: float, ac: float, bc: float, alpha: float = 0.05
                    ) -> tuple[float, float, float, float]:
    """``P(T > C)``, ``E[max(0, C − T)]`` and the ``1 − alpha`` equal-tailed interval of
    ``T − C`` for independent ``T ~ Beta(at, bt)``, ``C ~ Beta(ac, bc)`` (exact, by quadrature).

    >>> chance, loss, lo, hi = beta_difference(2.0, 2.0, 2.0, 2.0)
    >>> round(chance, 10), round(lo, 6) == -round(hi, 6)
    (0.5, True)
    """
    var_t = at * bt / ((at + bt) ** 2 * (at + bt + 1.0))
    var_c = ac * bc / ((ac + bc) ** 2 * (ac + bc + 1.0))
    mean_t, mean_c = at / (at + bt), ac / (ac + bc)
    cdf_d: Callable[[float], float]
    if var_t <= var_c:  # integrate over T's quantile
        cdf_c, sf_c, sf_c1 = _cdf(ac, bc), _sf(ac, bc), _sf(ac + 1.0, bc)
        chance = _over(at, bt, cdf_c)
        loss = _over(at, bt, lambda t: mean_c * sf_c1(t) - t * sf_c(t))

        def cdf_d(d: float) -> float:  # P(T − C ≤ d) = P(T ≤ d) + E[P(C ≥ T − d); d < T < 1 + d]
            below = float(special.betainc(at, bt, d)) if d > 0.0 else 0.0
            return below + _over(at, bt, lambda t: sf_c(t - d), max(d, 0.0), min(1.0 + d, 1.0))
    else:  # integrate over C's quantile
        sf_t, cdf_t, cdf_t1 = _sf(at, bt), _cdf(at, bt), _cdf(at + 1.0, bt)
        chance = _over(ac, bc, sf_t)
        loss = _over(ac, bc, lambda c: c * cdf_t(c) - mean_t * cdf_t1(c))

        def cdf_d(d: float) -> float:  # P(T ≤ C + d) = P(C ≥ 1 − d) + E[F_T(C + d); −d < C < 1 − d]
            above = float(special.betaincc(ac, bc, 1.0 - d)) if d > 0.0 else 0.0
            return above + _over(ac, bc, lambda c: cdf_t(c + d), max(-d, 0.0), min(1.0 - d, 1.0))
    mu, sd = mean_t - mean_c, math.sqrt(var_t + var_c)
    lo = _quantile(cdf_d, alpha / 2.0, mu, sd)
    hi = _quantile(cdf_d, 1.0 - alpha / 2.0, mu, sd)
    return min(1.0, max(0.0, chance)), max(0.0, loss), lo, hi


def _quantile(cdf: Callable[[float], float], q: float, mu: float, sd: float) -> float:
    """Solve ``cdf(d) = q`` on [−1, 1] by Brent's method, bracketing around the normal
    approximation's quantile (widened until it brackets; at most the whole range)."""
    guess = mu + _STANDARD.inv_cdf(q) * sd
    width = max(sd, 1e-12)
    lo, hi = max(-1.0, guess - width), min(1.0, guess + width)
    while lo > -1.0 and cdf(lo) > q:
        width *= 4.0
        lo = max(-1.0, guess - width)
    while hi < 1.0 and cdf(hi) < q:
        width *= 4.0
        hi = min(1.0, guess + width)
    return float(optimize.brentq(lambda d: cdf(d) - q, lo, hi, xtol=QUAD_TOLERANCE))
