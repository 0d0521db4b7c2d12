"""Re-centring a stored moment matrix (stream/shifts.py), as pure functions."""

from __future__ import annotations

import numpy as np
import pytest

from estimators.moments import MomentMatrix
from stream.shifts import RECENTRE_SDS, grid_shift, initial_shift, next_shift, recentre_sums

NAMES = ("y", "x", "c")


def _rows(seed: int, n: int = 500) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.normal(3e4, 3.0, n), rng.normal(size=n),
                            rng.poisson(4.0, n).astype(float)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recentre_sums_equals_the_moment_matrix_reference(seed: int) -> None:
    """Same statistics as MomentMatrix.recentred (a @ S @ aᵀ) for a benign move."""
    rows = _rows(seed)
    m = MomentMatrix.from_rows(NAMES, rows, shift=rows.mean(axis=0) + np.array([5.0, 0.3, 1.0]))
    new = rows.mean(axis=0) - np.array([2.0, 0.1, 0.5])
    ref = m.recentred(new)
    got = MomentMatrix(NAMES, new, recentre_sums(m.sums, m.shift, new))
    np.testing.assert_allclose(got.sums, ref.sums, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(got.cov, ref.cov, rtol=1e-12)
    np.testing.assert_array_equal(got.sums, got.sums.T)


def test_recentring_early_recovers_the_two_pass_precision() -> None:
    """Shift 0 with mean 10⁴ sd loses ~8 digits of the variance; re-centring after the first
    rows and accumulating the rest around the new shift keeps it to ~1e-11 (the 10 rows summed
    around 0 cost ε·10·m²)."""
    rows = _rows(3, 4000)
    ref = np.var(rows[:, 0], ddof=1)
    stale = MomentMatrix.from_rows(NAMES, rows, shift=np.zeros(3))
    first = MomentMatrix.from_rows(NAMES, rows[:10], shift=np.zeros(3))
    new = next_shift(first.shift, first.sums)
    assert new is not None
    moved = MomentMatrix(NAMES, new, recentre_sums(first.sums, first.shift, new))
    moved = moved + MomentMatrix.from_rows(NAMES, rows[10:], shift=new)
    assert abs(moved.cov[0, 0] / ref - 1) < 1e-10  # measured 1.2e-11
    assert abs(stale.cov[0, 0] / ref - 1) > 1e-8  # measured 4.5e-8: what this module prevents


def test_integer_columns_keep_exact_sums_through_a_recentring() -> None:
    rng = np.random.default_rng(4)
    rows = np.column_stack([rng.poisson(50.0, 300), rng.integers(0, 2, 300)]).astype(float)
    m = MomentMatrix.from_rows(("k", "b"), rows, shift=np.zeros(2))
    new = next_shift(m.shift, m.sums)
    assert new is not None and new[0] == np.round(new[0])  # an integer shift
    exact = MomentMatrix.from_rows(("k", "b"), rows, shift=new)
    np.testing.assert_array_equal(recentre_sums(m.sums, m.shift, new), exact.sums)


def test_next_shift_criterion() -> None:
    rng = np.random.default_rng(5)
    y = rng.normal(100.0, 2.0, 1000)
    near = MomentMatrix.from_rows(("y",), y[:, None], shift=[100.0 + RECENTRE_SDS])
    assert next_shift(near.shift, near.sums) is None  # within one sd: keep the shift
    far = MomentMatrix.from_rows(("y",), y[:, None], shift=[90.0])
    new = next_shift(far.shift, far.sums)
    assert new is not None and abs(new[0] - y.mean()) <= 0.5 * y.std()
    assert new[0] % 1.0 == 0.0  # a multiple of 2^floor(log2 2.0) = 2
    const = MomentMatrix.from_rows(("y",), np.full((5, 1), 7.25), shift=[0.0])
    assert next_shift(const.shift, const.sums) == pytest.approx([7.25])
    moved = np.array([7.25])
    again = MomentMatrix(("y",), moved, recentre_sums(const.sums, const.shift, moved))
    assert again.sums[0, 1] == 0.0 and next_shift(again.shift, again.sums) is None
    assert next_shift(np.zeros(1), np.zeros((2, 2))) is None  # no units


def test_grid_and_initial_shift() -> None:
    assert grid_shift(12345.678, 3.0) == 12346.0
    assert grid_shift(0.7, 0.46) == 0.75
    assert grid_shift(5.5, 0.0) == 5.5
    assert grid_shift(float("nan"), 1.0) == 0.0
    rows = np.array([[0.0, 10.0], [0.0, 12.0], [0.0, 15.0]])
    np.testing.assert_array_equal(initial_shift(rows), [0.0, 12.0])
