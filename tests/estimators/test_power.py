"""Power, MDE and the plan: formulas, and seeded simulations of the planned power."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from estimators import power, sequential
from estimators.analysis import MetricSpec, analyze_metric
from estimators.moments import MomentMatrix
from estimators.report import slice_document
from workers.batch.plan import plan_frame

Z = NormalDist().inv_cdf
RUNS = 4000


def _doc(seed: int = 1, n: int = 4000) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.normal(10, 2, 2 * n)
    y = 5 + 0.8 * x + rng.normal(0, 1, 2 * n) + np.r_[np.zeros(n), np.full(n, 0.1)]
    rows = np.column_stack([y, x])
    arms = {"c": MomentMatrix.from_rows(("y", "x"), rows[:n]),
            "t": MomentMatrix.from_rows(("y", "x"), rows[n:])}
    res = analyze_metric(MetricSpec("y", "numeric", outcome="y", covariates=("x",)), arms, "c")
    return slice_document(None, ["c", "t"], {"c": n, "t": n}, None, [res])


def test_mde_is_z_sum_times_se_of_the_recommended_estimator() -> None:
    for alpha in (0.05, 0.01, 0.2):
        doc = power.annotate(_doc(), alpha, 5000.0, {"y": 0.01}, elapsed_seconds=100.0)
        c = doc["metrics"][0]["comparisons"][0]
        e = c["estimators"][c["primary"]]
        assert c["primary"] == "adjusted"
        p = c["power"]
        assert p["mde"] == pytest.approx((Z(1 - alpha / 2) + Z(0.8)) * e["se"], abs=1e-9,
                                         rel=1e-9)
        hw = sequential.half_width(e["se"], 8000, alpha, 5000.0)
        assert p["mde_sequential"] == pytest.approx(hw + Z(0.8) * e["se"], rel=1e-9)
        assert p["rel_mde"] == pytest.approx(p["mde"] / abs(e["control_mean"]), rel=1e-12)
        # projection: 8000 units in 100 s → 80 units/s
        assert p["units_per_second"] == pytest.approx(80.0)
        assert p["projected_seconds"] == pytest.approx(p["remaining_units"] / 80.0)
        assert p["projected_units"] >= p["projected_units_fixed"]


def test_projected_units_give_the_target_as_mde() -> None:
    doc = power.annotate(_doc(), 0.05, 5000.0, {"y": 0.002}, None)
    p = doc["metrics"][0]["comparisons"][0]["power"]
    e = doc["metrics"][0]["comparisons"][0]["estimators"]["adjusted"]
    n_need = p["projected_units"]
    se_then = e["se"] * math.sqrt(8000 / n_need)
    assert power.mde_sequential(se_then, n_need, 0.05, 5000.0) <= p["target_effect"]
    se_before = e["se"] * math.sqrt(8000 / (n_need - 1))
    assert power.mde_sequential(se_before, n_need - 1, 0.05, 5000.0) > p["target_effect"]
    assert p["projected_seconds"] is None and "exposure rate unknown" in p["note"]


def test_degenerate_power_is_null_with_a_note() -> None:
    p = power.comparison_power("diff", None, 1.0, 10, 0.05, 5000.0, 0.02, 1.0)
    assert p.mde is None and p.note
    p = power.comparison_power("diff", 0.1, 0.0, 100, 0.05, 5000.0, 0.02, 1.0)
    assert p.mde is not None and p.rel_mde is None and p.projected_units is None and p.note


@pytest.mark.parametrize("tuning", [100.0, 5000.0, 1e6])
def test_sequential_mde_per_unit_decreases_in_n(tuning: float) -> None:
    ns = np.logspace(0.4, 14, 400)
    g = [power.mde_sequential(1 / math.sqrt(n), n, 0.05, tuning) for n in ns]
    assert np.all(np.diff(g) < 0)


def _past_rows(seed: int, n: int, sd: float, beta: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, 2 * n)
    y = 10 + beta * x + rng.normal(0, sd, 2 * n)
    return pd.DataFrame({"v": np.repeat(["c", "t"], n), "y": y, "x": x})


def _power_diff(n_per_arm: int, sd: float, effect: float, rng: np.random.Generator) -> float:
    """Fixed-horizon Welch z-test power from simulated sufficient statistics."""
    m = rng.normal([10.0, 10.0 + effect], sd / math.sqrt(n_per_arm), (RUNS, 2))
    v = sd**2 * rng.chisquare(n_per_arm - 1, (RUNS, 2)) / (n_per_arm - 1)
    se = np.sqrt(v.sum(axis=1) / n_per_arm)
    return float(np.mean(np.abs(m[:, 1] - m[:, 0]) / se > Z(0.975)))


def test_plan_units_give_80_percent_fixed_horizon_power() -> None:
    rng = np.random.default_rng(20261201)
    sd = 3.0
    doc = plan_frame(_past_rows(7, 50_000, sd, 0.0), "v", "c", "y", [], 0.02, 0.05, 5000.0,
                     None)
    (p,) = doc["plans"]
    effect = doc["target_effect"]
    pw = _power_diff(p["fixed_units_per_arm"], sd, effect, rng)
    print(f"power {pw:.4f}")
    assert 0.77 <= pw <= 0.83, pw


def test_plan_with_covariates_gives_80_percent_adjusted_power() -> None:
    """CUPED (pooled θ) at the covariate plan's units, from simulated per-arm moments."""
    rng = np.random.default_rng(99)
    beta, sd = 2.0, 1.5  # R² = 4 / 6.25 = 0.64
    doc = plan_frame(_past_rows(8, 50_000, sd, beta), "v", "c", "y", ["x"], 0.01, 0.05,
                     5000.0, None)
    plain, adj = doc["plans"]
    assert adj["variance_reduction"] == pytest.approx(0.64, abs=0.01)
    assert adj["fixed_units"] < 0.4 * plain["fixed_units"]
    n = adj["fixed_units_per_arm"]
    effect = doc["target_effect"]
    cov = np.array([[beta**2 + sd**2, beta], [beta, 1.0]])  # (y, x)
    means = [rng.multivariate_normal([10.0 + d, 0.0], cov / n, RUNS) for d in (0.0, effect)]
    s = [stats.wishart.rvs(n - 1, cov, RUNS, random_state=rng) for _ in range(2)]
    theta = (s[0][:, 0, 1] + s[1][:, 0, 1]) / (s[0][:, 1, 1] + s[1][:, 1, 1])  # within-arm
    eff = (means[1][:, 0] - means[0][:, 0]) - theta * (means[1][:, 1] - means[0][:, 1])
    var_r = [(si[:, 0, 0] - 2 * theta * si[:, 0, 1] + theta**2 * si[:, 1, 1]) / (n - 1)
             for si in s]
    se = np.sqrt((var_r[0] + var_r[1]) / n)
    pw = float(np.mean(np.abs(eff) / se > Z(0.975)))
    print(f"power {pw:.4f}")
    assert 0.77 <= pw <= 0.83, pw


def test_anytime_valid_plan_reaches_80_percent_when_monitored() -> None:
    """Continuous monitoring (200 looks) up to the planned units: detection ≥ 80 %."""
    rng = np.random.default_rng(5)
    sd = 2.0
    doc = plan_frame(_past_rows(9, 50_000, sd, 0.0), "v", "c", "y", [], 0.03, 0.05, 5000.0,
                     None)
    (p,) = doc["plans"]
    n = p["sequential_units_per_arm"]
    effect = doc["target_effect"]
    looks = np.unique(np.linspace(n / 200, n, 200).astype(int))
    steps = np.diff(np.r_[0, looks])
    # per-arm running sums of y (known sd: the plan's variance), control and treatment
    inc = rng.normal(0.0, 1.0, (RUNS, len(looks), 2)) * sd * np.sqrt(steps)[None, :, None]
    inc[:, :, 1] += effect * steps[None, :]
    sums = np.cumsum(inc, axis=1)
    diff = (sums[:, :, 1] - sums[:, :, 0]) / looks[None, :]
    se = sd * np.sqrt(2.0 / looks)
    hw = np.array([sequential.half_width(float(s), 2 * int(k), 0.05, 5000.0)
                   for s, k in zip(se, looks, strict=True)])
    detected = (np.abs(diff) > hw[None, :]).any(axis=1)
    final = np.abs(diff[:, -1]) > hw[-1]
    print(f"monitored {detected.mean():.4f} final {final.mean():.4f}")
    assert detected.mean() >= 0.80, detected.mean()
    assert 0.77 <= final.mean() <= 0.83, final.mean()  # at the planned n alone: 80 %


@pytest.mark.parametrize("case", ["one_unit", "constant", "zero_control"])
def test_degenerate_documents_get_null_power_with_a_note(case: str) -> None:
    rng = np.random.default_rng(0)
    if case == "one_unit":
        c, t = rng.normal(size=(1, 1)), rng.normal(size=(50, 1))
    elif case == "constant":
        c, t = np.ones((50, 1)), np.ones((50, 1))
    else:
        # control mean exactly 0 with variance (a constant arm has no SE at all)
        c, t = np.tile([[-1.0], [1.0]], (25, 1)), rng.normal(size=(50, 1))
    arms = {"c": MomentMatrix.from_rows(("y",), c), "t": MomentMatrix.from_rows(("y",), t)}
    res = analyze_metric(MetricSpec("y", "numeric", outcome="y"), arms, "c")
    doc = slice_document(None, ["c", "t"], {"c": len(c), "t": len(t)}, None, [res])
    p = power.annotate(doc, 0.05, 5000.0, {"y": 0.02}, 10.0)["metrics"][0]["comparisons"][0][
        "power"]
    assert p["note"]
    assert p["projected_units"] is None and p["projected_seconds"] is None
    if case != "zero_control":
        assert p["mde"] is None
    else:
        assert p["mde"] is not None and p["rel_mde"] is None
