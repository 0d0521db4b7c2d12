"""How an experiment definition maps onto unit vectors and estimator inputs.

A unit's *raw state* holds one accumulator per column: per metric the event count (binary,
count) or value sum (sum), per in-experiment candidate its count or sum, and per pre-experiment
covariate the value from the exposure message (missing covariates are 0). With a ``model`` in
the definition, each metric also gets a column holding the prediction ŷ frozen at exposure
(CUPAC/MLRATE). The *unit vector* ``u`` that enters the moment matrix applies per-unit rules:
binary → ``min(count, 1)``, ``cap`` → ``min(value, cap)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from estimators.analysis import AnalysisSettings, MetricKind, MetricSpec
from estimators.moments import FloatArray
from state.definition import ExperimentDef
from state.naming import column_names, model_id, prediction_column

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
        assert tuple(names) == column_names(d)  # the one column order (limits count it)
        return cls(d, tuple(names), np.array(caps), np.array(binary), tuple(counts),
                   {k: tuple(v) for k, v in routes.items()}, cov, preds, models)

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
            kind: MetricKind = "binary" if m.aggregate == "binary" else "numeric"
            pred = prediction_column(m.name) if m.name in self.prediction_columns else None
            specs.append(MetricSpec(m.name, kind, outcome=m.name, covariates=d.covariates,
                                    prediction=pred, in_experiment=cands))
        for r in d.ratios:
            specs.append(MetricSpec(r.name, "ratio", numerator=r.numerator,
                                    denominator=r.denominator, covariates=d.covariates,
                                    in_experiment=cands))
        return specs

    def analysis_settings(self) -> AnalysisSettings:
        """The estimator settings the definition asks for (:func:`analysis_settings`)."""
        return analysis_settings(self.definition)


def analysis_settings(d: ExperimentDef) -> AnalysisSettings:
    """The estimator settings a definition asks for."""
    return AnalysisSettings(alpha=d.alpha, sequential_tuning=d.sequential_tuning,
                            selection_alpha=d.selection_alpha,
                            selection_holm=d.selection_holm, prior_sigma=d.prior_sigma)
