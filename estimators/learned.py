"""What the finished experiments imply for a new one: per-metric prior σ and the
pre-selected in-experiment candidates (pure; the records come from :mod:`state.finished`).

Fisher pre-selection (Lin & Crespo 2024, §3.5): a candidate's balance p-values across
finished experiments are pooled by Fisher's method (:func:`estimators.selection.preselect`);
candidates that pass (combined p > α_sel) are used in every new experiment without re-testing
there (per-experiment re-testing drops a valid candidate in α_sel of experiments, which lowers
coverage). At least :data:`estimators.empirical_bayes.MIN_EXPERIMENTS` finished experiments
with p-values for every candidate are required, else the per-experiment test is used, with a
note.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from estimators.empirical_bayes import (
    MIN_EXPERIMENTS,
    PriorEstimate,
    balance_history,
    estimate_sigma,
    rows_for,
)
from estimators.records import as_dict
from estimators.selection import fisher_combination, preselect


def priors(metrics: Sequence[str], finished: Sequence[Mapping[str, Any]], configured: float,
           now: float | None = None) -> dict[str, PriorEstimate]:
    """Per metric, the empirical σ (or the configured one with a note)."""
    return {m: estimate_sigma(rows_for(m, finished), configured, m, now) for m in metrics}


def prior_document(est: Mapping[str, PriorEstimate],
                   finished: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    stops = {str(r.get("experiment")): r.get("stopped_at") for r in finished}
    out: dict[str, Any] = {"kind": "empirical", "minimum_experiments": MIN_EXPERIMENTS,
                           "metrics": {}}
    for m, e in est.items():
        d = as_dict(e)
        d.pop("extra", None)
        d.pop("inputs_latest_stop", None)
        d["experiments"] = [{"experiment": x, "stopped_at": stops.get(x)}
                            for x in dict.fromkeys(e.experiments)]
        out["metrics"][m] = d
    return out


@dataclass(frozen=True)
class Preselection:
    selected: tuple[str, ...] | None  # None: fall back to the per-experiment balance test
    document: dict[str, Any]


def fisher_preselection(candidates: Sequence[str], finished: Sequence[Mapping[str, Any]],
                        alpha: float, minimum: int = MIN_EXPERIMENTS) -> Preselection:
    """Candidates kept by Fisher's combination of their past balance p-values."""
    hist = balance_history(finished, candidates)
    counts = {c: sum(1 for r in finished if (r.get("balance") or {}).get(c)) for c in candidates}
    inputs = {c: {"experiments": counts[c], "p_values": len(hist[c]),
                  "fisher_p_value": fisher_combination(hist[c]) if hist[c] else None}
              for c in candidates}
    used = [{"experiment": r.get("experiment"), "stopped_at": r.get("stopped_at")}
            for r in finished if any((r.get("balance") or {}).get(c) for c in candidates)]
    doc: dict[str, Any] = {"kind": "fisher", "alpha": alpha, "minimum_experiments": minimum,
                           "candidates": inputs, "experiments": used}
    short = [c for c in candidates if counts[c] < minimum]
    if short:
        doc["selected"] = None
        doc["note"] = (f"fewer than {minimum} finished experiments with balance p-values for "
                       f"{', '.join(short)}: per-experiment balance test used")
        return Preselection(None, doc)
    history: dict[str, Sequence[float]] = dict(hist)
    kept = tuple(preselect(history, alpha))
    doc["selected"] = list(kept)
    return Preselection(kept, doc)
