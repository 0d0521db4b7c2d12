"""Bayesian posterior means (DESIGN §3, LaunchDarkly's precision-weight formulas).

Hand-computed cases for both models, decision quantities against direct scipy computations,
degenerate inputs, and which model ``analyze_metric`` picks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from estimators import bayes
from estimators.analysis import AnalysisSettings, MetricSpec
from estimators.moments import MomentMatrix
from tests.estimators.simkit import compare

REL = 1e-12


def direct_decision(mu: float, sd: float, alpha: float = 0.05) -> tuple[float, float, float,
                                                                           float]:
    """(ci_low, ci_high, P(D > 0), E[max(0, −D)]) for D ~ N(mu, sd²), straight from scipy."""
    d = stats.norm(loc=mu, scale=sd)
    lo, hi = d.interval(1 - alpha)
    chance = d.sf(0.0)
    loss = integrate.quad(lambda x: -x * d.pdf(x), mu - 40 * sd, 0.0, epsabs=1e-14,
                          epsrel=1e-12)[0] if mu - 40 * sd < 0 else 0.0
    return float(lo), float(hi), float(chance), float(loss)


@pytest.mark.parametrize("m_t,v_t,m_c,v_c,sigma", [
    (1.1, 0.01, 1.0, 0.01, 0.3),       # docstring case: w = 0.9, posterior 1.09
    (0.052, 4e-6, 0.05, 3e-6, 0.1),
    (12.0, 0.5, 10.0, 0.4, 0.05),      # strong prior: w well below 1/2
    (-2.1, 0.02, -2.0, 0.02, 0.2),     # negative control mean: prior sd uses |m_c|
    (0.98, 1e-4, 1.0, 1e-4, 0.3),      # treatment worse than control
])
def test_normal_normal_hand_computed(m_t: float, v_t: float, m_c: float, v_c: float,
                                     sigma: float) -> None:
    """w = (1/v_t)/(1/v_t + 1/(σ m_c)²); posterior mean w·m_t + (1−w)·m_c; posterior var
    1/(1/v_t + 1/(σ m_c)²); difference D ~ N(post − m_c, post_var + v_c). Tolerance 1e-12
    relative (1e-9 for the quadrature loss)."""
    r = bayes.normal_normal(m_t, v_t, m_c, v_c, prior_sigma=sigma)
    tau2 = (sigma * m_c) ** 2
    w = (1 / v_t) / (1 / v_t + 1 / tau2)
    post = w * m_t + (1 - w) * m_c
    post_var = 1 / (1 / v_t + 1 / tau2)
    assert r.model == "normal-normal" and r.note is None
    assert r.precision_weight == pytest.approx(w, rel=REL)
    assert r.treatment_posterior_mean == pytest.approx(post, rel=REL)
    assert r.control_posterior_mean == m_c
    lo, hi, chance, loss = direct_decision(post - m_c, math.sqrt(post_var + v_c))
    assert r.ci_low == pytest.approx(lo, rel=1e-9)
    assert r.ci_high == pytest.approx(hi, rel=1e-9)
    assert r.chance_to_beat_control == pytest.approx(chance, rel=1e-9, abs=1e-15)
    assert r.expected_loss == pytest.approx(loss, rel=1e-8, abs=1e-15)


def test_normal_normal_docstring_numbers() -> None:
    """σ = 0.3, m_c = 1 → τ² = 0.09; v_t = 0.01 → w = 100/(100 + 11.1̅) = 0.9 exactly."""
    r = bayes.normal_normal(1.1, 0.01, 1.0, 0.01, prior_sigma=0.3)
    assert r.precision_weight == pytest.approx(0.9, rel=REL)
    assert r.treatment_posterior_mean == pytest.approx(1.09, rel=REL)


@pytest.mark.parametrize("x_t,n_t,x_c,n_c,sigma", [
    (130, 5000, 100, 5000, 0.3),
    (55, 1000, 60, 1000, 0.1),
    (4100, 10000, 4000, 10000, 0.05),
    (3, 40, 2, 50, 0.5),
])
def test_beta_binomial_hand_computed(x_t: int, n_t: int, x_c: int, n_c: int,
                                     sigma: float) -> None:
    """Prior Beta(a, b) with mean p_c and sd σ·p_c (checked with scipy.stats.beta);
    w = n/(n + a + b); posterior mean (a + x)/(a + b + n) = w·x/n + (1 − w)·p_c. Tolerance
    1e-10 relative. (Decision quantities from the exact Beta posteriors: test_bayes_exact.)"""
    r = bayes.beta_binomial(x_t, n_t, x_c, n_c, prior_sigma=sigma)
    p_c = x_c / n_c
    ab = (1 - p_c) / (sigma**2 * p_c) - 1
    a, b = ab * p_c, ab * (1 - p_c)
    prior = stats.beta(a, b)
    assert prior.mean() == pytest.approx(p_c, rel=1e-10)
    assert prior.std() == pytest.approx(sigma * p_c, rel=1e-10)
    w = n_t / (n_t + a + b)
    post = (a + x_t) / (a + b + n_t)
    assert post == pytest.approx(w * x_t / n_t + (1 - w) * p_c, rel=1e-12)
    assert r.model == "beta-binomial" and r.note is None
    assert r.precision_weight == pytest.approx(w, rel=1e-10)
    assert r.treatment_posterior_mean == pytest.approx(post, rel=1e-10)
    assert r.control_posterior_mean == pytest.approx(p_c, rel=1e-12)
    assert r.ci_low < post - p_c < r.ci_high


@pytest.mark.parametrize("call", [
    lambda: bayes.normal_normal(1.0, 0.01, 0.0, 0.01, 0.3),      # control mean 0
    lambda: bayes.normal_normal(1.0, 0.0, 1.0, 0.01, 0.3),       # zero treatment variance
    lambda: bayes.normal_normal(1.0, 0.0, 1.0, 0.0, 0.3),        # zero variance in both
    lambda: bayes.beta_binomial(0, 100, 0, 100, 0.3),            # control rate 0
    lambda: bayes.beta_binomial(100, 100, 100, 100, 0.3),        # control rate 1
    lambda: bayes.beta_binomial(0, 0, 10, 100, 0.3),             # empty treatment arm
    lambda: bayes.beta_binomial(3, 10, 0, 0, 0.3),               # empty control arm
])
def test_degenerate_inputs_return_a_note(call) -> None:  # type: ignore[no-untyped-def]
    """Degenerate inputs give a result with ``note`` set and no posterior, not an error."""
    r = call()
    assert r.note
    assert r.treatment_posterior_mean is None and r.chance_to_beat_control is None


# -- through analyze_metric -----------------------------------------------------------------
def _binary_arms(seed: int = 9, n: int = 20_000) -> tuple[MomentMatrix, MomentMatrix]:
    rng = np.random.default_rng(seed)
    names = ("y", "x")
    mats = []
    for p in (0.05, 0.056):
        x = rng.standard_normal(n)
        y = (rng.random(n) < p * np.exp(0.5 * x - 0.125)).astype(float)
        mats.append(MomentMatrix.from_rows(names, np.column_stack([y, x])))
    return mats[0], mats[1]


def test_analyze_metric_picks_beta_binomial_for_unadjusted_binary() -> None:
    """Unadjusted binary metric → beta-binomial on the arms' conversion counts."""
    m_c, m_t = _binary_arms()
    s = AnalysisSettings(prior_sigma=0.2)
    comp = compare(MetricSpec("conv", "binary", outcome="y"), m_c, m_t, s)
    x_t, x_c = round(m_t.mean[0] * m_t.n), round(m_c.mean[0] * m_c.n)
    ref = bayes.beta_binomial(x_t, m_t.n, x_c, m_c.n, prior_sigma=0.2)
    assert comp.bayes.model == "beta-binomial" and comp.bayes.estimator == "diff"
    assert comp.bayes.treatment_posterior_mean == pytest.approx(ref.treatment_posterior_mean,
                                                                rel=1e-10)
    assert comp.bayes.chance_to_beat_control == pytest.approx(ref.chance_to_beat_control,
                                                              rel=1e-9)


def test_analyze_metric_picks_normal_normal_for_adjusted_binary() -> None:
    """Adjusted binary metric → normal-normal on the adjusted arm means and their SEs."""
    m_c, m_t = _binary_arms()
    s = AnalysisSettings(prior_sigma=0.2)
    comp = compare(MetricSpec("conv", "binary", outcome="y", covariates=("x",)), m_c, m_t, s)
    e = comp.estimators["adjusted"]
    assert comp.bayes.model == "normal-normal" and comp.bayes.estimator == "adjusted"
    v_t = e.treatment_se**2
    tau2 = (0.2 * e.control_mean) ** 2
    w = (1 / v_t) / (1 / v_t + 1 / tau2)
    assert comp.bayes.precision_weight == pytest.approx(w, rel=1e-12)
    assert comp.bayes.treatment_posterior_mean == pytest.approx(
        w * e.treatment_mean + (1 - w) * e.control_mean, rel=1e-12)
