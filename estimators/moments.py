"""Sufficient statistics: the shifted moment matrix of unit vectors.

A unit contributes the vector ``u = (1, v_1 .. v_d)`` (metric values, covariates, prediction,
in-experiment covariates). A :class:`MomentMatrix` holds ``Σ (u − s)(u − s)ᵀ`` with a fixed
shift ``s = (0, s_1 .. s_d)``, so

* ``n``, means and covariances follow exactly,
* two shards merge with ``+`` (re-centred if their shifts differ),
* adding and removing one unit is exact, so a unit's vector may change or be withdrawn,
* shifting by a value near the mean keeps float64 sums well conditioned (Welford's point,
  without his recursion): covariances agree with a two-pass computation to ~1e-12
  even when a mean is 10³ standard deviations away from zero.

Exact zeros. The shifted sums carry rounding residues (a column that is 0 for every unit,
accumulated around a shift ``s ≠ 0``, has a mean of ±1e-17 rather than 0). :attr:`mean_bound`
and :attr:`scatter_bound` are a-priori bounds on those residues (Higham 2002, *Accuracy and
Stability of Numerical Algorithms*, §4.2: a sum of ``n`` terms accumulated in any order is
off by at most ``γ_n Σ|x_i|``, ``γ_n = nu/(1 − nu)``, ``u = 2⁻⁵³``), written in terms of the
stored sums with Cauchy–Schwarz, ``Σ|v_i − s| ≤ √(n·Q)``, ``Q = Σ(v_i − s)²``:

* mean ``s + T/n``: ``|δ| ≤ u|s| + γ_{n+2}·√(Q/n)``;
* scatter ``Q_jk − T_j T_k/n``: ``|δ| ≤ 3γ_{n+2}·√(Q_jj Q_kk)`` (one ``γ`` for ``Q_jk``, one
  for each of ``T_j``, ``T_k``; the subtraction of ``v − s`` is folded into ``n + 2``).

A mean within its bound of 0 *is* 0 (:attr:`mean` snaps it), and a column whose scatter is
within its bound is constant (:attr:`cov` snaps its row and column to exact zeros), so every
``== 0`` guard downstream sees the zero that is in the data. The bound counts every unit
once; a unit updated or reverted many times adds that many terms (the bound then
under-counts by the same factor), and a matrix re-centred from a distant shift keeps the
error of that shift. ``γ_{n+2}`` is the worst case, and it is needed: a zero column summed
around a shift adds ``n`` identical terms, whose rounding errors are correlated and grow like
``n·u`` (a million zeros around 0.015 leave a residue of 1.9e-13, ten times a probabilistic
``√n·u`` bound, inside ``γ_n``'s 1.7e-12). A real mean below the bound (``< 2e-10`` standard
deviations at a million units) is indistinguishable from rounding and is reported as 0.

>>> import numpy as np
>>> a = MomentMatrix.from_rows(("y",), np.array([[1.0], [2.0]]))
>>> b = MomentMatrix.from_rows(("y",), np.array([[4.0]]))
>>> m = a + b
>>> (m.n, float(m.mean[0]), float(m.cov[0, 0]))
(3, 2.333333333333333, 2.3333333333333335)
>>> (m - b).n
2
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

UNIT_ROUNDOFF = float(np.finfo(np.float64).eps) / 2.0  # u = 2⁻⁵³


def gamma(k: float) -> float:
    """Higham's ``γ_k = k·u / (1 − k·u)``: the relative error bound of a k-term sum.

    >>> gamma(1) > UNIT_ROUNDOFF
    True
    """
    ku = k * UNIT_ROUNDOFF
    return ku / (1.0 - ku) if ku < 0.5 else math.inf


@dataclass(frozen=True, eq=False)
class MomentMatrix:
    """``Σ (u − s)(u − s)ᵀ`` over units, ``u = (1, v)``; index 0 is the constant."""

    names: tuple[str, ...]
    shift: FloatArray  # (d,)
    sums: FloatArray  # (d + 1, d + 1), symmetric

    # -- construction -------------------------------------------------------------------
    @classmethod
    def empty(cls, names: Sequence[str], shift: Sequence[float] | FloatArray | None = None
              ) -> MomentMatrix:
        d = len(names)
        s = np.zeros(d) if shift is None else np.asarray(shift, dtype=np.float64).copy()
        if s.shape != (d,):
            raise ValueError(f"shift has shape {s.shape}, expected ({d},)")
        return cls(tuple(names), s, np.zeros((d + 1, d + 1)))

    @classmethod
    def from_rows(cls, names: Sequence[str], rows: FloatArray,
                  shift: Sequence[float] | FloatArray | None = None) -> MomentMatrix:
        """One pass over raw rows (n × d). Default shift: the first row."""
        x = np.asarray(rows, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(names):
            raise ValueError(f"rows have shape {x.shape}, expected (n, {len(names)})")
        if shift is None:
            s = x[0].copy() if len(x) else np.zeros(len(names))
        else:
            s = np.asarray(shift, dtype=np.float64).copy()
        u = np.empty((x.shape[0], x.shape[1] + 1))
        u[:, 0] = 1.0
        u[:, 1:] = x - s
        return cls(tuple(names), s, u.T @ u)

    @classmethod
    def from_array(cls, names: Sequence[str], flat: Sequence[float] | FloatArray) -> MomentMatrix:
        """Inverse of :meth:`to_array`: ``shift`` then the upper triangle, row-major."""
        d = len(names)
        a = np.asarray(flat, dtype=np.float64)
        expected = cls.array_length(d)
        if a.shape != (expected,):
            raise ValueError(f"flat array has {a.size} values, expected {expected} for {d} columns")
        sums = np.zeros((d + 1, d + 1))
        iu = np.triu_indices(d + 1)
        sums[iu] = a[d:]
        sums.T[iu] = a[d:]
        return cls(tuple(names), a[:d].copy(), sums)

    @staticmethod
    def array_length(d: int) -> int:
        return d + (d + 1) * (d + 2) // 2

    def to_array(self) -> FloatArray:
        iu = np.triu_indices(len(self.names) + 1)
        return np.concatenate([self.shift, self.sums[iu]])

    # -- the packed byte format (the one home: Redis hashes ``ls:{p}:m:<exp>``, Lua) -------
    def to_bytes(self) -> bytes:
        """:meth:`to_array` as little-endian float64 bytes (the stored format)."""
        return pack(self.shift, self.sums)

    @classmethod
    def from_bytes(cls, names: Sequence[str], blob: bytes) -> MomentMatrix:
        """Inverse of :meth:`to_bytes`; ValueError naming both sizes if ``blob`` is not
        laid out for ``names``.

        >>> m = MomentMatrix.empty(["y"]).update([2.0]).update([4.0])
        >>> MomentMatrix.from_bytes(["y"], m.to_bytes()).mean.tolist()
        [3.0]
        """
        flat = np.frombuffer(blob, dtype="<f8").astype(np.float64)
        return cls.from_array(names, flat)


    # -- algebra --------------------------------------------------------------------------
    def recentred(self, shift: FloatArray) -> MomentMatrix:
        """The same statistics accumulated around another shift (exact algebra)."""
        new = np.asarray(shift, dtype=np.float64)
        if np.array_equal(new, self.shift):
            return self
        d = len(self.names)
        a = np.eye(d + 1)
        a[1:, 0] = self.shift - new  # (u − s') = (u − s) + (s − s')
        return MomentMatrix(self.names, new.copy(), a @ self.sums @ a.T)

    def __add__(self, other: MomentMatrix) -> MomentMatrix:
        self._check_compatible(other)
        if self.sums[0, 0] == 0.0 and not self.sums.any():
            return other  # an empty matrix adopts the other's (well-conditioned) shift
        o = other.recentred(self.shift)
        return MomentMatrix(self.names, self.shift, self.sums + o.sums)

    def __sub__(self, other: MomentMatrix) -> MomentMatrix:
        self._check_compatible(other)
        o = other.recentred(self.shift)
        return MomentMatrix(self.names, self.shift, self.sums - o.sums)

    def update(self, values: Sequence[float] | FloatArray) -> MomentMatrix:
        """Add one unit."""
        return MomentMatrix(self.names, self.shift, self.sums + self.unit_delta(None, values))

    def revert(self, values: Sequence[float] | FloatArray) -> MomentMatrix:
        """Remove one unit previously added with the same values."""
        return MomentMatrix(self.names, self.shift, self.sums - self.unit_delta(None, values))

    def unit_delta(self, old: Sequence[float] | FloatArray | None,
                   new: Sequence[float] | FloatArray | None) -> FloatArray:
        """``u'u'ᵀ − uuᵀ`` in this matrix's shifted coordinates (``None`` = absent)."""
        d = len(self.names)
        out = np.zeros((d + 1, d + 1))
        for sign, values in ((1.0, new), (-1.0, old)):
            if values is None:
                continue
            u = np.empty(d + 1)
            u[0] = 1.0
            u[1:] = np.asarray(values, dtype=np.float64) - self.shift
            out += sign * np.outer(u, u)
        return out

    def select(self, names: Sequence[str]) -> MomentMatrix:
        """The sub-matrix of the named columns."""
        idx = [self.index(n) for n in names]
        full = [0, *(i + 1 for i in idx)]
        return MomentMatrix(tuple(names), self.shift[idx], self.sums[full][:, full])

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no column {name!r} in moment matrix {self.names}") from None

    def _check_compatible(self, other: MomentMatrix) -> None:
        if self.names != other.names:
            raise ValueError(f"cannot combine columns {self.names} with {other.names}")

    # -- derived values -------------------------------------------------------------------
    @property
    def n(self) -> int:
        return round(float(self.sums[0, 0]))

    @property
    def mean(self) -> FloatArray:
        """Column means; a mean within :attr:`mean_bound` of 0 is exactly 0.

        >>> m = MomentMatrix.from_rows(("y",), np.zeros((3, 1)) , shift=[0.1])
        >>> float(m.mean[0])
        0.0
        """
        n = self.sums[0, 0]
        if n <= 0:
            return np.full(len(self.names), np.nan)
        out: FloatArray = self.shift + self.sums[0, 1:] / n
        out[np.abs(out) <= self.mean_bound] = 0.0
        return out

    @property
    def mean_bound(self) -> FloatArray:
        """Rounding bound of each mean: ``u|s| + γ_{n+2}·√(Q/n)`` (module docstring)."""
        n = float(self.sums[0, 0])
        if n <= 0:
            return np.zeros(len(self.names))
        q = np.clip(np.diag(self.sums)[1:], 0.0, None)
        out: FloatArray = UNIT_ROUNDOFF * np.abs(self.shift) + gamma(n + 2.0) * np.sqrt(q / n)
        return out

    @property
    def scatter_bound(self) -> FloatArray:
        """Rounding bound of each scatter entry: ``3γ_{n+2}·√(Q_jj Q_kk)``."""
        n = float(self.sums[0, 0])
        d = len(self.names)
        if n <= 0:
            return np.zeros((d, d))
        r = np.sqrt(np.clip(np.diag(self.sums)[1:], 0.0, None))
        out: FloatArray = 3.0 * gamma(n + 2.0) * np.outer(r, r)
        return out

    @property
    def constant(self) -> NDArray[np.bool_]:
        """Columns whose scatter is within its rounding bound (constant in the data)."""
        return np.asarray(~(np.diag(self.raw_scatter) > np.diag(self.scatter_bound)))

    @property
    def raw_scatter(self) -> FloatArray:
        """``Σ (v − v̄)(v − v̄)ᵀ`` as computed, rounding residues included."""
        n = self.sums[0, 0]
        if n <= 0:
            return np.zeros((len(self.names), len(self.names)))
        t = self.sums[0, 1:]
        out: FloatArray = self.sums[1:, 1:] - np.outer(t, t) / n
        return out

    @property
    def scatter(self) -> FloatArray:
        """``Σ (v − v̄)(v − v̄)ᵀ``; rows and columns of constant columns are exactly 0."""
        out = self.raw_scatter
        const = self.constant
        if const.any():
            out[const, :] = 0.0
            out[:, const] = 0.0
        return out

    @property
    def cov(self) -> FloatArray:
        """Sample covariance (n − 1 denominator); NaN below two units."""
        n = self.sums[0, 0]
        if n < 2:
            return np.full((len(self.names), len(self.names)), np.nan)
        out: FloatArray = self.scatter / (n - 1)
        return out

    @property
    def cov_bound(self) -> FloatArray:
        """Rounding bound of :attr:`cov` (``scatter_bound / (n − 1)``); NaN below two units."""
        n = self.sums[0, 0]
        if n < 2:
            return np.full((len(self.names), len(self.names)), np.nan)
        out: FloatArray = self.scatter_bound / (n - 1)
        return out

    def __repr__(self) -> str:
        return f"MomentMatrix(n={self.n}, names={self.names})"


def pack(shift: FloatArray, sums: FloatArray) -> bytes:
    """Shift then the upper triangle (row-major) of ``sums`` as little-endian float64 bytes:
    the stored moment-matrix format (``sums`` may be a delta, as ``apply_batch.lua`` adds)."""
    iu = np.triu_indices(len(shift) + 1)
    return bytes(np.concatenate([shift, sums[iu]]).astype("<f8").tobytes())


def pack_shift(shift: Sequence[float] | FloatArray) -> bytes:
    """A shift alone as stored (the base a delta was computed against)."""
    return bytes(np.asarray(shift, dtype="<f8").tobytes())


def packed_values(blob: bytes) -> int:
    """How many float64 values a packed blob holds."""
    return len(blob) // 8
