"""Sample-ratio mismatch tests.

* :func:`chi_square` — Pearson's χ² against the configured weights (reported, not decisive:
  checked at every poll it would raise false alarms that grow with the number of looks).
* :func:`sequential_p_value` — anytime-valid Dirichlet–multinomial test (Lindon & Malek
  2022): the Bayes factor ``BF_n`` of a Dirichlet(κ·p₀) mixture against p₀ is a test
  martingale under p₀, so ``min(1, 1/BF_n)`` is a p-value valid at every look.

``flagged`` is the anytime-valid decision alone (``sequential_p_value < threshold``), because
dashboards and the alerter look continuously: by Ville's inequality the chance of *ever*
flagging a correct split is at most ``threshold``, however often it is checked.

>>> round(chi_square([5000, 5000], [0.5, 0.5]), 6)
1.0
>>> sequential_p_value([5000, 5000], [0.5, 0.5]) == 1.0
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import special, stats

from estimators.defaults import SRM_THRESHOLD
from estimators.moments import FloatArray
from estimators.records import SrmResult

DEFAULT_CONCENTRATION = 1000.0


def chi_square(counts: Sequence[int], weights: Sequence[float]) -> float:
    n = np.asarray(counts, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    expected = n.sum() * w / w.sum()
    stat = float(((n - expected) ** 2 / expected).sum())
    return float(stats.chi2.sf(stat, len(n) - 1))


def sequential_p_value(counts: Sequence[int], weights: Sequence[float],
                       concentration: float = DEFAULT_CONCENTRATION) -> float:
    return float(sequential_p_values(np.asarray(counts, dtype=np.float64)[None, :], weights,
                                     concentration)[0])


def sequential_p_values(counts: FloatArray, weights: Sequence[float],
                        concentration: float = DEFAULT_CONCENTRATION) -> FloatArray:
    """:func:`sequential_p_value` of every row of ``counts`` (rows × arms), vectorised.

    >>> [round(float(p), 7) for p in sequential_p_values(np.array([[500, 500], [600, 400]]),
    ...                                                 [1, 1])]
    [1.0, 6.28e-05]
    """
    n = np.asarray(counts, dtype=np.float64)
    p0 = np.asarray(weights, dtype=np.float64)
    p0 = p0 / p0.sum()
    a = concentration * p0
    log_bf = (special.gammaln(a.sum()) - special.gammaln(a.sum() + n.sum(axis=-1))
              + (special.gammaln(a + n) - special.gammaln(a)).sum(axis=-1)
              - (n * np.log(p0)).sum(axis=-1))
    out: FloatArray = np.where(log_bf > 0, np.exp(-np.maximum(log_bf, 0.0)), 1.0)
    return out


def srm(counts: Sequence[int], weights: Sequence[float] | None = None,
        threshold: float = SRM_THRESHOLD,
        concentration: float = DEFAULT_CONCENTRATION) -> SrmResult:
    """Both tests; ``flagged`` when the anytime-valid p-value is below ``threshold``."""
    w = tuple(float(x) for x in (weights or [1.0] * len(counts)))
    if len(w) != len(counts):
        raise ValueError(f"{len(w)} weights for {len(counts)} variations")
    if any(x <= 0 for x in w):
        raise ValueError("weights must be positive")
    total = float(sum(w))
    w = tuple(x / total for x in w)
    if len(counts) < 2 or sum(counts) == 0:
        return SrmResult(None, None, False, w, "needs at least two variations with units")
    p = chi_square(counts, w)
    sp = sequential_p_value(counts, w, concentration)
    return SrmResult(p, sp, sp < threshold, w)
