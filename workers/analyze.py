"""``liftstream analyze``: the estimators, in batch, on a unit-level CSV file.

Rows are units. One moment matrix per (slice, variation) is built in a single vectorised pass
(:func:`estimators.grouped.grouped_moments`); every slice then goes through the same
:func:`estimators.analysis.analyze_metric` that serves streaming results, so the numbers agree.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from estimators import power
from estimators.analysis import AnalysisSettings, MetricKind, MetricSpec, analyze_metric
from estimators.grouped import grouped_moments, prefix_moments
from estimators.moments import MomentMatrix
from estimators.report import Correction, slice_document


class InputError(ValueError):
    """Bad input: the message names the column or value to fix."""


@dataclass(frozen=True)
class MetricColumn:
    column: str
    kind: MetricKind | None = None  # None: detect (binary if every value is 0/1)


@dataclass(frozen=True)
class RatioColumns:
    name: str
    numerator: str
    denominator: str


@dataclass(frozen=True)
class AnalyzeRequest:
    variation: str
    control: str
    metrics: tuple[MetricColumn, ...] = ()
    ratios: tuple[RatioColumns, ...] = ()
    covariates: tuple[str, ...] = ()
    prediction: str | None = None
    in_experiment: tuple[str, ...] = ()
    weights: dict[str, float] | None = None
    by: tuple[str, ...] = ()
    timeline: str | None = None
    points: int = 10
    settings: AnalysisSettings = field(default_factory=AnalysisSettings)
    correction: Correction | None = None
    past: tuple[dict[str, Any], ...] | None = None  # finished-experiment records: empirical prior
    prior_sigmas: dict[str, float] | None = None  # per metric (set from ``past``)

    def __post_init__(self) -> None:
        if not self.metrics and not self.ratios:
            raise InputError("give at least one --metric or --ratio")
        if self.points < 1:
            raise InputError(f"--points must be ≥ 1, got {self.points}")

    @property
    def value_columns(self) -> list[str]:
        cols: list[str] = []
        for c in [*(m.column for m in self.metrics),
                  *(x for r in self.ratios for x in (r.numerator, r.denominator)),
                  *self.covariates, *([self.prediction] if self.prediction else []),
                  *self.in_experiment]:
            if c not in cols:
                cols.append(c)
        return cols


def parse_metric(text: str) -> MetricColumn:
    col, _, kind = text.partition(":")
    if kind not in ("", "binary", "numeric"):
        raise InputError(f"metric {text!r}: kind must be 'binary' or 'numeric'")
    return MetricColumn(col, kind or None)  # type: ignore[arg-type]


def parse_ratio(text: str) -> RatioColumns:
    name, eq, rest = text.partition("=")
    num, slash, den = rest.partition("/")
    if not (eq and slash and name and num and den):
        raise InputError(f"ratio {text!r}: expected NAME=NUM_COL/DEN_COL")
    return RatioColumns(name, num, den)


def parse_weights(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in text.split(","):
        name, eq, value = part.rpartition("=")
        try:
            w = float(value)
        except ValueError:
            w = math.nan
        if not eq or not name or not math.isfinite(w) or w <= 0:
            raise InputError(f"weights {text!r}: expected NAME=POSITIVE_NUMBER,… at {part!r}")
        out[name] = w
    return out


def read_table(path: str, columns: Sequence[str]) -> pd.DataFrame:
    try:
        header = pd.read_csv(path, nrows=0)
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path} as CSV: {exc}") from None
    missing = [c for c in columns if c not in header.columns]
    if missing:
        raise InputError(f"column {missing[0]!r} not found in {path} "
                         f"(columns: {', '.join(map(str, header.columns))})")
    return pd.read_csv(path, usecols=list(dict.fromkeys(columns)), low_memory=False)


def numeric_column(frame: pd.DataFrame, column: str) -> np.ndarray:
    s = frame[column]
    if s.dtype == bool:
        return s.to_numpy(dtype=np.float64)
    if s.dtype == object or str(s.dtype).startswith("str"):
        lowered = s.astype(str).str.strip().str.lower()
        if lowered.isin(["true", "false"]).all():
            return (lowered == "true").to_numpy(dtype=np.float64)
    values = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argmax(bad))
        raise InputError(f"column {column!r} is not numeric: value {s.iloc[row]!r} "
                         f"in data row {row + 1}")
    return values


def analyze_file(path: str, req: AnalyzeRequest) -> dict[str, Any]:
    """The result document for a CSV file."""
    cols = [req.variation, *req.by, *([req.timeline] if req.timeline else []),
            *req.value_columns]
    frame = read_table(path, cols)
    return analyze_frame(frame, req)


def analyze_frame(frame: pd.DataFrame, req: AnalyzeRequest) -> dict[str, Any]:
    variation = frame[req.variation].astype(str).to_numpy()
    present = sorted(set(variation.tolist()))
    if req.control not in present:
        raise InputError(f"control {req.control!r} not found in column {req.variation!r} "
                         f"(values: {', '.join(present[:20])})")
    variations = [req.control, *(v for v in present if v != req.control)]
    weights = _weights(req, variations)
    values = np.column_stack([numeric_column(frame, c) for c in req.value_columns])
    specs = _specs(req, values)
    var_id = pd.Categorical(variation, categories=variations).codes.astype(np.intp)

    if req.by:
        keys = frame[list(req.by)].astype(str)
        codes, uniques = pd.MultiIndex.from_frame(keys).factorize()
        slice_id = np.asarray(codes, dtype=np.intp)
        slice_keys: list[dict[str, str] | None] = [
            dict(zip(req.by, (u if isinstance(u, tuple) else (u,)), strict=True))
            for u in uniques]
    else:
        slice_id = np.zeros(len(frame), dtype=np.intp)
        slice_keys = [None]

    names = tuple(req.value_columns)
    shift = values.mean(axis=0) if len(values) else None
    nv = len(variations)
    mats = grouped_moments(names, values, slice_id * nv + var_id, len(slice_keys) * nv, shift)
    order = frame[req.timeline].to_numpy() if req.timeline else None

    prior_doc, req = _empirical(req, specs)
    slices = []
    for s, key in enumerate(slice_keys):
        arms = {v: mats[s * nv + i] for i, v in enumerate(variations)}
        doc = _slice(key, variations, arms, weights, specs, req)
        if order is not None:
            rows = np.flatnonzero(slice_id == s)
            doc["timeline"] = _timeline(rows, order, values, var_id, variations, weights,
                                        specs, req, names, shift)
        slices.append(doc)
    return {**prior_doc, "slices": slices}


def _empirical(req: AnalyzeRequest, specs: list[MetricSpec]
               ) -> tuple[dict[str, Any], AnalyzeRequest]:
    """With past results: the per-metric empirical prior σ (estimators.learned)."""
    if req.past is None:
        return {}, req
    from estimators import learned

    recs = list(req.past)
    est = learned.priors([s.name for s in specs], recs, req.settings.prior_sigma, time.time())
    sigmas = {m: e.sigma for m, e in est.items()}
    return {"prior": learned.prior_document(est, recs)}, replace(req, prior_sigmas=sigmas)


def _weights(req: AnalyzeRequest, variations: list[str]) -> list[float] | None:
    if req.weights is None:
        return None
    unknown = [k for k in req.weights if k not in variations]
    if unknown:
        raise InputError(f"weight for unknown variation {unknown[0]!r}")
    missing = [v for v in variations if v not in req.weights]
    if missing:
        raise InputError(f"no weight given for variation {missing[0]!r}")
    return [req.weights[v] for v in variations]


def _specs(req: AnalyzeRequest, values: np.ndarray) -> list[MetricSpec]:
    cols = req.value_columns
    out = []
    for m in req.metrics:
        column = values[:, cols.index(m.column)]
        is01 = bool(np.isin(column, (0.0, 1.0)).all())
        if m.kind == "binary" and not is01:
            raise InputError(f"metric {m.column!r} is declared binary but has values "
                             f"other than 0/1")
        kind: MetricKind = m.kind or ("binary" if is01 else "numeric")
        out.append(MetricSpec(m.column, kind, outcome=m.column, covariates=req.covariates,
                              prediction=req.prediction, in_experiment=req.in_experiment))
    for r in req.ratios:
        out.append(MetricSpec(r.name, "ratio", numerator=r.numerator, denominator=r.denominator,
                              covariates=req.covariates, prediction=req.prediction,
                              in_experiment=req.in_experiment))
    return out


def _slice(key: dict[str, str] | None, variations: list[str], arms: dict[str, MomentMatrix],
           weights: list[float] | None, specs: list[MetricSpec],
           req: AnalyzeRequest) -> dict[str, Any]:
    sig = req.prior_sigmas or {}
    results = [analyze_metric(spec, arms, req.control,
                              replace(req.settings, prior_sigma=sig[spec.name])
                              if spec.name in sig else req.settings) for spec in specs]
    counts = {v: arms[v].n for v in variations}
    doc = slice_document(key, variations, counts, weights, results, req.correction)
    return power.annotate(doc, req.settings.alpha, req.settings.sequential_tuning)


def _timeline(rows: np.ndarray, order: np.ndarray, values: np.ndarray, var_id: np.ndarray,
              variations: list[str], weights: list[float] | None, specs: list[MetricSpec],
              req: AnalyzeRequest, names: tuple[str, ...], shift: np.ndarray | None
              ) -> list[dict[str, Any]]:
    sorted_rows = rows[np.argsort(order[rows], kind="stable")]
    n = len(sorted_rows)
    cuts = sorted({max(1, round(n * k / req.points)) for k in range(1, req.points + 1)})
    if not n:
        cuts = []
    prefix = prefix_moments(names, values[sorted_rows], var_id[sorted_rows], len(variations),
                            cuts, shift)
    points = []
    for cut, mats in zip(cuts, prefix, strict=True):
        arms = dict(zip(variations, mats, strict=True))
        doc = _slice(None, variations, arms, weights, specs, req)
        doc.pop("by")
        upto = order[sorted_rows[cut - 1]]
        points.append({"upto": upto.item() if hasattr(upto, "item") else upto, "rows": cut,
                       **doc})
    return points
