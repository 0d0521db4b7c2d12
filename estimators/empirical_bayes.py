"""Empirical-Bayes prior σ of the relative effect, learned from finished experiments.

The Bayesian posterior (:mod:`estimators.bayes`) puts ``N(0, σ²)`` on the relative difference
(the prior is centred on the control, as LaunchDarkly documents). Past experiments' relative
effects ``y_i`` with standard errors ``s_i`` follow ``y_i ~ N(θ_i, s_i²)``, ``θ_i ~ N(0, τ²)``;
σ = τ is estimated by the DerSimonian–Laird method of moments (DerSimonian & Laird 1986) with
the mean fixed at 0 (the prior's centre):

    w_i = 1/s_i²,   Q = Σ w_i y_i²,   τ² = max(0, (Q − k) / Σ w_i)

(E[Q] = k + τ² Σ w_i). Fewer than :data:`MIN_EXPERIMENTS` usable experiments → the configured
σ with a note. A zero estimate is floored at :data:`MIN_SIGMA` (a point-mass prior would
ignore the data), with a note.

>>> e = estimate_sigma([("a", 0.1, 0.01), ("b", -0.1, 0.01), ("c", 0.0, 0.01),
...                     ("d", 0.05, 0.01), ("e", -0.05, 0.01)], configured=0.3)
>>> round(e.sigma, 4), e.source
(0.07, 'empirical')
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from estimators.document import Comparison, Estimator, ResultDocument, parse

MIN_EXPERIMENTS = 5
MIN_SIGMA = 1e-3


@dataclass(frozen=True)
class PriorEstimate:
    """The prior σ used for one metric and where it came from."""

    metric: str | None
    sigma: float
    source: str  # "empirical" | "configured"
    configured_sigma: float
    method: str = "DerSimonian-Laird (mean 0)"
    k: int = 0
    experiments: tuple[str, ...] = ()
    estimated_at: float | None = None
    q: float | None = None
    note: str | None = None
    inputs_latest_stop: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def estimate_sigma(rows: Iterable[tuple[str, float | None, float | None]], configured: float,
                   metric: str | None = None, now: float | None = None,
                   minimum: int = MIN_EXPERIMENTS) -> PriorEstimate:
    """σ from ``(experiment, relative effect, its SE)`` rows (unusable rows are skipped)."""
    used = [(e, float(y), float(s)) for e, y, s in rows
            if y is not None and s is not None and math.isfinite(y) and math.isfinite(s)
            and s > 0]
    ids = tuple(e for e, _, _ in used)
    if len(used) < minimum:
        return PriorEstimate(metric, configured, "configured", configured, k=len(used),
                             experiments=ids, estimated_at=now,
                             note=f"{len(used)} finished experiment(s) with this metric, fewer "
                                  f"than {minimum}: configured prior σ used")
    w = [1.0 / (s * s) for _, _, s in used]
    q = math.fsum(wi * y * y for wi, (_, y, _) in zip(w, used, strict=True))
    tau2 = max(0.0, (q - len(used)) / math.fsum(w))
    sigma, note = math.sqrt(tau2), None
    if sigma < MIN_SIGMA:
        sigma, note = MIN_SIGMA, (f"between-experiment variance estimated at {tau2:.3g}; "
                                  f"σ floored at {MIN_SIGMA:g}")
    return PriorEstimate(metric, sigma, "empirical", configured, k=len(used), experiments=ids,
                         estimated_at=now, q=q, note=note)


def relative_se(effect: float | None, se: float | None, treatment_mean: float | None,
                treatment_se: float | None, control_mean: float | None,
                control_se: float | None) -> float | None:
    """Delta-method SE of ``m_t/m_c − 1`` from the arm means and their SEs.

    ``Var ≈ v_t/m_c² + m_t² v_c/m_c⁴``; without arm SEs, ``se/|m_c|`` (control mean taken
    as known).
    """
    if control_mean is None or control_mean == 0.0:
        return None
    if treatment_mean is not None and treatment_se is not None and control_se is not None:
        v = (treatment_se ** 2 / control_mean ** 2
             + treatment_mean ** 2 * control_se ** 2 / control_mean ** 4)
        return math.sqrt(v) if v > 0 else None
    if se is None or se <= 0:
        return None
    return se / abs(control_mean)


def rows_for(metric: str, finished: Sequence[Mapping[str, Any]]
             ) -> list[tuple[str, float | None, float | None]]:
    """(experiment, rel_effect, rel_se) of ``metric`` in each finished-experiment record.

    A record is ``{"experiment": id, "stopped_at": t, "metrics": {name: [{"treatment",
    "rel_effect", "rel_se", …}, …]}, "balance": {candidate: [p, …]}}`` (see
    :mod:`state.finished`); every treatment of a record contributes one row.
    """
    out = []
    for rec in finished:
        for comp in (rec.get("metrics") or {}).get(metric) or []:
            out.append((str(rec.get("experiment")), comp.get("rel_effect"), comp.get("rel_se")))
    return out


def balance_history(finished: Sequence[Mapping[str, Any]], candidates: Sequence[str]
                    ) -> dict[str, list[float]]:
    """Candidate → its balance p-values across finished experiments (for Fisher)."""
    out: dict[str, list[float]] = {c: [] for c in candidates}
    for rec in finished:
        for c, ps in (rec.get("balance") or {}).items():
            if c in out:
                out[c] += [float(p) for p in ps if p is not None]
    return out


def summarize_comparison(c: Comparison) -> dict[str, Any]:
    """What a finished experiment keeps of one comparison (its recommended estimate)."""
    e = c.primary_estimate() or Estimator()
    rel_se = e.rel_se
    if rel_se is None:
        rel_se = relative_se(e.effect, e.se, e.treatment_mean, e.treatment_se, e.control_mean,
                             e.control_se)
    return {"treatment": c.treatment, "estimator": c.primary_name, "rel_effect": e.rel_effect,
            "rel_se": rel_se, "effect": e.effect, "se": e.se}


def finished_record(experiment: str, stopped_at: float,
                    doc: Mapping[str, Any] | ResultDocument) -> dict[str, Any]:
    """The finished-experiment record of a result document's first slice."""
    sl = parse(doc).first
    metrics: dict[str, list[dict[str, Any]]] = {}
    balance: dict[str, list[float | None]] = {}
    for m in sl.metrics:
        metrics[m.metric] = [summarize_comparison(c) for c in m.comparisons]
        if not balance:  # the candidates' balance test is the same for every metric
            for c in m.comparisons:
                for ch in c.covariate_selection:
                    balance.setdefault(ch.name, []).append(ch.p_value)
    return {"experiment": experiment, "stopped_at": stopped_at, "units": sl.total_units,
            "metrics": metrics, "balance": balance}
