"""In-experiment covariate selection for lin_crespo (DESIGN §3, Lin & Crespo 2024).

Simulation (``N_RUNS`` experiments of 50,000 units, 25,000 per arm)::

    yhat ~ 1 + N(0, 1)                       frozen prediction
    z_ok ~ N(0, 1)                           in-experiment, unaffected by treatment
    z_aff = u + 0.1·T,  u ~ N(0, 1)          in-experiment, shifted 0.1 sd by treatment
    y = yhat + 0.5·z_ok + 0.5·z_aff + e + 0.02·T,   e ~ N(0, 1)

The true total effect is 0.02 + 0.5·0.1 = 0.07. Adjusting for ``z_aff`` would remove its
mediated part and bias the estimate by −0.05 ≈ −5 SE, so the bias check can fail.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from estimators.analysis import AnalysisSettings, MetricSpec
from estimators.moments import MomentMatrix
from estimators.selection import fisher_combination, preselect, select_covariates
from estimators.summary import ArmSummary
from tests.estimators.simkit import arm_matrices, binomial_window_prob, compare

NAMES = ("y", "yhat", "z_aff", "z_ok")
SPEC = MetricSpec("y", "numeric", outcome="y", prediction="yhat",
                  in_experiment=("z_aff", "z_ok"))
N_UNITS = 50_000
N_RUNS = 2000
DIRECT, SHIFT, BETA_AFF = 0.02, 0.1, 0.5
TRUTH = DIRECT + BETA_AFF * SHIFT


def simulate_selection(n_runs: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    n = N_UNITS // 2
    treat = np.zeros(N_UNITS)
    treat[n:] = 1.0
    kept_ok = excluded_aff = 0
    err = {"lin_crespo": [], "adjusted": []}
    se = {"lin_crespo": [], "adjusted": []}
    batch = 8
    for start in range(0, n_runs, batch):
        b = min(batch, n_runs - start)
        g, z_ok, u, e = rng.standard_normal((4, b, N_UNITS))
        z_aff = u + SHIFT * treat
        yhat = 1.0 + g
        y = yhat + 0.5 * z_ok + BETA_AFF * z_aff + e + DIRECT * treat
        rows = np.stack([y, yhat, z_aff, z_ok], axis=-1)
        for i in range(b):
            m_c, m_t = arm_matrices(NAMES, rows[i], n)
            comp = compare(SPEC, m_c, m_t)
            checks = {c.name: c for c in comp.covariate_selection}
            excluded_aff += not checks["z_aff"].selected
            kept_ok += checks["z_ok"].selected
            for k in err:
                est = comp.estimators[k]
                assert est.ok and est.note is None, est
                err[k].append(est.effect - TRUTH)
                se[k].append(est.se)
    out = {"excluded_aff": excluded_aff / n_runs, "kept_ok": kept_ok / n_runs}
    for k in err:
        mean_se = float(np.mean(se[k]))
        out[f"{k}_bias_se"] = float(np.mean(err[k])) / mean_se
        out[f"{k}_mc_se"] = float(np.std(err[k], ddof=1) / np.sqrt(n_runs)) / mean_se
        out[f"{k}_mean_se"] = mean_se
    return out


@pytest.mark.slow
def test_selection_rates_and_lin_crespo_bias() -> None:
    """2,000 experiments of 50,000 units.

    Tolerances: the treatment-affected candidate (0.1 sd shift, Welch z ≈ 11) is excluded in
    ≥ 95% of runs; the unaffected candidate is kept in 93–97% of runs (nominal 95%; binomial
    SE 0.49 pp, so a correct test passes with probability > 0.999); the mean bias of
    lin_crespo (and of adjusted) is below 0.05 SE in absolute value, SE being the average
    reported se (Monte-Carlo SE of that ratio ≈ 1/√2000 = 0.022; using z_aff would give
    ≈ −5 SE).
    """
    r = simulate_selection(N_RUNS, seed=77)
    msg = "selection over 2000 runs: " + "  ".join(f"{k}={v:.4g}" for k, v in r.items())
    print(msg)
    assert binomial_window_prob(0.95, N_RUNS, 0.93, 0.97) > 0.999
    assert r["excluded_aff"] >= 0.95, msg
    assert 0.93 <= r["kept_ok"] <= 0.97, msg
    assert abs(r["lin_crespo_bias_se"]) < 0.05, msg
    assert abs(r["adjusted_bias_se"]) < 0.05, msg


# -- Holm ---------------------------------------------------------------------------------
def _standardised(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n × k columns with sample mean exactly 0 and sample sd exactly 1."""
    z = rng.standard_normal((n, k))
    z -= z.mean(axis=0)
    return z / z.std(axis=0, ddof=1)


def holm_case(seed: int = 5, n: int = 1000) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Five candidates: z1 raw Welch p = 0.02, z2 p ≈ 1e-6, z3..z5 p = 1."""
    rng = np.random.default_rng(seed)
    names = ("y", "yhat", "z1", "z2", "z3", "z4", "z5")
    arms = {}
    for arm in ("c", "t"):
        z = _standardised(rng, n, 5)
        if arm == "t":
            # equal sample variances, so Welch's t = offset / sqrt(2/n) with df = 2n − 2
            z[:, 0] += stats.t.isf(0.01, 2 * n - 2) * np.sqrt(2.0 / n)
            z[:, 1] += stats.t.isf(0.5e-6, 2 * n - 2) * np.sqrt(2.0 / n)
        yhat = rng.standard_normal(n)
        y = yhat + z @ np.full(5, 0.3) + rng.standard_normal(n)
        arms[arm] = np.column_stack([y, yhat, z])
    return arms, names


def test_holm_keeps_more_candidates_on_constructed_case() -> None:
    """Holm's step-down raises the balance p-values, so fewer candidates are excluded.

    Constructed: raw Welch p-values (0.02, 1e-6, 1, 1, 1) (checked against scipy's Welch
    test to 1e-9). Plain: z1 and z2 excluded. Holm (5 tests): z1's adjusted p = 4·0.02 =
    0.08 > 0.05 → kept; z2 (5e-6) still excluded; the reported p-values stay raw; and the
    lin_crespo estimate changes because it now adjusts for z1.
    """
    arms, names = holm_case()
    cands = names[2:]
    spec = MetricSpec("y", "numeric", outcome="y", prediction="yhat", in_experiment=cands)
    m_c = MomentMatrix.from_rows(names, arms["c"])
    m_t = MomentMatrix.from_rows(names, arms["t"])
    plain = compare(spec, m_c, m_t, AnalysisSettings())
    holm = compare(spec, m_c, m_t, AnalysisSettings(selection_holm=True))
    for j, (a, b) in enumerate(zip(plain.covariate_selection, holm.covariate_selection,
                                   strict=True)):
        ref = stats.ttest_ind(arms["t"][:, 2 + j], arms["c"][:, 2 + j], equal_var=False).pvalue
        assert a.p_value == pytest.approx(ref, rel=1e-9, abs=1e-15)
        assert b.p_value == a.p_value
    assert plain.covariate_selection[0].p_value == pytest.approx(0.02, rel=1e-6)
    sel_plain = [c.selected for c in plain.covariate_selection]
    sel_holm = [c.selected for c in holm.covariate_selection]
    assert sel_plain == [False, False, True, True, True]
    assert sel_holm == [True, False, True, True, True]
    assert holm.estimators["lin_crespo"].effect != plain.estimators["lin_crespo"].effect


def test_holm_selection_is_a_superset_of_plain_selection() -> None:
    """Over 300 random candidate sets (some shifted), Holm never excludes a candidate that
    the unadjusted rule keeps, and it keeps strictly more in at least one case."""
    rng = np.random.default_rng(11)
    strictly_more = 0
    for _ in range(300):
        k = int(rng.integers(1, 8))
        n = int(rng.integers(20, 400))
        mean_t = rng.normal(scale=3.0 / np.sqrt(n), size=k)
        st = ArmSummary(n, mean_t, np.eye(k))
        sc = ArmSummary(n, np.zeros(k), np.eye(k) * rng.uniform(0.5, 2.0))
        names = [f"z{i}" for i in range(k)]
        plain = select_covariates(names, st, sc, 0.05, use_holm=False)
        holm = select_covariates(names, st, sc, 0.05, use_holm=True)
        assert all(h.selected or not p.selected for p, h in zip(plain, holm, strict=True))
        strictly_more += sum(h.selected for h in holm) > sum(p.selected for p in plain)
    assert strictly_more > 0


# -- Fisher combination -------------------------------------------------------------------
def test_fisher_combination_matches_scipy() -> None:
    """fisher_combination equals scipy.stats.combine_pvalues(method='fisher') to 1e-10
    relative on 500 random p-value vectors (1–30 values, some near 0 and 1); preselect keeps
    exactly the candidates whose scipy combined p-value exceeds α."""
    rng = np.random.default_rng(3)
    for _ in range(500):
        k = int(rng.integers(1, 31))
        p = rng.uniform(size=k) ** rng.choice([0.3, 1.0, 4.0])
        ref = stats.combine_pvalues(p, method="fisher").pvalue
        assert fisher_combination(p) == pytest.approx(ref, rel=1e-10, abs=1e-300)
    history = {f"z{i}": list(rng.uniform(size=int(rng.integers(1, 10))) ** (1 + i % 4))
               for i in range(40)}
    for alpha in (0.01, 0.05, 0.2):
        expected = [name for name, ps in history.items()
                    if stats.combine_pvalues(ps, method="fisher").pvalue > alpha]
        assert preselect(history, alpha) == expected
        assert 0 < len(expected) < len(history)  # the check discriminates
    assert fisher_combination([]) == 1.0
    assert fisher_combination([0.0, 0.5]) < 1e-200  # p = 0 is clipped, not an error
