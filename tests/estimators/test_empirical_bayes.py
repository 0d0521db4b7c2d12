"""Empirical-Bayes prior σ and Fisher pre-selection from finished experiments (seeded).

Past experiments are run through the real path: per-arm moment matrices → analyze_metric →
result document → finished-experiment record (estimators.empirical_bayes.finished_record).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from estimators import learned
from estimators.analysis import AnalysisSettings, MetricSpec, analyze_metric
from estimators.empirical_bayes import MIN_EXPERIMENTS, estimate_sigma, finished_record
from estimators.moments import MomentMatrix
from estimators.report import slice_document
from tests.estimators.simkit import binomial_window_prob

BINARY = MetricSpec("converted", "binary", outcome="converted")


def _binary_experiment(rng: np.random.Generator, i: int, rel: float, n: int, base: float
                       ) -> dict:
    """One finished conversion experiment with true relative effect ``rel``."""
    p_t = base * (1.0 + rel)
    x_c, x_t = rng.binomial(n, base), rng.binomial(n, p_t)
    arms = {}
    for name, x in (("control", x_c), ("treatment", x_t)):
        rows = np.r_[np.ones(x), np.zeros(n - x)][:, None]
        arms[name] = MomentMatrix.from_rows(("converted",), rows)
    res = analyze_metric(BINARY, arms, "control")
    doc = slice_document(None, ["control", "treatment"], {"control": n, "treatment": n}, None,
                         [res])
    return finished_record(f"exp{i:03d}", 1.7e9 + i, {"slices": [doc]})


def test_empirical_sigma_within_20_percent_on_200_past_experiments() -> None:
    rng = np.random.default_rng(14)
    truth = 0.05
    recs = []
    for i in range(200):
        n = int(rng.integers(5_000, 60_000))  # relative SEs ≈ 0.02–0.08
        base = float(rng.uniform(0.05, 0.3))
        recs.append(_binary_experiment(rng, i, float(rng.normal(0.0, truth)), n, base))
    ses = [r["metrics"]["converted"][0]["rel_se"] for r in recs]
    assert min(ses) > 0.005 and max(ses) < 0.2
    est = learned.priors(["converted"], recs, configured=0.3, now=1.8e9)["converted"]
    print(f"empirical sigma {est.sigma:.4f} (truth 0.05), k = {est.k}, "
          f"median rel SE {np.median(ses):.4f}")
    assert est.source == "empirical" and est.k == 200
    assert abs(est.sigma / truth - 1.0) < 0.2
    doc = learned.prior_document({"converted": est}, recs)
    m = doc["metrics"]["converted"]
    assert len(m["experiments"]) == 200 and m["experiments"][0]["stopped_at"] == 1.7e9
    assert m["estimated_at"] == 1.8e9 and m["configured_sigma"] == 0.3


def test_estimator_is_unbiased_for_sigma_squared_over_seeds() -> None:
    """Method of moments: E[τ̂²] = τ² when not truncated (checked on the pure rows)."""
    rng = np.random.default_rng(3)
    est = []
    for _ in range(400):
        s = rng.uniform(0.01, 0.04, 200)
        y = rng.normal(0, 0.05, 200) + rng.normal(0, s)
        est.append(estimate_sigma(zip(map(str, range(200)), y, s, strict=True), 0.3).sigma)
    within = np.mean(np.abs(np.array(est) / 0.05 - 1) < 0.2)
    assert within > 0.99, within
    assert np.mean(np.square(est)) == pytest.approx(0.0025, rel=0.02)


def test_too_few_finished_experiments_fall_back_to_configured_sigma() -> None:
    rng = np.random.default_rng(1)
    recs = [_binary_experiment(rng, i, 0.0, 10_000, 0.1) for i in range(MIN_EXPERIMENTS - 1)]
    est = learned.priors(["converted", "other"], recs, configured=0.3)
    assert est["converted"].sigma == 0.3 and est["converted"].source == "configured"
    assert est["converted"].k == MIN_EXPERIMENTS - 1 and "fewer than" in est["converted"].note
    assert est["other"].k == 0 and est["other"].source == "configured"


def test_zero_between_experiment_variance_is_floored_with_a_note() -> None:
    rows = [(str(i), 0.0, 0.02) for i in range(10)]
    e = estimate_sigma(rows, 0.3)
    assert e.source == "empirical" and e.sigma == pytest.approx(1e-3) and "floored" in e.note


# --------------------------------------------------------------------------- Fisher

NAMES = ("y", "z_ok", "z_aff")
SPEC = MetricSpec("y", "numeric", outcome="y", in_experiment=("z_ok", "z_aff"))
EFFECT = 0.2


def _experiment(rng: np.random.Generator, n: int) -> dict[str, MomentMatrix]:
    """z_ok: unaffected, partial R² 0.5 for y; z_aff: shifted 0.3 sd by treatment."""
    treat = np.r_[np.zeros(n), np.ones(n)]
    z_ok, u, e = rng.standard_normal((3, 2 * n))
    z_aff = u + 0.3 * treat
    y = 1.0 + z_ok + e + EFFECT * treat
    rows = np.column_stack([y, z_ok, z_aff])
    return {"control": MomentMatrix.from_rows(NAMES, rows[:n]),
            "treatment": MomentMatrix.from_rows(NAMES, rows[n:])}


def _finished(rng: np.random.Generator, k: int) -> list[dict]:
    out = []
    for i in range(k):
        res = analyze_metric(SPEC, _experiment(rng, 2_000), "control")
        doc = slice_document(None, ["control", "treatment"], {}, None, [res])
        out.append(finished_record(f"past{i}", float(i), {"slices": [doc]}))
    return out


def _coverage(rng: np.random.Generator, runs: int, s: AnalysisSettings
              ) -> tuple[float, int]:
    z = 1.959963984540054
    covered = kept = 0
    for _ in range(runs):
        (comp,) = analyze_metric(SPEC, _experiment(rng, 500), "control", s).comparisons
        kept += {c.name: c.selected for c in comp.covariate_selection}["z_ok"]
        e = comp.estimators["adjusted"]
        assert e.ok
        covered += abs(e.effect - EFFECT) <= z * e.se
    return covered / runs, kept


def test_fisher_preselection_keeps_a_valid_candidate_and_covers() -> None:
    rng = np.random.default_rng(2024)
    recs = _finished(rng, 20)
    pre = learned.fisher_preselection(["z_ok", "z_aff"], recs, alpha=0.05)
    assert pre.selected == ("z_ok",)
    inputs = pre.document["candidates"]
    assert inputs["z_ok"]["experiments"] == 20 and inputs["z_ok"]["fisher_p_value"] > 0.05
    assert inputs["z_aff"]["fisher_p_value"] < 1e-6
    runs = 10_000
    fisher, kept = _coverage(rng, runs, AnalysisSettings(preselected=pre.selected))
    retest, kept_retest = _coverage(rng, runs, AnalysisSettings())
    print(f"coverage fisher {fisher:.4f} (z_ok kept {kept}/{runs}), per-experiment test "
          f"{retest:.4f} (z_ok kept {kept_retest}/{runs})")
    assert kept == runs  # kept in every new experiment
    assert 0.94 <= fisher <= 0.96, fisher
    assert binomial_window_prob(0.95, runs, 0.94, 0.96) > 0.99  # a correct method passes
    assert kept_retest < runs  # re-testing drops it in ≈ α_sel of the experiments


def test_fisher_needs_enough_finished_experiments() -> None:
    rng = np.random.default_rng(7)
    pre = learned.fisher_preselection(["z_ok", "z_aff"], _finished(rng, 3), alpha=0.05)
    assert pre.selected is None and "per-experiment balance test used" in pre.document["note"]


def test_rel_se_of_record_matches_delta_method() -> None:
    rng = np.random.default_rng(0)
    rec = _binary_experiment(rng, 0, 0.0, 100_000, 0.1)
    (c,) = rec["metrics"]["converted"]
    p = 0.1
    assert c["rel_se"] == pytest.approx(math.sqrt(2 * (1 - p) / (p * 100_000)), rel=0.05)
