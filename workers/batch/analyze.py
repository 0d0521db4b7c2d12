"""``liftstream analyze``: the estimators, in batch, on a unit-level CSV file.

Rows are units. One moment matrix per (slice, variation) is built in a single vectorised pass
(:func:`estimators.grouped.grouped_moments`); every slice then goes through the same
:func:`estimators.analysis.analyze_metric` that serves streaming results, so the numbers agree.

Missing values (an empty cell, whitespace, or a pandas NA token such as ``NA``) follow
``--missing``: ``error`` (default) names the column, the count and the first data row;
``drop`` analyses the rows complete in every column used and says how many it dropped (a
``rows_dropped`` entry in the document's top-level ``warnings``); ``zero`` counts a missing
metric or covariate value as 0. A missing variation, ``--by`` or ``--timeline`` value is never
filled: it is an error, or its row is dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from estimators import power
from estimators.analysis import AnalysisSettings, MetricKind, MetricSpec, analyze_metric
from estimators.grouped import grouped_moments, prefix_moments
from estimators.moments import MomentMatrix
from estimators.quantiles import (
    DEFAULT_ACCURACY,
    MAX_ACCURACY,
    MIN_ACCURACY,
    Histogram,
    QuantileSpec,
)
from estimators.quantiles import metric_documents as quantile_metric_documents
from estimators.report import Correction, slice_document
from estimators.slices import bh_across_slices
from workers.batch.columns import (
    LISTED,
    MISSING_CHOICES,
    InputError,
    MetricColumn,
    Missing,
    RatioColumns,
    brief,
    listing,
    missing_mask,
    missing_message,
    numeric_column,
    read_table,
)


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
    missing: Missing = "error"
    quantile_accuracy: float = DEFAULT_ACCURACY  # histogram relative accuracy (quantiles)

    def __post_init__(self) -> None:
        if not self.metrics and not self.ratios:
            raise InputError("give at least one --metric or --ratio")
        if self.points < 1:
            raise InputError(f"--points must be ≥ 1, got {self.points}")
        if self.missing not in MISSING_CHOICES:
            raise InputError(f"--missing must be one of {', '.join(MISSING_CHOICES)}, "
                             f"got {brief(self.missing)}")
        _check_roles(self)
        if not MIN_ACCURACY <= self.quantile_accuracy <= MAX_ACCURACY:
            raise InputError(f"--quantile-accuracy must be in [{MIN_ACCURACY}, {MAX_ACCURACY}]"
                             f", got {self.quantile_accuracy}")

    @property
    def label_columns(self) -> list[str]:
        """Columns that name a unit's group or place: never filled with 0."""
        return list(dict.fromkeys([self.variation, *self.by,
                                   *([self.timeline] if self.timeline else [])]))

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


def _check_roles(req: AnalyzeRequest) -> None:
    """Each column takes one role (a metric column may also be a ratio's part); nothing is
    given twice."""
    names: set[str] = set()
    for m in req.metrics:
        if m.column in names:
            raise InputError(f"metric {brief(m.column)} is given twice")
        names.add(m.column)
    for r in req.ratios:
        if r.name in names:
            raise InputError(f"ratio name {brief(r.name)} is already a metric or ratio name")
        names.add(r.name)
        if r.numerator == r.denominator:
            raise InputError(f"ratio {brief(r.name)}: numerator and denominator are the same "
                             f"column {brief(r.numerator)}")
    roles: dict[str, str] = {}

    def claim(column: str, role: str) -> None:
        before = roles.get(column)
        if before is None:
            roles[column] = role
            return
        if before == role:
            raise InputError(f"column {brief(column)} is given twice as {role}")
        raise InputError(f"column {brief(column)} is given as {before} and as {role}; "
                         f"a column takes one role")

    claim(req.variation, "--variation")
    for c in req.by:
        claim(c, "--by")
    for c in dict.fromkeys([*(m.column for m in req.metrics),
                            *(x for r in req.ratios for x in (r.numerator, r.denominator))]):
        claim(c, "--metric/--ratio")  # listed once: a metric may also be a ratio's part
    for c in req.covariates:
        claim(c, "--covariate")
    if req.prediction:
        claim(req.prediction, "--prediction")
    for c in req.in_experiment:
        claim(c, "--in-experiment")


def analyze_file(path: str, req: AnalyzeRequest) -> dict[str, Any]:
    """The result document for a CSV file."""
    cols = [*req.label_columns, *req.value_columns]
    labels = [req.variation, *req.by]
    frame = read_table(path, cols, text_columns=labels)
    return analyze_frame(frame, req)


def complete_rows(frame: pd.DataFrame, req: AnalyzeRequest
                  ) -> tuple[pd.DataFrame, np.ndarray, list[dict[str, str]]]:
    """Apply ``req.missing``: the rows to analyse, their data-row numbers, and warnings."""
    rows = np.arange(1, len(frame) + 1)
    masks = {c: missing_mask(frame[c]) for c in [*req.label_columns, *req.value_columns]}
    holes = {c: m for c, m in masks.items() if m.any()}
    if not holes:
        return frame, rows, []
    if req.missing == "error" or (req.missing == "zero" and
                                  any(c in holes for c in req.label_columns)):
        column = next(iter(holes))
        if column in req.label_columns:
            hint = "use --missing drop to skip those rows (labels are never filled with 0)"
        else:
            hint = ("use --missing drop to analyse the complete rows, or --missing zero to "
                    "count them as 0")
        raise InputError(f"{missing_message(column, holes[column])}; {hint}")
    if req.missing == "zero":
        return frame, rows, []  # numeric_column fills them
    drop = np.logical_or.reduce(list(holes.values()))
    k = int(drop.sum())
    if k == len(frame):
        raise InputError(f"every row has a missing value in the columns used "
                         f"({listing(list(holes))}); nothing left to analyse")
    per = ", ".join(f"{brief(c, 30)}: {int(m.sum())}" for c, m in list(holes.items())[:LISTED])
    warning = {"code": "rows_dropped",
               "detail": f"{k} of {len(frame)} rows dropped for missing values ({per})"}
    return frame[~drop], rows[~drop], [warning]


def analyze_frame(frame: pd.DataFrame, req: AnalyzeRequest) -> dict[str, Any]:
    frame, rows, warnings = complete_rows(frame, req)
    variation = frame[req.variation].astype(str).to_numpy()
    present = sorted(set(variation.tolist()))
    if not len(frame):
        raise InputError("no data rows to analyse")
    if req.control not in present:
        raise InputError(f"control {brief(req.control)} not found in column "
                         f"{brief(req.variation)} (values: {listing(present)})")
    variations = [req.control, *(v for v in present if v != req.control)]
    weights = _weights(req, variations)
    fill = 0.0 if req.missing == "zero" else None
    values = np.column_stack([numeric_column(frame, c, fill, rows) for c in req.value_columns])
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
    order = _order(frame[req.timeline]) if req.timeline else None

    prior_doc, req = _empirical(req, specs)
    slices = []
    for s, key in enumerate(slice_keys):
        arms = {v: mats[s * nv + i] for i, v in enumerate(variations)}
        in_slice = slice_id == s
        doc = _slice(key, variations, arms, weights, specs, req,
                     (values[in_slice], var_id[in_slice]))
        if order is not None:
            rows = np.flatnonzero(slice_id == s)
            doc["timeline"] = _timeline(rows, order, values, var_id, variations, weights,
                                        specs, req, names, shift)
        slices.append(doc)
    if req.by:  # Benjamini–Hochberg across the slices (estimators.slices)
        bh_across_slices(slices)
    return {"warnings": warnings, **prior_doc, "slices": slices}


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


def _order(s: pd.Series) -> np.ndarray:
    """Timeline keys that sort: numbers if every value is one, else the text as written."""
    numbers = pd.to_numeric(s, errors="coerce")
    if not numbers.isna().any():
        return numbers.to_numpy()
    return s.astype(str).to_numpy()


def _weights(req: AnalyzeRequest, variations: list[str]) -> list[float] | None:
    if req.weights is None:
        return None
    unknown = [k for k in req.weights if k not in variations]
    if unknown:
        raise InputError(f"weight for unknown variation {brief(unknown[0])}")
    missing = [v for v in variations if v not in req.weights]
    if missing:
        raise InputError(f"no weight given for variation {brief(missing[0])}")
    return [req.weights[v] for v in variations]


def _specs(req: AnalyzeRequest, values: np.ndarray) -> list[MetricSpec]:
    cols = req.value_columns
    out = []
    for m in req.metrics:
        if m.quantiles:  # estimators.quantiles, from histograms
            continue
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
           req: AnalyzeRequest, quantile_rows: tuple[np.ndarray, np.ndarray] | None = None
           ) -> dict[str, Any]:
    sig = req.prior_sigmas or {}
    results = [analyze_metric(spec, arms, req.control,
                              replace(req.settings, prior_sigma=sig[spec.name])
                              if spec.name in sig else req.settings) for spec in specs]
    counts = {v: arms[v].n for v in variations}
    doc = slice_document(key, variations, counts, weights, results, req.correction)
    doc = power.annotate(doc, req.settings.alpha, req.settings.sequential_tuning)
    if quantile_rows is not None:
        doc["metrics"] += _quantiles(req, variations, *quantile_rows)
    return doc


def _quantiles(req: AnalyzeRequest, variations: list[str], values: np.ndarray,
               var_id: np.ndarray) -> list[dict[str, Any]]:
    """Quantile metrics of one slice: one histogram per (metric, variation) of the rows'
    values, built like the streamed ones (estimators.quantiles)."""
    specs = [QuantileSpec(m.column, m.quantiles, req.quantile_accuracy)
             for m in req.metrics if m.quantiles]
    if not specs:
        return []
    cols = req.value_columns
    hists = {v: {s.name: Histogram.of(values[var_id == i, cols.index(s.name)],
                                      req.quantile_accuracy) for s in specs}
             for i, v in enumerate(variations)}
    return quantile_metric_documents(specs, variations, hists, req.settings.alpha,
                                     req.settings.sequential_tuning)


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
        upto_rows = sorted_rows[:cut]
        doc = _slice(None, variations, arms, weights, specs, req,
                     (values[upto_rows], var_id[upto_rows]))
        doc.pop("by")
        upto = order[sorted_rows[cut - 1]]
        points.append({"upto": upto.item() if hasattr(upto, "item") else upto, "rows": cut,
                       **doc})
    return points
