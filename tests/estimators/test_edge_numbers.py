"""Numbers that never lie at the edges (issue 12, items 1–4).

* exact zeros: a mean, rate or denominator that is 0 in the data is exactly 0 in the
  statistics, and every degenerate case returns nulls with a note, never a huge number;
* the rounding bounds of the shifted sums hold (the computed error never exceeds them) and
  are tight enough that epoch-second columns (1.7e9 ± 85) are ordinary metrics and covariates;
* one arm without variance: no SE / p-value, a note;
* a 1-unit arm: consistent nulls everywhere, Bayes included.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import statsmodels.api as sm

from estimators.analysis import AnalysisSettings, Comparison, MetricSpec, analyze_metric
from estimators.grouped import grouped_moments
from estimators.moments import MomentMatrix
from tests.estimators.simkit import compare, iter_floats

NAMES = ("y", "b", "x", "num", "den")


def arms(n_c: int, n_t: int, seed: int, *, y_c: float | None = None, b_c: float | None = None,
         den_c_zero: bool = False, shards: int = 1) -> tuple[MomentMatrix, MomentMatrix]:
    """Control and treatment matrices the batch way (grouped_moments: shift = pooled mean)
    or, with ``shards > 1``, the streaming way (an empty matrix plus shards, each shifted
    by its own first row)."""
    rng = np.random.default_rng(seed)
    n = n_c + n_t
    x = rng.standard_normal(n)
    y = 2.0 + x + rng.standard_normal(n)
    b = (rng.random(n) < 0.1).astype(float)
    den = rng.poisson(3, n) + 1.0
    num = 1.5 * den + rng.standard_normal(n)
    if y_c is not None:
        y[:n_c] = y_c
    if b_c is not None:
        b[:n_c] = b_c
    if den_c_zero:
        den[:n_c] = 0.0
    rows = np.column_stack([y, b, x, num, den])
    group = np.r_[np.zeros(n_c, dtype=np.intp), np.ones(n_t, dtype=np.intp)]
    if shards == 1:
        m_c, m_t = grouped_moments(NAMES, rows, group, 2)
        return m_c, m_t
    out = []
    for g in (0, 1):
        m = MomentMatrix.empty(NAMES)
        for part in np.array_split(rows[group == g], shards):
            if len(part):
                m = m + MomentMatrix.from_rows(NAMES, part)
        out.append(m)
    return out[0], out[1]


def assert_no_huge_number_without_note(comp: Comparison) -> None:
    """Every float is finite; a relative effect beyond ±10⁶ never appears."""
    for path, v in iter_floats(comp):
        assert v is None or math.isfinite(v), (path, v)
    for name, e in comp.estimators.items():
        assert e.rel_effect is None or abs(e.rel_effect) < 1e6, (name, e)
        if e.effect is None or e.se is None or e.rel_effect is None:
            assert e.note, (name, e)


# -- 1. exact zeros ---------------------------------------------------------------------------
@pytest.mark.parametrize("shards", [1, 7])
@pytest.mark.parametrize("seed", range(5))
def test_zero_column_has_exactly_zero_mean(seed: int, shards: int) -> None:
    """A column that is 0 for every control unit has mean exactly 0.0 and variance exactly
    0.0, batch (shift = pooled mean ≠ 0) and streamed (7 shards, differing shifts)."""
    m_c, _ = arms(500, 500, seed, y_c=0.0, b_c=0.0, shards=shards)
    i, j = m_c.index("y"), m_c.index("b")
    assert float(m_c.mean[i]) == 0.0 and float(m_c.mean[j]) == 0.0
    assert float(m_c.cov[i, i]) == 0.0 and float(m_c.cov[j, j]) == 0.0
    assert float(m_c.cov[i, m_c.index("x")]) == 0.0


def test_million_zeros_around_a_shift() -> None:
    """10⁶ control zeros beside 10⁶ treatment values of 0.03, grouped the batch way (shift =
    pooled mean 0.015, bincount summation): the raw residue is ~1e-13 — correlated rounding
    of identical terms, far above a √n·u estimate (1.5e-14) — yet within γ_n, so the mean is
    exactly 0 and the column constant."""
    n = 1_000_000
    rows = np.r_[np.zeros(n), np.full(n, 0.03)][:, None]
    group = np.r_[np.zeros(n, dtype=np.intp), np.ones(n, dtype=np.intp)]
    m_c, m_t = grouped_moments(("y",), rows, group, 2)
    raw = float(m_c.shift[0] + m_c.sums[0, 1] / m_c.sums[0, 0])
    assert raw != 0.0 and abs(raw) <= float(m_c.mean_bound[0])
    assert float(m_c.mean[0]) == 0.0 and float(m_c.cov[0, 0]) == 0.0
    assert float(m_t.mean[0]) == pytest.approx(0.03, rel=1e-12) and m_t.constant[0]


@pytest.mark.parametrize("seed", range(20))
def test_mean_bound_holds_and_is_tight(seed: int) -> None:
    """The a-priori bound is never exceeded: |computed mean − exact rational mean| ≤
    mean_bound, and |computed scatter − exact scatter| ≤ scatter_bound (exact values with
    fractions.Fraction), for values around a mean 10⁴ sd from 0 accumulated in 9 shards
    around shifts that differ from the mean. And the bound is tight enough to matter: below
    1e-10 of the spread at 3,000 units."""
    rng = np.random.default_rng(seed)
    v = 1e4 + rng.standard_normal((3000, 2)) * [1.0, 1e-3]
    m = MomentMatrix.empty(("a", "b"))
    for part in np.array_split(v, 9):
        m = m + MomentMatrix.from_rows(("a", "b"), part, shift=part[0] + rng.normal(0, 5, 2))
    exact = [sum(Fraction(float(t)) for t in v[:, k]) / len(v) for k in (0, 1)]
    raw = m.shift + m.sums[0, 1:] / m.sums[0, 0]
    for k in (0, 1):
        assert abs(Fraction(float(raw[k])) - exact[k]) <= Fraction(float(m.mean_bound[k]))
        sc = sum((Fraction(float(t)) - exact[k]) ** 2 for t in v[:, k])
        assert abs(Fraction(float(m.raw_scatter[k, k])) - sc) <= Fraction(
            float(m.scatter_bound[k, k]))
    spread = np.sqrt(np.diag(m.sums)[1:] / m.n)
    assert np.all(m.mean_bound < 1e-10 * spread + 1e-15 * np.abs(m.shift))


@pytest.mark.parametrize("shards", [1, 7])
def test_numeric_control_all_zero(shards: int) -> None:
    """Control 0 for every unit: diff's control mean is exactly 0, the relative effect is
    null with 'control mean is 0', no estimator has an SE (zero variance in the control arm
    only), and nothing is huge."""
    m_c, m_t = arms(800, 800, 3, y_c=0.0, shards=shards)
    spec = MetricSpec("m", "numeric", outcome="y", covariates=("x",))
    comp = compare(spec, m_c, m_t)
    assert_no_huge_number_without_note(comp)
    d = comp.estimators["diff"]
    assert d.control_mean == 0.0 and d.rel_effect is None
    assert d.note and "control arm only" in d.note
    for e in comp.estimators.values():
        assert e.se is None and e.p_value is None and e.rel_effect is None
    assert comp.bayes.chance_to_beat_control is None and comp.bayes.note


def test_binary_control_without_conversions() -> None:
    """No control conversions: control rate exactly 0, no relative effect, no p-value
    (zero variance in the control only), and Bayes says the control rate is 0 (it used to
    print "-4.16334e-17")."""
    m_c, m_t = arms(1000, 1000, 4, b_c=0.0)
    comp = compare(MetricSpec("b", "binary", outcome="b"), m_c, m_t)
    assert_no_huge_number_without_note(comp)
    d = comp.estimators["diff"]
    assert d.control_mean == 0.0 and d.rel_effect is None and d.p_value is None
    assert comp.bayes.model == "beta-binomial" and comp.bayes.note
    assert "control rate 0)" in comp.bayes.note and "e-1" not in comp.bayes.note
    assert comp.bayes.chance_to_beat_control is None


def test_ratio_with_zero_denominator_in_one_arm() -> None:
    """Denominator 0 for every control unit: every estimator and Bayes null, the note names
    the denominator and the arm (it used to print +96581102356173984%)."""
    m_c, m_t = arms(600, 600, 5, den_c_zero=True)
    spec = MetricSpec("r", "ratio", numerator="num", denominator="den", covariates=("x",))
    comp = compare(spec, m_c, m_t)
    assert_no_huge_number_without_note(comp)
    for e in comp.estimators.values():
        assert e.effect is None and e.note and "'den' sums to 0 in the control arm" in e.note
    assert comp.bayes.note and "'den'" in comp.bayes.note


def test_adjusted_control_mean_near_zero_gives_no_relative_effect() -> None:
    """A control mean that is not distinguishable from 0 makes Fieller's set unbounded:
    the relative effect is null with a note instead of an enormous number."""
    rng = np.random.default_rng(6)
    y = np.r_[rng.normal(0.0, 1.0, 2000), rng.normal(0.3, 1.0, 2000)]
    y[:2000] -= y[:2000].mean() - 1e-9  # control mean 1e-9 ± 0.02
    m_c = MomentMatrix.from_rows(("y",), y[:2000, None])
    m_t = MomentMatrix.from_rows(("y",), y[2000:, None])
    comp = compare(MetricSpec("m", "numeric", outcome="y"), m_c, m_t)
    e = comp.estimators["diff"]
    assert e.ok and e.p_value is not None and e.rel_effect is None
    assert e.note and "not distinguishable from 0" in e.note


# -- 2. large values are not constant ----------------------------------------------------------
def two_pass_cuped(y: np.ndarray, x: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """CUPED with pooled within-arm θ, by a numpy two-pass computation on centred rows."""
    yc = [y[t == g] - y[t == g].mean() for g in (0, 1)]
    xc = [x[t == g] - x[t == g].mean() for g in (0, 1)]
    theta = sum(float(a @ b) for a, b in zip(xc, yc, strict=True)) / sum(
        float(a @ a) for a in xc)
    xbar = x.mean()
    means = [y[t == g].mean() - theta * (x[t == g].mean() - xbar) for g in (0, 1)]
    var = sum(np.var(yc[g] - theta * xc[g], ddof=1) / len(yc[g]) for g in (0, 1))
    return float(means[1] - means[0]), float(math.sqrt(var))


@pytest.mark.parametrize("seed", range(3))
def test_epoch_seconds_as_metric_and_covariate(seed: int) -> None:
    """A column of 1.7e9 ± 85 (epoch seconds) is an ordinary metric (its SE equals
    statsmodels' OLS on the treatment dummy with HC2 errors, which is Welch's SE, to 1e-9
    relative; its effect equals the exact rational difference of means within the two ulps
    of 1.7e9 that float64 means can resolve, 4.8e-7) and an ordinary covariate (cuped equals
    the two-pass computation to 1e-9), in batch (grouped_moments) and from one matrix per
    arm (from_rows, shift = first row). The old tolerance 1e-14·mean² declared it constant."""
    rng = np.random.default_rng(100 + seed)
    n = 3000
    t = np.r_[np.zeros(n), np.ones(n)].astype(np.intp)
    epoch = np.round(1.7e9 + rng.normal(0, 85, 2 * n) + 3.0 * t)
    y = 1.0 + 1e-7 * (epoch - 1.7e9) + rng.normal(0, 1e-5, 2 * n) + 2e-7 * t
    rows = np.column_stack([epoch, y])
    names = ("epoch", "y")
    ols = sm.OLS(epoch, sm.add_constant(t.astype(float))).fit(cov_type="HC2")
    ref_cuped = two_pass_cuped(y, epoch, t)
    exact_effect = float(Fraction(int(epoch[t == 1].sum()), n)
                         - Fraction(int(epoch[t == 0].sum()), n))
    by_group = grouped_moments(names, rows, t, 2)
    by_rows = [MomentMatrix.from_rows(names, rows[t == g]) for g in (0, 1)]
    for m_c, m_t in (by_group, by_rows):
        e = compare(MetricSpec("epoch", "numeric", outcome="epoch"), m_c, m_t).estimators["diff"]
        assert e.note is None and e.se is not None and e.se > 0
        assert e.effect == pytest.approx(exact_effect, abs=2 * np.spacing(1.7e9))
        assert e.se == pytest.approx(float(ols.bse[1]), rel=1e-9)
        comp = compare(MetricSpec("y", "numeric", outcome="y", covariates=("epoch",)), m_c, m_t)
        c = comp.estimators["cuped"]
        assert c.note is None, c
        assert c.effect == pytest.approx(ref_cuped[0], rel=1e-9)
        assert c.se == pytest.approx(ref_cuped[1], rel=1e-9)
        assert c.variance_reduction is not None and c.variance_reduction > 0.3


# -- 3. one arm without variance ---------------------------------------------------------------
def test_two_units_both_converted() -> None:
    """Treatment: 2 units, both converted; control: 3% of 10,000. No SE, interval or p-value
    (it used to be p = 4e-140), a note naming the arm; the effect and means are kept, and the
    exact beta–binomial posterior (which needs no sample variance) is reported."""
    rng = np.random.default_rng(7)
    c = (rng.random(10_000) < 0.03).astype(float)[:, None]
    m_c = MomentMatrix.from_rows(("y",), c)
    m_t = MomentMatrix.from_rows(("y",), np.ones((2, 1)))
    comp = compare(MetricSpec("b", "binary", outcome="y"), m_c, m_t)
    d = comp.estimators["diff"]
    assert d.se is None and d.p_value is None and d.ci_low is None and d.seq_p_value is None
    assert d.effect == pytest.approx(1.0 - c.mean(), rel=1e-12)
    assert d.note and "treatment arm only" in d.note
    b = comp.bayes
    assert b.model == "beta-binomial" and b.chance_to_beat_control is not None
    assert 0.5 < b.chance_to_beat_control < 1.0


def test_one_constant_arm_with_covariate_has_no_p_value_anywhere() -> None:
    """With a covariate, cuped/mlrate/adjusted would give the constant arm the covariate's
    share of variance only (p ≈ 1e-25 where the data say nothing): all are not estimable."""
    m_c, m_t = arms(700, 700, 8, y_c=5.0)
    comp = compare(MetricSpec("m", "numeric", outcome="y", covariates=("x",)), m_c, m_t)
    assert set(comp.estimators) == {"diff", "cuped", "mlrate", "adjusted"}
    for e in comp.estimators.values():
        assert e.effect is not None and e.p_value is None and e.note
    assert comp.bayes.chance_to_beat_control is None and comp.bayes.note


# -- 4. one-unit arm ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["binary", "numeric"])
def test_one_unit_arm_is_null_everywhere(kind: str) -> None:
    """One treatment unit: every estimator and the Bayesian result (beta–binomial too) null,
    with the same note; lin_crespo's note names the unit count (it used to read "non-finite
    covariate statistics (an arm without data?)")."""
    rng = np.random.default_rng(9)
    names = ("y", "x", "z")
    c = np.column_stack([(rng.random(500) < 0.2).astype(float), rng.standard_normal((500, 2))])
    m_c = MomentMatrix.from_rows(names, c)
    m_t = MomentMatrix.from_rows(names, np.array([[1.0, 0.3, -0.2]]))
    for spec in (MetricSpec("m", kind, outcome="y"),  # type: ignore[arg-type]
                 MetricSpec("m", kind, outcome="y", covariates=("x",),  # type: ignore[arg-type]
                            in_experiment=("z",))):
        comp = compare(spec, m_c, m_t)
        for e in comp.estimators.values():
            assert e.effect is None and e.note == "treatment arm has 1 unit(s); at least 2 " \
                                                  "are needed", e
        assert comp.bayes.treatment_posterior_mean is None
        assert comp.bayes.note == "treatment arm has 1 unit(s); at least 2 are needed"


def test_three_arms_one_with_a_single_unit() -> None:
    """Through analyze_metric with three arms: the 1-unit arm's comparison is null, the
    other comparison is ordinary."""
    rng = np.random.default_rng(10)
    mats = {k: MomentMatrix.from_rows(("y",), rng.normal(1.0, 1.0, (n, 1)))
            for k, n in (("a", 400), ("b", 1), ("c", 400))}
    res = analyze_metric(MetricSpec("m", "numeric", outcome="y"), mats, "a", AnalysisSettings())
    by = {c.treatment: c for c in res.comparisons}
    assert by["b"].estimators["diff"].effect is None and by["b"].bayes.note
    assert by["c"].estimators["diff"].ok and by["c"].bayes.chance_to_beat_control is not None
