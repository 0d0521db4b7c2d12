"""Sample-ratio mismatch tests.

* :func:`chi_square` — Pearson's χ² against the configured weights (flag at p < 0.001).
* :func:`sequential_p_value` — anytime-valid Dirichlet–multinomial test (Lindon & Malek
  2022): the Bayes factor ``BF_n`` of a Dirichlet(κ·p₀) mixture against p₀ is a test
  martingale under p₀, so ``min(1, 1/BF_n)`` is a p-value valid at every look.

>>> round(chi_square([5000, 5000], [0.5, 0.5]), 6)
1.0
>>> sequential_p_value([5000, 5000], [0.5, 0.5]) == 1.0
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import special, stats

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
    n = np.asarray(counts, dtype=np.float64)
    p0 = np.asarray(weights, dtype=np.float64)
    p0 = p0 / p0.sum()
    a = concentration * p0
    log_bf = (special.gammaln(a.sum()) - special.gammaln(a.sum() + n.sum())
              + float((special.gammaln(a + n) - special.gammaln(a)).sum())
              - float((n * np.log(p0)).sum()))
    return float(min(1.0, math.exp(-log_bf))) if log_bf > 0 else 1.0


def srm(counts: Sequence[int], weights: Sequence[float] | None = None,
        threshold: float = 0.001, concentration: float = DEFAULT_CONCENTRATION) -> SrmResult:
    """Both tests; ``flagged`` when either p-value is below ``threshold``."""
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
    return SrmResult(p, sp, p < threshold or sp < threshold, w)
