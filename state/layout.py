"""How an experiment definition maps onto unit vectors and estimator inputs.

A unit's *raw state* holds one accumulator per column: per metric the event count (binary,
count) or value sum (sum), per in-experiment candidate its count or sum, and per pre-experiment
covariate the value from the exposure message (missing covariates are 0). With a ``model`` in
the definition, each metric also gets a column holding the prediction ŷ frozen at exposure
(CUPAC/MLRATE). The *unit vector* ``u`` that enters the moment matrix applies per-unit rules:
binary → ``min(count, 1)``, ``cap`` → ``min(value, cap)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from estimators.analysis import AnalysisSettings, MetricKind, MetricSpec
from estimators.moments import FloatArray
from estimators.quantiles import DEFAULT_ACCURACY, QuantileSpec
from state.definition import ExperimentDef
from state.naming import column_names, model_id, pre_period_column, prediction_column

__all__ = ["ExperimentLayout", "analysis_settings", "model_id", "prediction_column"]


@dataclass(frozen=True)
class ExperimentLayout:
    """Column order and event routing of one experiment."""

    definition: ExperimentDef
    columns: tuple[str, ...]
    caps: FloatArray  # per column; inf where uncapped
    binary: np.ndarray  # bool per column
    counts_events: tuple[bool, ...]  # per column: adds 1 per event (else adds the value)
    event_columns: dict[str, tuple[int, ...]]  # event name → accumulator columns
    covariate_columns: dict[str, int]
    prediction_columns: dict[str, int]  # metric name → column of its frozen prediction ŷ
    model_ids: dict[str, str]  # metric name → online model id
    # event name → its metrics' pre-period columns ``pre_<metric>`` (stream/preperiod.py)
    pre_period_columns: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def covariates(self) -> tuple[str, ...]:
        """Pre-experiment covariates of the estimators: the definition's, then the
        metrics' own pre-period values (so cuped uses them by default when configured)."""
        d = self.definition
        return (*d.covariates, *(pre_period_column(m) for m in d.pre_period))

    @classmethod
    def of(cls, d: ExperimentDef) -> ExperimentLayout:
        names: list[str] = []
        caps: list[float] = []
        binary: list[bool] = []
        counts: list[bool] = []
        routes: dict[str, list[int]] = {}
        for m in d.metrics:
            routes.setdefault(m.event, []).append(len(names))
            names.append(m.name)
            caps.append(m.cap if m.cap is not None else np.inf)
            binary.append(m.aggregate == "binary")
            counts.append(m.aggregate in ("binary", "count"))
        for c in d.in_experiment:
            routes.setdefault(c.event, []).append(len(names))
            names.append(c.name)
            caps.append(np.inf)
            binary.append(False)
            counts.append(c.aggregate == "count")
        cov = {}
        for x in d.covariates:
            cov[x] = len(names)
            names.append(x)
            caps.append(np.inf)
            binary.append(False)
            counts.append(False)
        preds: dict[str, int] = {}
        models: dict[str, str] = {}
        if d.model is not None and d.covariates:
            for m in d.metrics:
                preds[m.name] = len(names)
                models[m.name] = model_id(d.id, m.name)
                names.append(prediction_column(m.name))
                caps.append(np.inf)
                binary.append(False)
                counts.append(False)
        pre: dict[str, list[int]] = {}
        by_name = {m.name: m for m in d.metrics}
        for name in d.pre_period:  # the metric's own aggregate over [t0 - lookback, t0)
            m = by_name[name]
            pre.setdefault(m.event, []).append(len(names))
            names.append(pre_period_column(name))
            caps.append(m.cap if m.cap is not None else np.inf)
            binary.append(m.aggregate == "binary")
            counts.append(m.aggregate in ("binary", "count"))
        assert tuple(names) == column_names(d)  # the one column order (limits count it)
        return cls(d, tuple(names), np.array(caps), np.array(binary), tuple(counts),
                   {k: tuple(v) for k, v in routes.items()}, cov, preds, models,
                   {k: tuple(v) for k, v in pre.items()})

    @property
    def width(self) -> int:
        return len(self.columns)

    def unit_vectors(self, raw: FloatArray) -> FloatArray:
        """Raw accumulators (units × columns) → the values that enter the moment matrix."""
        v = np.minimum(raw, self.caps)
        out: FloatArray = np.where(self.binary, np.minimum(v, 1.0), v)
        return out

    def metric_specs(self) -> list[MetricSpec]:
        d = self.definition
        cands = tuple(c.name for c in d.in_experiment)
        specs = []
        for m in d.metrics:
            if m.aggregate == "quantile":  # estimators.quantiles, from histograms
                continue
            kind: MetricKind = "binary" if m.aggregate == "binary" else "numeric"
            pred = prediction_column(m.name) if m.name in self.prediction_columns else None
            specs.append(MetricSpec(m.name, kind, outcome=m.name, covariates=self.covariates,
                                    prediction=pred, in_experiment=cands))
        for r in d.ratios:
            specs.append(MetricSpec(r.name, "ratio", numerator=r.numerator,
                                    denominator=r.denominator, covariates=self.covariates,
                                    in_experiment=cands))
        return specs

    def quantile_specs(self) -> list[QuantileSpec]:
        """The quantile metrics (estimators.quantiles; their column holds the unit value)."""
        return [QuantileSpec(m.name, m.quantiles, m.accuracy or DEFAULT_ACCURACY)
                for m in self.definition.metrics if m.aggregate == "quantile"]

    def analysis_settings(self) -> AnalysisSettings:
        """The estimator settings the definition asks for (:func:`analysis_settings`)."""
        return analysis_settings(self.definition)


def analysis_settings(d: ExperimentDef) -> AnalysisSettings:
    """The estimator settings a definition asks for."""
    return AnalysisSettings(alpha=d.alpha, sequential_tuning=d.sequential_tuning,
                            selection_alpha=d.selection_alpha,
                            selection_holm=d.selection_holm, prior_sigma=d.prior_sigma)
