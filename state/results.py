"""Current results of a live experiment: merge every partition's matrices, run estimators."""

from __future__ import annotations

import time
import zlib
from dataclasses import replace
from typing import Any

import msgspec

from estimators import learned, power
from estimators.analysis import AnalysisSettings, analyze_metric
from estimators.decision import decide_document
from estimators.empirical_bayes import finished_record
from estimators.moments import MomentMatrix
from estimators.quantiles import from_fields
from estimators.quantiles import metric_documents as quantile_metric_documents
from estimators.report import Correction, slice_document
from state import finished, history, keys
from state.definition import ExperimentDef
from state.layout import ExperimentLayout
from state.registry import Registry
from state.store import (
    Client,
    partition_count,
    read_counters,
    read_histograms,
    read_matrices,
    read_partition_warnings,
)
from state.warnings import experiment_warnings
from state.window import phase


def experiment_matrices(client: Client, d: ExperimentDef) -> dict[str, MomentMatrix]:
    """Merged moment matrix per variation (variations without units get an empty one)."""
    lay = ExperimentLayout.of(d)
    parts = range(partition_count(client))
    merged = read_matrices(client, d.id, lay.columns, parts)
    return {v: merged.get(v, MomentMatrix.empty(lay.columns)) for v in d.variations}


def experiment_document(client: Client, d: ExperimentDef,
                        correction: Correction | None = None, now: float | None = None,
                        by: str | None = None) -> dict[str, Any]:
    """The result document (same shape as ``liftstream analyze``) plus live counters;
    with ``by``, one slice per value of that dimension (state.slice_results)."""
    lay = ExperimentLayout.of(d)
    arms = experiment_matrices(client, d)
    settings = lay.analysis_settings()
    control = d.variations[0]
    now = time.time() if now is None else now
    learned_docs, per_metric = _learned(client, d, settings, lay.metric_specs(), now)
    metrics = [analyze_metric(spec, arms, control, per_metric.get(spec.name, settings))
               for spec in lay.metric_specs()]
    counts = {v: arms[v].n for v in d.variations}
    doc = slice_document(None, list(d.variations), counts, list(d.weights), metrics,
                         correction if correction is not None else d.correction)
    elapsed = elapsed_seconds(d, now)
    power.annotate(doc, d.alpha, d.sequential_tuning, d.targets(), elapsed,
                   None if elapsed is not None else _since(client, d.id, now))
    parts = range(partition_count(client))
    doc["metrics"] += quantile_documents(client, d, lay, parts)
    counters = read_counters(client, parts)
    doc["counters"] = {k: int(v) for k, v in keys.experiment_counters(counters, d.id).items()
                       if k != keys.LAST_EVENT_TS}
    # the experiment's own freshness: the newest event applied to it, not the pipeline's
    doc["freshness"] = {
        "last_event_ts": counters.get(keys.experiment_counter(d.id, keys.LAST_EVENT_TS))}
    warnings = experiment_warnings(d.id, counters, read_partition_warnings(client, parts))
    verdict = decide_document(doc, d.primary, d.guardrails, d.higher_is_better(), elapsed,
                              d.min_runtime_seconds)
    window = {"start": d.start, "end": d.end, "interval": "[start, end)",
              "phase": phase(d.status, d.start, d.end, time.time())}
    return {"experiment": d.id, "window": window, "warnings": warnings,
            "decision": verdict.as_dict(), **learned_docs,
            "slices": [doc] if by is None else _by(client, d, by, correction, doc)}


def _by(client: Client, d: ExperimentDef, by: str, correction: Correction | None,
        whole: dict[str, Any]) -> list[dict[str, Any]]:
    from state.slice_results import dimension_slices

    out = dimension_slices(client, d, by, correction)
    for sl in out:  # the experiment's freshness, as the whole document has it
        sl["freshness"] = whole["freshness"]
    return out


def elapsed_seconds(d: ExperimentDef, now: float) -> float | None:
    """Seconds since the experiment's ``start`` (up to its ``end``); None without a start."""
    if d.start is None:
        return None
    upto = now if d.end is None else min(now, d.end)
    return max(0.0, upto - d.start)


def _since(client: Client, experiment: str, now: float) -> tuple[float, dict[str, int]] | None:
    """(seconds since, arm sizes at) the oldest kept history snapshot: the exposure rate of
    an experiment without ``start`` (state.history; written by the alerter)."""
    try:
        snap = history.oldest(client, experiment)
        if snap is None:
            return None
        return now - float(snap["ts"]), {str(k): int(v) for k, v in snap["n"].items()}
    except (ValueError, KeyError, TypeError, zlib.error, msgspec.DecodeError):
        return None


def record_finished(client: Client, d: ExperimentDef, now: float | None = None) -> None:
    """Store the finished-experiment record of ``d`` (see :mod:`state.finished`)."""
    doc = experiment_document(client, replace(d, prior="fixed",
                                              in_experiment_selection="balance"))
    finished.write(client, finished_record(d.id, time.time() if now is None else now, doc))


def finished_records(client: Client, exclude: str | None = None) -> list[dict[str, Any]]:
    """Records of every stopped experiment, writing missing ones first (lazily)."""
    recs = finished.read_all(client)
    for other in Registry(client).list():
        if other.status == "stopped" and other.id not in recs:
            record_finished(client, other)
    recs = finished.read_all(client)
    return [r for k, r in sorted(recs.items()) if k != exclude]


def _learned(client: Client, d: ExperimentDef, settings: AnalysisSettings, specs: list[Any],
             now: float) -> tuple[dict[str, Any], dict[str, AnalysisSettings]]:
    """Empirical prior and Fisher pre-selection from finished experiments (if asked for)."""
    if d.prior != "empirical" and d.in_experiment_selection != "fisher":
        return {}, {}
    recs = finished_records(client, exclude=d.id)
    docs: dict[str, Any] = {}
    if d.in_experiment_selection == "fisher" and d.in_experiment:
        pre = learned.fisher_preselection([c.name for c in d.in_experiment], recs,
                                          d.selection_alpha)
        docs["in_experiment_selection"] = pre.document
        settings = replace(settings, preselected=pre.selected)
    per = {s.name: settings for s in specs}
    if d.prior == "empirical":
        est = learned.priors([s.name for s in specs], recs, d.prior_sigma, now)
        docs["prior"] = learned.prior_document(est, recs)
        per = {s.name: replace(settings, prior_sigma=est[s.name].sigma) for s in specs}
    return docs, per


def experiment_document_with(client: Client, d: ExperimentDef,
                             correction: Correction | None = None,
                             alpha: float | None = None, by: str | None = None
                             ) -> dict[str, Any]:
    """:func:`experiment_document` with the definition's ``alpha`` optionally overridden.

    ``alpha`` changes every CI, the anytime-valid intervals and the Bayesian credible
    intervals; ``ValueError`` if it is not in (0, 1).
    """
    if alpha is None or alpha == d.alpha:
        return experiment_document(client, d, correction, by=by)
    return experiment_document(client, replace(d, alpha=alpha), correction, by=by)


def quantile_documents(client: Client, d: ExperimentDef, lay: ExperimentLayout,
                       parts: range) -> list[dict[str, Any]]:
    """The quantile metrics' documents from every partition's histograms."""
    specs = lay.quantile_specs()
    if not specs:
        return []
    stored = read_histograms(client, d.id, list(d.variations), parts)
    acc = {s.name: s.accuracy for s in specs}
    hists = {v: {m: from_fields(f, acc[m]) for m, f in per.items() if m in acc}
             for v, per in stored.items()}
    return quantile_metric_documents(specs, list(d.variations), hists, d.alpha,
                                     d.sequential_tuning)
