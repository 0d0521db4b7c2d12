"""The predicted-metric ``proxy`` (references/001): ridge from moments, labels, and its bias.

Simulation with known truth: 20 in-experiment page-hit indicators ``z_k ~ Bernoulli(q_k(1 +
0.6x)(1 + s_k T))`` and a conversion ``y ~ Bernoulli(c + Σ γ_k(T) z_k)``, ``x`` a binary
pre-experiment covariate, so ``E[y | T] = c + Σ γ_k(T)·q_k·(1 + 0.6·P(x=1))·(1 + s_k T)``.

* ``shift``: treatment raises the hit rate of page 3 by 40%, the relation is unchanged — the
  proxy sees the effect, but ridge shrinkage of β biases it towards 0;
* ``relation``: treatment makes page 5 convert better (γ_5 + 0.1) without changing any hit
  rate — invisible to a pooled indicator model: the proxy misses most of the effect.

``adjusted`` (CUPED on x) is the unbiased reference. Figures are printed (``pytest -s``).
"""

from __future__ import annotations

import numpy as np
import pytest

from estimators.analysis import AnalysisSettings, MetricSpec, analyze_metric
from estimators.moments import MomentMatrix
from estimators.proxy import DEFAULT_RIDGE, fit_proxy, proxy_estimate
from estimators.report import comparison_document

K = 20
Q = np.linspace(0.05, 0.5, K)
GAMMA = 0.01 * (np.arange(K) % 5 + 1)
C0 = 0.02
P_X = 0.4
N_PER_ARM = 4_000
N_SIM = 100
INDICATORS = tuple(f"z{k}" for k in range(K))
NAMES = ("y", "x", *INDICATORS)


def scenario(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-indicator hit-rate lift s and treatment's change of γ."""
    s, dg = np.zeros(K), np.zeros(K)
    if name == "shift":
        s[3] = 0.4
    elif name == "relation":
        dg[5] = 0.1
    return s, dg


def truth(name: str) -> float:
    s, dg = scenario(name)
    hit = Q * (1 + 0.6 * P_X)
    return float(np.sum((GAMMA + dg) * hit * (1 + s)) - np.sum(GAMMA * hit))


def simulate(rng: np.random.Generator, name: str, n: int = N_PER_ARM
             ) -> tuple[MomentMatrix, MomentMatrix]:
    s, dg = scenario(name)
    mats = []
    for t in (0, 1):
        x = (rng.random(n) < P_X).astype(float)
        p = Q[None, :] * (1 + 0.6 * x[:, None]) * (1 + s[None, :] * t)
        z = (rng.random((n, K)) < p).astype(float)
        y = (rng.random(n) < C0 + z @ (GAMMA + dg * t)).astype(float)
        mats.append(MomentMatrix.from_rows(NAMES, np.column_stack([y, x, z])))
    return mats[0], mats[1]


SPEC = MetricSpec("y", "binary", outcome="y", covariates=("x",), proxy_indicators=INDICATORS)


def test_ridge_from_moments_matches_rows() -> None:
    rng = np.random.default_rng(1)
    n = 3000
    z = (rng.random((n, 4)) < [0.1, 0.3, 0.5, 0.2]).astype(float)
    y = 0.3 * z[:, 0] + 0.1 * z[:, 2] + rng.normal(0, 0.5, n)
    rows = np.column_stack([y, z])
    names = ("y", "a", "b", "c", "d")
    m1 = MomentMatrix.from_rows(names, rows[:1000])
    m2 = MomentMatrix.from_rows(names, rows[1000:], shift=np.full(5, 7.0))
    for lam, with_y in ((0.0, False), (DEFAULT_RIDGE, False), (DEFAULT_RIDGE, True)):
        fit = fit_proxy([m1, m2], "y", ("a", "b", "c", "d"), lam, with_y)
        x = rows[:, 1:] if not with_y else np.column_stack([rows[:, 1:], y])
        xc, yc = x - x.mean(0), y - y.mean()
        xtx = xc.T @ xc
        beta = np.linalg.solve(xtx + lam * np.diag(np.diag(xtx)), xc.T @ yc)
        np.testing.assert_allclose(fit.coefficients, beta, rtol=1e-9, atol=1e-12)
        assert fit.intercept == pytest.approx(y.mean() - beta @ x.mean(0), rel=1e-9)
        assert fit.biased
    # without ridge and without the outcome, it is OLS; with the outcome and no ridge the
    # proxy would be y itself — ridge prevents the trivial copy
    fit = fit_proxy([m1, m2], "y", ("a", "b"), 0.0, True)
    assert fit.coefficients[-1] == pytest.approx(1.0, abs=1e-9)
    fit = fit_proxy([m1, m2], "y", ("a", "b"), DEFAULT_RIDGE, True)
    assert 0.0 < fit.coefficients[-1] < 0.2


def test_labels_never_default_and_separate() -> None:
    m_c, m_t = simulate(np.random.default_rng(2), "shift", 2000)
    (comp,) = analyze_metric(SPEC, {"control": m_c, "treatment": m_t}, "control",
                             AnalysisSettings()).comparisons
    assert comp.proxy is not None and comp.proxy.biased and comp.proxy.ok
    assert "proxy" not in comp.estimators
    assert comp.primary.estimator != "proxy" and not comp.primary.biased
    assert all(not e.biased for e in comp.estimators.values())
    assert comp.proxy.note is not None and "biased" in comp.proxy.note
    doc = comparison_document(comp)
    assert doc["proxy"]["biased"] is True and "proxy" not in doc["estimators"]
    # a spec without indicators leaves every output exactly as before
    (plain,) = analyze_metric(MetricSpec("y", "binary", outcome="y", covariates=("x",)),
                              {"control": m_c, "treatment": m_t}, "control").comparisons
    assert plain.proxy is None and "proxy" not in comparison_document(plain)
    assert plain.estimators == comp.estimators
    # degenerate inputs give a biased, empty estimate with a reason, never an exception
    e = proxy_estimate(m_t, m_c, "y", ())
    assert e.biased and not e.ok and e.note


@pytest.mark.parametrize("name", ["shift", "relation"])
def test_proxy_bias_against_adjusted(name: str) -> None:
    rng = np.random.default_rng({"shift": 11, "relation": 12}[name])
    tau = truth(name)
    res: dict[str, list[tuple[float, float]]] = {"proxy": [], "adjusted": [], "diff": []}
    for _ in range(N_SIM):
        m_c, m_t = simulate(rng, name)
        (comp,) = analyze_metric(SPEC, {"control": m_c, "treatment": m_t}, "control",
                                 AnalysisSettings()).comparisons
        assert comp.proxy is not None and comp.proxy.biased
        for est, e in (("proxy", comp.proxy), ("adjusted", comp.estimators["adjusted"]),
                       ("diff", comp.estimators["diff"])):
            assert e.effect is not None and e.se is not None
            res[est].append((e.effect, e.se))
    summary = {}
    for est, vals in res.items():
        a = np.array(vals)
        err = a[:, 0] - tau
        summary[est] = {"bias": float(err.mean()), "mc_se": float(err.std(ddof=1) / np.sqrt(N_SIM)),
                        "mean_se": float(a[:, 1].mean()),
                        "bias_in_se": float(err.mean() / a[:, 1].mean()),
                        "coverage": float(np.mean(np.abs(err) <= 1.959964 * a[:, 1]))}
    print(f"\nproxy vs adjusted, scenario {name}: truth {tau:.5f}")
    for est, row in summary.items():
        print(f"  {est:9s} bias {row['bias']:+.5f} (MC SE {row['mc_se']:.5f}) "
              f"= {row['bias_in_se']:+.2f} SE; mean SE {row['mean_se']:.5f}; "
              f"95% CI coverage {100 * row['coverage']:.1f}%")
    adj, prx = summary["adjusted"], summary["proxy"]
    assert abs(adj["bias"]) < 3.5 * adj["mc_se"]
    assert prx["mean_se"] < 0.8 * summary["diff"]["mean_se"]  # the tighter interval it buys
    # the bias it costs: significant, larger than its own SE, and the CI undercovers
    assert prx["bias"] < -6 * prx["mc_se"]
    assert prx["bias_in_se"] < -1.0 and prx["coverage"] < 0.8
