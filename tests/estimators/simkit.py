"""Shared helpers for the seeded simulation tests of the estimators (not a test module).

Everything goes through the public path: per-arm :class:`MomentMatrix` built from raw rows,
then :func:`estimators.analysis.analyze_metric`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np

from estimators.analysis import AnalysisSettings, Comparison, MetricSpec, analyze_metric
from estimators.moments import MomentMatrix

CONTROL, TREATMENT = "control", "treatment"


def compare(spec: MetricSpec, m_c: MomentMatrix, m_t: MomentMatrix,
            settings: AnalysisSettings | None = None) -> Comparison:
    """The single treatment-vs-control comparison of ``analyze_metric``."""
    res = analyze_metric(spec, {CONTROL: m_c, TREATMENT: m_t}, CONTROL,
                         settings or AnalysisSettings())
    (comp,) = res.comparisons
    return comp


def arm_matrices(names: tuple[str, ...], rows: np.ndarray, n_c: int
                 ) -> tuple[MomentMatrix, MomentMatrix]:
    """Rows ``[:n_c]`` are control, the rest treatment."""
    return (MomentMatrix.from_rows(names, rows[:n_c]),
            MomentMatrix.from_rows(names, rows[n_c:]))


def chunked(total: int, size: int) -> Iterator[int]:
    """Chunk sizes summing to ``total`` (keeps simulation memory modest)."""
    done = 0
    while done < total:
        k = min(size, total - done)
        yield k
        done += k


def binomial_window_prob(p: float, n: int, lo: float, hi: float) -> float:
    """P(lo ≤ X/n ≤ hi) for X ~ Binomial(n, p): how often a correct method passes."""
    from scipy import stats

    return float(stats.binom.cdf(math.floor(hi * n + 1e-9), n, p)
                 - stats.binom.cdf(math.ceil(lo * n - 1e-9) - 1, n, p))


def iter_floats(obj: Any, path: str = "") -> Iterable[tuple[str, Any]]:
    """Every (path, value) of float-typed (or None) leaves of nested result records."""
    if is_dataclass(obj) and not isinstance(obj, type):
        for f in fields(obj):
            yield from iter_floats(getattr(obj, f.name), f"{path}.{f.name}")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from iter_floats(v, f"{path}[{k!r}]")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from iter_floats(v, f"{path}[{i}]")
    elif obj is None or (isinstance(obj, float | np.floating | int | np.integer)
                         and not isinstance(obj, bool)):
        yield path, obj
