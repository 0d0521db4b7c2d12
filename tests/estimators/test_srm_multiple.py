"""Sample-ratio mismatch tests and multiple-testing corrections (DESIGN §3)."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from estimators.multiple import benjamini_hochberg, holm
from estimators.srm import chi_square, sequential_p_value, srm


def test_chi_square_equals_scipy() -> None:
    """χ² p-value equals scipy.stats.chisquare(counts, expected) to 1e-10 relative, for 2–5
    arms with random (unequal) configured weights, and through ``srm``."""
    rng = np.random.default_rng(1)
    for _ in range(300):
        k = int(rng.integers(2, 6))
        w = rng.uniform(0.5, 3.0, size=k)
        counts = rng.multinomial(int(rng.integers(50, 200_000)), w / w.sum())
        expected = counts.sum() * w / w.sum()
        ref = stats.chisquare(counts, expected).pvalue
        assert chi_square(counts, w) == pytest.approx(ref, rel=1e-10, abs=1e-300)
        res = srm(list(counts), list(w))
        assert res.p_value == pytest.approx(ref, rel=1e-10, abs=1e-300)
        assert res.flagged == (res.sequential_p_value < 0.001)  # the anytime-valid decision


@pytest.mark.slow
def test_sequential_srm_false_positive_rate_under_h0() -> None:
    """300 runs of 50,000 units under the configured split, checked after every 500 units
    (100 looks). Tolerance: the anytime-valid p-value is ≤ 0.05 at ANY look in ≤ 5% of runs
    (Ville's inequality); checked for a 50/50 two-arm and a 50/25/25 three-arm split. Beside
    it, the χ² p-value checked the same way rejects far more often (≥ 10%), showing that
    the looks are frequent enough for peeking to matter."""
    rng = np.random.default_rng(42)
    n_runs, step, looks = 300, 500, 100
    report = {}
    for weights in ((0.5, 0.5), (0.5, 0.25, 0.25)):
        blocks = rng.multinomial(step, weights, size=(n_runs, looks))
        cum = blocks.cumsum(axis=1)
        seq_hit = sum(any(sequential_p_value(cum[r, j], weights) <= 0.05
                          for j in range(looks)) for r in range(n_runs))
        expected = cum.sum(axis=-1, keepdims=True) * np.asarray(weights)
        chi_p = stats.chisquare(cum, expected, axis=-1).pvalue  # (runs, looks)
        chi_hit = int((chi_p <= 0.05).any(axis=1).sum())
        report[weights] = (seq_hit / n_runs, chi_hit / n_runs)
    msg = f"any-look rejection at 5% (sequential, χ²): {report}"
    print(msg)
    for seq_rate, chi_rate in report.values():
        assert seq_rate <= 0.05, msg
        assert chi_rate >= 0.10, msg


def test_sequential_srm_flags_52_48_split_at_100k() -> None:
    """A 52/48 split of 100,000 units against 50/50 weights is flagged (both p < 0.001), for
    the exact counts and in ≥ 99% of 200 sampled experiments with P(treatment) = 0.52."""
    res = srm([52_000, 48_000], [0.5, 0.5])
    assert res.flagged
    assert res.sequential_p_value < 0.001 and res.p_value < 0.001
    rng = np.random.default_rng(8)
    t = rng.binomial(100_000, 0.52, size=200)
    flagged = [sequential_p_value([n, 100_000 - n], [0.5, 0.5]) < 0.001 for n in t]
    assert np.mean(flagged) >= 0.99
    # and a balanced split is not flagged
    assert not srm([50_100, 49_900], [0.5, 0.5]).flagged


def test_holm_and_bh_equal_statsmodels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Holm and Benjamini–Hochberg adjusted p-values equal statsmodels' multipletests
    ('holm', 'fdr_bh') to 1e-12 on 500 random vectors (1–40 values, with ties, values near
    0 and 1)."""
    # multipletests calls gc.collect() on every call (≈50 ms each in a full test session);
    # skipping it changes no result.
    monkeypatch.setattr(gc, "collect", lambda *args: 0)
    rng = np.random.default_rng(17)
    for _ in range(500):
        m = int(rng.integers(1, 41))
        p = rng.uniform(size=m) ** rng.choice([0.5, 1.0, 3.0, 8.0])
        if m > 3:
            p[rng.integers(0, m, size=2)] = p[0]  # ties
        for ours, method in ((holm, "holm"), (benjamini_hochberg, "fdr_bh")):
            ref = multipletests(p, alpha=0.05, method=method)[1]
            np.testing.assert_allclose(ours(list(p)), ref, rtol=1e-12, atol=0)
    assert holm([]) == [] and benjamini_hochberg([]) == []
