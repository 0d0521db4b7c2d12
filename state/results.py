"""Current results of a live experiment: merge every partition's matrices, run estimators."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from estimators.analysis import analyze_metric
from estimators.moments import MomentMatrix
from estimators.report import Correction, slice_document
from state.layout import ExperimentLayout
from state.registry import ExperimentDef
from state.store import (
    LAST_EVENT_TS,
    Client,
    partition_count,
    read_counters,
    read_matrices,
    read_partition_warnings,
)
from state.warnings import experiment_warnings


def experiment_matrices(client: Client, d: ExperimentDef) -> dict[str, MomentMatrix]:
    """Merged moment matrix per variation (variations without units get an empty one)."""
    lay = ExperimentLayout.of(d)
    parts = range(partition_count(client))
    merged = read_matrices(client, d.id, lay.columns, parts)
    return {v: merged.get(v, MomentMatrix.empty(lay.columns)) for v in d.variations}


def experiment_document(client: Client, d: ExperimentDef,
                        correction: Correction | None = None) -> dict[str, Any]:
    """The result document (same shape as ``liftstream analyze``) plus live counters."""
    lay = ExperimentLayout.of(d)
    arms = experiment_matrices(client, d)
    settings = lay.analysis_settings()
    control = d.variations[0]
    metrics = [analyze_metric(spec, arms, control, settings) for spec in lay.metric_specs()]
    counts = {v: arms[v].n for v in d.variations}
    doc = slice_document(None, list(d.variations), counts, list(d.weights), metrics,
                         correction if correction is not None else d.correction)
    parts = range(partition_count(client))
    counters = read_counters(client, parts)
    prefix = f"{d.id}:"
    doc["counters"] = {k[len(prefix):]: int(v) for k, v in counters.items()
                       if k.startswith(prefix) and k != prefix + LAST_EVENT_TS}
    # the experiment's own freshness: the newest event applied to it, not the pipeline's
    doc["freshness"] = {"last_event_ts": counters.get(prefix + LAST_EVENT_TS)}
    warnings = experiment_warnings(d.id, counters, read_partition_warnings(client, parts))
    return {"experiment": d.id, "warnings": warnings, "slices": [doc]}


def experiment_document_with(client: Client, d: ExperimentDef,
                             correction: Correction | None = None,
                             alpha: float | None = None) -> dict[str, Any]:
    """:func:`experiment_document` with the definition's ``alpha`` optionally overridden.

    ``alpha`` changes every CI, the anytime-valid intervals and the Bayesian credible
    intervals; ``ValueError`` if it is not in (0, 1).
    """
    if alpha is None or alpha == d.alpha:
        return experiment_document(client, d, correction)
    return experiment_document(client, replace(d, alpha=alpha), correction)
