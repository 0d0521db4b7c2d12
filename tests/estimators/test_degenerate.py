"""Degenerate inputs: ``analyze_metric`` explains instead of raising or returning NaN.

For every case the whole comparison is checked (``assert_well_formed``): every float field
is finite or None; an estimate without effect/se, or with se = 0, carries a ``note``; a
balance check without p-value carries a note; a Bayesian result without posterior carries a
note. Then the case-specific expectations: which estimators are affected and why.

Several cases reproduce bugs found in ``estimators/`` and since fixed: rounding residue of
a constant column (±1e-17 variances) used to raise or pass as a real variance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from estimators.analysis import ESTIMATORS, Comparison, MetricSpec
from estimators.moments import MomentMatrix
from tests.estimators.simkit import compare, iter_floats

NAMES = ("y", "x", "x2", "c", "yhat", "z", "z2", "num", "den")
FULL = dict(covariates=("x",), prediction="yhat", in_experiment=("z",))


def rows(n: int, seed: int, *, y: float | None = None, binary: bool = False,
         den_zero: bool = False, const: float = 0.7, ratio: float | None = None) -> np.ndarray:
    """Unit rows: y, x, x2 = 2x + 1, c = const, yhat, z, z2 = 3z − 1, num, den."""
    rng = np.random.default_rng(seed)
    x, e, z, g = rng.standard_normal((4, n))
    if y is not None:
        yy = np.full(n, y)
    elif binary:
        yy = (rng.random(n) < 0.1 * np.exp(0.3 * x - 0.045)).astype(float)
    else:
        yy = 2.0 + x + e
    den = np.zeros(n) if den_zero else rng.poisson(3, n) + 1.0
    num = ratio * den if ratio is not None else 1.5 * den + rng.standard_normal(n)
    return np.column_stack([yy, x, 2 * x + 1, np.full(n, const), x + 0.2 * g, z, 3 * z - 1,
                            num, den])


def matrix(r: np.ndarray) -> MomentMatrix:
    return MomentMatrix.from_rows(NAMES, r) if len(r) else MomentMatrix.empty(NAMES)


def assert_well_formed(comp: Comparison) -> None:
    for path, v in iter_floats(comp):
        assert v is None or math.isfinite(v), f"non-finite {path} = {v}"
    for name, e in comp.estimators.items():
        if e.effect is None or e.se is None:
            assert e.note, f"{name}: null effect/se without a note: {e}"
            assert e.ci_low is None and e.p_value is None and e.seq_ci_low is None, e
        elif e.se == 0.0:
            assert e.note, f"{name}: se = 0 without a note: {e}"
            assert e.ci_low is None and e.p_value is None, e
        else:
            assert e.se > 0.0
            for f in (e.ci_low, e.ci_high, e.p_value, e.seq_ci_low, e.seq_ci_high,
                      e.seq_p_value):
                assert f is not None and math.isfinite(f), e
    for ch in comp.covariate_selection:
        assert ch.p_value is not None or ch.note, f"balance check without p or note: {ch}"
        assert not (ch.p_value is None and ch.selected), ch
    b = comp.bayes
    if b.treatment_posterior_mean is None or b.chance_to_beat_control is None:
        assert b.note, f"Bayesian result without posterior and without note: {b}"


def assert_not_estimable(comp: Comparison, names: tuple[str, ...], reason: str) -> None:
    for k in names:
        e = comp.estimators[k]
        assert e.effect is None and e.se is None, e
        assert e.note and reason in e.note, e


SPECS = {
    "numeric": MetricSpec("m", "numeric", outcome="y", **FULL),
    "binary": MetricSpec("b", "binary", outcome="y", **FULL),
    "ratio": MetricSpec("r", "ratio", numerator="num", denominator="den", **FULL),
}


@pytest.mark.parametrize("kind", list(SPECS))
@pytest.mark.parametrize("n_t,n_c", [(0, 400), (1, 400), (400, 0), (400, 1), (1, 1), (0, 0)])
def test_arm_with_zero_or_one_unit(kind: str, n_t: int, n_c: int) -> None:
    """An arm with 0 or 1 unit: every estimator is null with a note naming the arm; the
    balance checks say there are too few units; no exception, no NaN."""
    comp = compare(SPECS[kind], matrix(rows(n_c, 1, binary=True)),
                   matrix(rows(n_t, 2, binary=True)))
    assert_well_formed(comp)
    assert set(comp.estimators) == set(ESTIMATORS)
    assert_not_estimable(comp, ESTIMATORS, "unit(s)")
    assert all(ch.note and not ch.selected for ch in comp.covariate_selection)


@pytest.mark.parametrize("kind,y_c,y_t", [("numeric", 3.0, 3.5), ("binary", 0.0, 0.0),
                                          ("binary", 1.0, 1.0), ("numeric", 0.0, 2.0)])
def test_zero_variance_in_both_arms(kind: str, y_c: float, y_t: float) -> None:
    """Outcome constant within each arm: every estimator reports the exact mean difference
    with se = 0 and a 'zero variance' note, and no interval/p-value; Bayes explains itself.
    (No prediction here: with ŷ, lin_crespo's residual y − ŷ has real variance.)"""
    spec = MetricSpec("m", kind, outcome="y", covariates=("x",), in_experiment=("z",))
    comp = compare(spec, matrix(rows(300, 1, y=y_c)), matrix(rows(300, 2, y=y_t)))
    assert_well_formed(comp)
    assert set(comp.estimators) == {"diff", "cuped", "mlrate", "lin_crespo", "adjusted"}
    for e in comp.estimators.values():
        assert e.se == 0.0 and e.note and "zero variance" in e.note, e
        assert e.effect == pytest.approx(y_t - y_c, abs=1e-12)
    assert comp.bayes.note


def test_zero_variance_outcome_with_prediction() -> None:
    """Same, with a prediction: all but lin_crespo are zero-variance; lin_crespo works on
    y − ŷ, which varies, so it returns an ordinary (finite, positive-se) estimate."""
    comp = compare(SPECS["numeric"], matrix(rows(300, 1, y=3.0)), matrix(rows(300, 2, y=3.0)))
    assert_well_formed(comp)
    for k in ("diff", "cuped", "cupac", "mlrate", "adjusted"):
        assert comp.estimators[k].se == 0.0 and comp.estimators[k].note
    assert comp.estimators["lin_crespo"].se > 0


def test_constant_covariate() -> None:
    """A constant pre-experiment covariate (and the same column as candidate): every
    estimator that regresses on it is null with a 'zero variance' note; diff, cupac and
    lin_crespo (which never use it) are ordinary; the candidate is not selected and says
    why."""
    spec = MetricSpec("m", "numeric", outcome="y", covariates=("x", "c"), prediction="yhat",
                      in_experiment=("z", "c"))
    comp = compare(spec, matrix(rows(500, 1)), matrix(rows(500, 2)))
    assert_well_formed(comp)
    assert_not_estimable(comp, ("cuped", "mlrate", "adjusted"), "zero variance")
    for k in ("diff", "cupac", "lin_crespo"):
        assert comp.estimators[k].ok and comp.estimators[k].note is None
    checks = {ch.name: ch for ch in comp.covariate_selection}
    assert checks["c"].p_value is None and not checks["c"].selected and checks["c"].note
    assert checks["z"].p_value is not None


def test_constant_covariate_after_streaming_merge() -> None:
    """A constant column accumulated the streaming way (empty matrix + 13 shards) must be
    treated like the same column from one pass: not selected, cuped not estimable."""
    spec = MetricSpec("m", "numeric", outcome="y", covariates=("x", "c"), in_experiment=("c",))
    arms = []
    for seed in (1, 2):
        m = MomentMatrix.empty(NAMES)
        for part in np.array_split(rows(2000, seed, const=0.7), 13):
            m = m + MomentMatrix.from_rows(NAMES, part)
        arms.append(m)
    comp = compare(spec, arms[0], arms[1])
    assert_well_formed(comp)
    assert not comp.covariate_selection[0].selected, comp.covariate_selection
    assert_not_estimable(comp, ("cuped", "mlrate", "adjusted"), "zero variance")


def test_two_collinear_covariates() -> None:
    """x2 = 2x + 1 beside x, and candidate z2 = 3z − 1 beside z: every estimator that
    regresses on both columns of a pair is null with a 'collinear' note; the others are
    ordinary."""
    spec = MetricSpec("m", "numeric", outcome="y", covariates=("x", "x2"), prediction="yhat",
                      in_experiment=("z", "z2"))
    comp = compare(spec, matrix(rows(500, 1)), matrix(rows(500, 2)))
    assert_well_formed(comp)
    assert [ch.selected for ch in comp.covariate_selection] == [True, True]
    assert_not_estimable(comp, ("cuped", "mlrate", "lin_crespo", "adjusted"), "collinear")
    for k in ("diff", "cupac"):
        assert comp.estimators[k].ok and comp.estimators[k].note is None


@pytest.mark.parametrize("zero_in", ["both", "control", "treatment"])
def test_ratio_denominator_sums_to_zero(zero_in: str) -> None:
    """A ratio metric whose denominator sums to 0 in an arm: every estimator is null with a
    note; no exception, no NaN."""
    c = rows(400, 1, den_zero=zero_in in ("both", "control"))
    t = rows(400, 2, den_zero=zero_in in ("both", "treatment"))
    comp = compare(SPECS["ratio"], matrix(c), matrix(t))
    assert_well_formed(comp)
    for k in ESTIMATORS:
        e = comp.estimators[k]
        assert e.effect is None and e.se is None and e.note, e
    assert comp.bayes.note


@pytest.mark.parametrize("case", ["constant_ratio", "perfect_fit"])
def test_zero_variance_from_rounding_does_not_raise(case: str) -> None:
    """Zero variance that arrives through rounding must behave like exact zero variance:
    a ratio metric whose every unit has ratio 1.5 (linearised variance ±1e-17) and cuped
    with a covariate that fits y exactly (y = 2x + 1 + T). 30 seeds each."""
    for seed in range(30):
        if case == "constant_ratio":
            spec = MetricSpec("r", "ratio", numerator="num", denominator="den")
            c, t = rows(500, 2 * seed, ratio=1.5), rows(500, 2 * seed + 1, ratio=1.5)
        else:
            spec = MetricSpec("m", "numeric", outcome="y", covariates=("x",))
            c, t = rows(500, 2 * seed), rows(500, 2 * seed + 1)
            c[:, 0] = 2 * c[:, 1] + 1
            t[:, 0] = 2 * t[:, 1] + 2
        comp = compare(spec, matrix(c), matrix(t))
        assert_well_formed(comp)


def test_zero_variance_ratio_with_prediction_diagnostics() -> None:
    """Ratio metric with a prediction column; control's denominator sums to 0 (so every
    estimator is null with a note) and every treatment unit has ratio 1.5, so the pooled
    linearised outcome has zero variance: the prediction–outcome correlation must be None,
    not an exception (seeds 0–29)."""
    spec = MetricSpec("r", "ratio", numerator="num", denominator="den", prediction="yhat")
    for seed in range(30):
        comp = compare(spec, matrix(rows(500, 2 * seed, ratio=1.5, den_zero=True)),
                       matrix(rows(500, 2 * seed + 1, ratio=1.5)))
        assert_well_formed(comp)
        assert comp.diagnostics.prediction_outcome_correlation is None


def test_diagnostics_balance_none_has_note() -> None:
    """Diagnostics' covariate-balance entry for a constant covariate: p-value None must come
    with a note, like the in-experiment selection checks do."""
    spec = MetricSpec("m", "numeric", outcome="y", covariates=("x", "c"))
    comp = compare(spec, matrix(rows(500, 1)), matrix(rows(500, 2)))
    for ch in comp.diagnostics.covariate_balance:
        assert ch.p_value is not None or ch.note, ch
