"""Where a partition's stored moment matrix is centred, and when to move it (DESIGN §2).

A stored matrix holds ``S = Σ (u − s)(u − s)ᵀ`` around a shift ``s``
(:class:`estimators.moments.MomentMatrix`). Float64 keeps the sums to about ``ε·|S|``, and
``|S_jj| = Σ (v_j − s_j)² = n·(σ_j² + (μ_j − s_j)²)``: a column's variance is kept to a
relative ``ε·(1 + (μ_j − s_j)²/σ_j²)`` (Chan, Golub & LeVeque 1983, "Algorithms for
computing the sample variance", the shifted-data bound). A shift taken from a partition's first
batch may sit far from where the data end up (outcomes are still 0 while only exposures have
arrived), so the loss factor grows to ``(μ/σ)²``: 10⁸ for a metric whose mean is 10⁴ sd.

Rule (:func:`next_shift`): after every batch, a column whose running mean is more than one
standard deviation from its shift (``|μ_j − s_j| > σ_j``, so the loss factor would exceed 2)
is re-centred to :func:`grid_shift` of its mean. The batch builder sends the old shift as the
*base* and the new one with a delta accumulated around it; ``apply_batch.lua`` checks the base
against the stored shift and re-expresses the stored sums around the new shift in the same
atomic script, with exactly the algebra of :func:`recentre_sums`.

The new shift is rounded to a multiple of a power of two not above ``σ_j`` (at most ``σ_j/2``
from the mean, so the loss factor stays ≤ 1.25): integer or 0/1 columns then keep integer or
dyadic shifts, and their sums stay exact through a re-centring.

Not recoverable by any shift: digits already lost before the move, and units whose value jumps
from 0 to ``m`` contribute ``m²`` each while they are at 0 (a float64 sum cannot hold both
``L·m²`` for ``L`` such units and ``n·σ²`` to more than ``ε·L·m²``).

>>> import numpy as np
>>> s = np.zeros((2, 2)); s[0, 0] = 4.0; s[0, 1] = s[1, 0] = 4e4; s[1, 1] = 4e8 + 8.0
>>> next_shift(np.array([0.0]), s)
array([10000.])
>>> recentre_sums(s, np.array([0.0]), np.array([1e4]))[1, 1]
np.float64(8.0)
"""

from __future__ import annotations

import math

import numpy as np

from estimators.moments import FloatArray

#: Re-centre a column when its mean is more than this many standard deviations from its shift.
RECENTRE_SDS = 1.0
#: ... and more than this fraction of its magnitude (below it the difference is rounding noise).
_NOISE = 2.0 ** -40


def grid_shift(mean: float, sd: float) -> float:
    """``mean`` rounded to a multiple of the largest power of two ≤ ``sd`` (``mean`` itself
    when ``sd`` is 0 or the grid is finer than float64 resolves)."""
    if not (math.isfinite(mean) and math.isfinite(sd)) or sd <= 0.0:
        return mean if math.isfinite(mean) else 0.0
    q = math.ldexp(1.0, math.frexp(sd)[1] - 1)  # 2^floor(log2 sd)
    if abs(mean) >= q * 2.0 ** 52:
        return mean
    return float(round(mean / q)) * q


def initial_shift(vectors: FloatArray) -> FloatArray:
    """The shift of a new stored matrix: :func:`grid_shift` of the first batch's columns."""
    if not len(vectors):
        return np.zeros(vectors.shape[1] if vectors.ndim == 2 else 0)
    mean = np.mean(vectors, axis=0)
    sd = np.std(vectors, axis=0)
    return np.array([grid_shift(float(m), float(s)) for m, s in zip(mean, sd, strict=True)])


def next_shift(shift: FloatArray, sums: FloatArray) -> FloatArray | None:
    """The shift to re-centre ``sums`` (accumulated around ``shift``) on, or ``None`` if every
    column is within :data:`RECENTRE_SDS` standard deviations of its mean."""
    n = float(sums[0, 0])
    if not n > 0.0:
        return None
    t = sums[0, 1:]
    dist = np.abs(t) / n  # |μ − s|
    var = np.maximum(np.diag(sums)[1:] - t * t / n, 0.0) / n  # population variance
    sd = np.sqrt(var)
    mean = shift + t / n
    move = (dist > RECENTRE_SDS * sd) & (dist > _NOISE * np.maximum(np.abs(mean), np.abs(shift)))
    move &= np.isfinite(mean)
    if not move.any():
        return None
    out = shift.copy()
    for j in np.flatnonzero(move):
        out[j] = grid_shift(float(mean[j]), float(sd[j]))
    return None if np.array_equal(out, shift) else out


def recentre_sums(sums: FloatArray, shift: FloatArray, new: FloatArray) -> FloatArray:
    """``sums`` re-expressed around ``new``: with ``d = new − shift`` (``d₀ = 0``),
    ``S'₀ⱼ = S₀ⱼ − n·dⱼ`` and ``S'ᵢⱼ = Sᵢⱼ − dᵢ·S'₀ⱼ − dⱼ·S₀ᵢ``, i.e. ``S − S₁dᵀ − dS₁ᵀ + n·ddᵀ``.

    Computed on the upper triangle, then mirrored; ``apply_batch.lua`` evaluates the very same
    expressions in the same order (float64 both), so the builder's copy tracks Redis bit for
    bit. Equals :meth:`estimators.moments.MomentMatrix.recentred` up to rounding.
    """
    k = sums.shape[0]
    dd = np.zeros(k)
    dd[1:] = np.asarray(new, dtype=np.float64) - shift
    n = sums[0, 0]
    row0 = sums[0].copy()
    new0 = row0 - n * dd
    new0[0] = n
    out = np.empty_like(sums)
    for i in range(k):
        for j in range(i, k):
            out[i, j] = sums[i, j] - dd[i] * new0[j] - dd[j] * row0[i]
            out[j, i] = out[i, j]
    return out
