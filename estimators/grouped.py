"""Moment matrices of many groups from raw rows in one vectorised pass.

Used by batch analysis: one matrix per (slice, variation) for a million rows costs one
``bincount`` per entry of the upper triangle.

>>> import numpy as np
>>> ms = grouped_moments(("y",), np.array([[1.0], [2.0], [5.0]]), np.array([0, 0, 1]), 2)
>>> [m.n for m in ms], [float(m.mean[0]) for m in ms]
([2, 1], [1.5, 5.0])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from estimators.moments import FloatArray, MomentMatrix


def grouped_moments(names: Sequence[str], rows: FloatArray, group: NDArray[np.intp],
                    n_groups: int, shift: FloatArray | None = None) -> list[MomentMatrix]:
    """One :class:`MomentMatrix` per group id in ``range(n_groups)``.

    ``shift`` defaults to the column means over all rows (keeps sums well conditioned).
    """
    x = np.asarray(rows, dtype=np.float64)
    d = x.shape[1]
    s = x.mean(axis=0) if shift is None else np.asarray(shift, dtype=np.float64)
    if not len(x):
        s = np.zeros(d)
    u = np.empty((x.shape[0], d + 1))
    u[:, 0] = 1.0
    u[:, 1:] = x - s
    iu, ju = np.triu_indices(d + 1)
    tri = np.empty((len(iu), n_groups))
    for k, (i, j) in enumerate(zip(iu, ju, strict=True)):
        tri[k] = np.bincount(group, weights=u[:, i] * u[:, j], minlength=n_groups)
    out = []
    for g in range(n_groups):
        sums = np.zeros((d + 1, d + 1))
        sums[iu, ju] = tri[:, g]
        sums[ju, iu] = tri[:, g]
        out.append(MomentMatrix(tuple(names), s.copy(), sums))
    return out


def prefix_moments(names: Sequence[str], rows: FloatArray, group: NDArray[np.intp],
                   n_groups: int, cuts: Sequence[int], shift: FloatArray | None = None
                   ) -> list[list[MomentMatrix]]:
    """For each cut ``r``, the per-group matrices of the first ``r`` rows (rows in order)."""
    x = np.asarray(rows, dtype=np.float64)
    d = x.shape[1]
    s = x.mean(axis=0) if shift is None and len(x) else (
        np.zeros(d) if shift is None else np.asarray(shift, dtype=np.float64))
    u = np.empty((x.shape[0], d + 1))
    u[:, 0] = 1.0
    u[:, 1:] = x - s
    iu, ju = np.triu_indices(d + 1)
    prods = u[:, iu] * u[:, ju]  # rows × m
    result: list[list[MomentMatrix]] = [[] for _ in cuts]
    for g in range(n_groups):
        mask = group == g
        csum = np.cumsum(prods * mask[:, None], axis=0)
        for k, r in enumerate(cuts):
            sums = np.zeros((d + 1, d + 1))
            if r > 0:
                sums[iu, ju] = csum[r - 1]
                sums[ju, iu] = csum[r - 1]
            result[k].append(MomentMatrix(tuple(names), s.copy(), sums))
    return result
