"""The result document: one JSON shape for ``liftstream analyze``, ``results`` and the API.

>>> doc = slice_document(None, ["a", "b"], {"a": 10, "b": 12}, None, [])
>>> doc["variations"][0]
{'name': 'a', 'n': 10, 'is_control': True}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

from estimators import defaults
from estimators.analysis import Comparison, MetricResult
from estimators.multiple import benjamini_hochberg, holm
from estimators.records import as_dict
from estimators.srm import srm

Correction = Literal["holm", "bh"]


def correct(metrics: Sequence[MetricResult], correction: Correction | None
            ) -> list[MetricResult]:
    """Adjust p-values across metrics × treatments, separately for each estimator.

    Both families are adjusted, each on its own: the fixed-horizon ``p_value`` into
    ``adjusted_p_value`` and the anytime-valid ``seq_p_value`` into ``adjusted_seq_p_value``.
    Holm needs only that each p-value be valid, and an anytime-valid p-value is valid at
    every (data-dependent) look, so Holm-adjusted ``seq_p_value`` controls the family-wise
    error at any stopping time. Benjamini–Hochberg is applied the same way (false discovery
    rate under independence or positive dependence of the p-values).
    """
    if correction is None:
        return list(metrics)
    method = holm if correction == "holm" else benjamini_hochberg
    names = {n for m in metrics for c in m.comparisons for n in c.estimators}
    fixed = _adjust(metrics, names, method, "p_value")
    seq = _adjust(metrics, names, method, "seq_p_value")
    out = []
    for i, m in enumerate(metrics):
        comps = []
        for j, c in enumerate(m.comparisons):
            est = {n: replace(e, adjusted_p_value=fixed.get((i, j, n)),
                              adjusted_seq_p_value=seq.get((i, j, n)))
                   for n, e in c.estimators.items()}
            comps.append(replace(c, estimators=est))
        out.append(replace(m, comparisons=tuple(comps)))
    return out


def _adjust(metrics: Sequence[MetricResult], names: set[str],
            method: Callable[[Sequence[float]], list[float]], field: str
            ) -> dict[tuple[int, int, str], float]:
    """``method`` applied to one p-value field of every estimator, per estimator name."""
    adjusted: dict[tuple[int, int, str], float] = {}
    for name in names:
        keys, ps = [], []
        for i, m in enumerate(metrics):
            for j, c in enumerate(m.comparisons):
                e = c.estimators.get(name)
                p = getattr(e, field) if e is not None else None
                if p is not None:
                    keys.append((i, j, name))
                    ps.append(p)
        adjusted.update(zip(keys, method(ps), strict=True))
    return adjusted


def comparison_document(c: Comparison) -> dict[str, Any]:
    doc = {
        "treatment": c.treatment,
        "control": c.control,
        "primary": c.primary.estimator,
        "estimators": {name: as_dict(e) for name, e in c.estimators.items()},
        "covariate_selection": [as_dict(x) for x in c.covariate_selection],
        "bayes": as_dict(c.bayes),
        "diagnostics": as_dict(c.diagnostics),
    }
    if c.proxy is not None:  # the biased predicted-metric proxy, kept apart (estimators.proxy)
        doc["proxy"] = as_dict(c.proxy)
    return doc


def metric_document(m: MetricResult) -> dict[str, Any]:
    return {"metric": m.metric, "kind": m.kind,
            "comparisons": [comparison_document(c) for c in m.comparisons]}


def slice_document(by: Mapping[str, Any] | None, variations: Sequence[str],
                   counts: Mapping[str, int], weights: Sequence[float] | None,
                   metrics: Sequence[MetricResult], correction: Correction | None = None,
                   srm_threshold: float = defaults.SRM_THRESHOLD) -> dict[str, Any]:
    """Variations (first = control), SRM and every metric's comparisons."""
    n = [int(counts.get(v, 0)) for v in variations]
    s = srm(n, weights, srm_threshold)
    doc: dict[str, Any] = {
        "by": dict(by) if by is not None else None,
        "variations": [{"name": v, "n": k, "is_control": i == 0}
                       for i, (v, k) in enumerate(zip(variations, n, strict=True))],
        "srm": as_dict(s),
        "metrics": [metric_document(m) for m in correct(metrics, correction)],
    }
    return doc
