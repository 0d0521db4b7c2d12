"""The verdict of a live experiment: ship, roll back, keep running, or no effect.

A pure rule over the anytime-valid results (confidence sequences, Waudby-Smith et al. 2023:
valid whenever the dashboard is read), in the spirit of GrowthBook's decision framework.
Per treatment, in this order:

1. ``roll_back`` if a guardrail is harmed (its anytime-valid interval excludes 0 on the bad
   side, given the metric's ``higher_is_better``) or the primary metric is significantly worse;
2. ``keep_running`` if the sample-ratio mismatch test is flagged (nothing else is trusted);
3. the primary metric significantly better (its interval excludes 0 on the good side):
   ``ship`` when the experiment is *ready*, else ``keep_running``;
4. the primary metric's interval contains 0: ``no_effect`` when ready, else ``keep_running``.

*Ready* means: the planned units for the primary metric's target MDE (``power.reached``)
are reached, or the minimum runtime has elapsed. Without a target MDE and without a minimum
runtime, a significant result is ready (the interval is anytime-valid) but ``no_effect`` is
never concluded (there is no planned power to say the experiment was large enough).

Across treatments: ``roll_back`` if any treatment must be rolled back, else ``ship`` if any
may ship (the best one, by the primary metric's effect in its desired direction, is named),
else ``keep_running`` if any, else ``no_effect``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from estimators.document import Comparison, Estimator, MetricResult, Slice, Srm

Recommendation = Literal["ship", "roll_back", "keep_running", "no_effect"]


@dataclass(frozen=True)
class MetricOutcome:
    """One metric of one treatment: its anytime-valid interval and desired direction."""

    metric: str
    seq_ci_low: float | None
    seq_ci_high: float | None
    effect: float | None = None
    higher_is_better: bool = True

    def side(self) -> Literal["better", "worse", "inconclusive", "unknown"]:
        lo, hi = self.seq_ci_low, self.seq_ci_high
        if lo is None or hi is None:
            return "unknown"
        if lo > 0:
            return "better" if self.higher_is_better else "worse"
        if hi < 0:
            return "worse" if self.higher_is_better else "better"
        return "inconclusive"


@dataclass(frozen=True)
class Readiness:
    """Whether planned power or the minimum runtime is reached."""

    power_reached: bool | None = None  # None: no target MDE declared
    elapsed_seconds: float | None = None
    min_runtime_seconds: float | None = None  # None / 0: no minimum runtime

    def runtime_reached(self) -> bool | None:
        if not self.min_runtime_seconds:
            return None
        if self.elapsed_seconds is None:
            return False
        return self.elapsed_seconds >= self.min_runtime_seconds

    def for_ship(self) -> bool:
        flags = [self.power_reached, self.runtime_reached()]
        return any(flags) or all(f is None for f in flags)

    def for_no_effect(self) -> bool:
        return bool(self.power_reached) or bool(self.runtime_reached())


@dataclass(frozen=True)
class Verdict:
    recommendation: Recommendation
    reasons: tuple[str, ...]
    treatment: str | None = None
    by_treatment: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"recommendation": self.recommendation,
                               "reasons": list(self.reasons)}
        if self.treatment is not None:
            out["treatment"] = self.treatment
        if self.by_treatment:
            out["by_treatment"] = self.by_treatment
        return out


def _ready_text(r: Readiness) -> str:
    parts = []
    if r.power_reached is not None:
        parts.append("planned units for the target MDE " +
                     ("reached" if r.power_reached else "not reached"))
    rt = r.runtime_reached()
    if rt is not None:
        parts.append(f"minimum runtime {r.min_runtime_seconds:g} s " +
                     ("reached" if rt else "not reached"))
    return "; ".join(parts) or "no target MDE and no minimum runtime declared"


def decide_treatment(primary: MetricOutcome, guardrails: Sequence[MetricOutcome],
                     srm_flagged: bool, ready: Readiness) -> Verdict:
    """The rule of this module for one treatment (pure)."""
    harmed = [g for g in guardrails if g.side() == "worse"]
    if harmed:
        return Verdict("roll_back", tuple(
            f"guardrail {g.metric} harmed: anytime-valid interval [{g.seq_ci_low:.4g}, "
            f"{g.seq_ci_high:.4g}] excludes 0 on the bad side" for g in harmed))
    side = primary.side()
    ci = (f"[{primary.seq_ci_low:.4g}, {primary.seq_ci_high:.4g}]"
          if side != "unknown" else "n/a")
    if side == "worse":
        return Verdict("roll_back", (f"primary metric {primary.metric} significantly worse: "
                                     f"anytime-valid interval {ci}",))
    if srm_flagged:
        return Verdict("keep_running", ("sample-ratio mismatch flagged: fix the assignment "
                                        "before deciding",))
    no_harm = "no guardrail harmed" if guardrails else "no guardrails declared"
    if side == "unknown":
        return Verdict("keep_running", (f"primary metric {primary.metric}: no anytime-valid "
                                        f"interval yet",))
    if side == "better":
        head = f"primary metric {primary.metric} significantly better: anytime-valid " \
               f"interval {ci}"
        if ready.for_ship():
            return Verdict("ship", (head, no_harm, "SRM not flagged", _ready_text(ready)))
        return Verdict("keep_running", (head, f"not ready: {_ready_text(ready)}"))
    head = f"primary metric {primary.metric}: anytime-valid interval {ci} contains 0"
    if ready.for_no_effect():
        return Verdict("no_effect", (head, no_harm, "SRM not flagged", _ready_text(ready)))
    return Verdict("keep_running", (head, f"not ready: {_ready_text(ready)}"))


def combine(per: Mapping[str, Verdict], primary: Mapping[str, MetricOutcome]) -> Verdict:
    """The experiment's verdict from its treatments' verdicts (see the module docstring)."""
    detail = {t: {"recommendation": v.recommendation, "reasons": list(v.reasons)}
              for t, v in per.items()}
    if len(per) == 1:
        (t, v), = per.items()
        return Verdict(v.recommendation, v.reasons, t, detail)
    for rec in ("roll_back", "ship", "keep_running", "no_effect"):
        hits = [t for t, v in per.items() if v.recommendation == rec]
        if not hits:
            continue
        if rec == "ship":
            def gain(t: str) -> float:
                o = primary[t]
                e = o.effect or 0.0
                return e if o.higher_is_better else -e
            best = max(hits, key=gain)
            return Verdict("ship", (f"ship {best}", *per[best].reasons), best, detail)
        first = hits[0]
        return Verdict(rec, tuple(f"{first}: {r}" for r in per[first].reasons),  # type: ignore[arg-type]
                       first, detail)
    return Verdict("keep_running", ("no treatment",), None, detail)


def _outcome(metric: str, comp: Comparison, higher_is_better: bool) -> MetricOutcome:
    e = comp.primary_estimate() or Estimator()
    return MetricOutcome(metric, e.seq_ci_low, e.seq_ci_high, e.effect, higher_is_better)


def _srm_and_metrics(sl: Mapping[str, Any] | Slice) -> tuple[Srm | None, list[MetricResult]]:
    if isinstance(sl, Slice):
        return sl.srm, sl.metrics
    return (msgspec.convert(sl.get("srm"), Srm | None),
            msgspec.convert(sl.get("metrics", []), list[MetricResult]))


def decide_document(sl: Mapping[str, Any] | Slice, primary_metric: str,
                    guardrails: Sequence[str], higher_is_better: Mapping[str, bool],
                    elapsed_seconds: float | None, min_runtime_seconds: float | None
                    ) -> Verdict:
    """The verdict of one slice document (with ``power`` on its comparisons); of a mapping,
    only ``srm`` and ``metrics`` are read."""
    srm, listed = _srm_and_metrics(sl)
    srm_flagged = srm is not None and srm.flagged
    metrics = {m.metric: m for m in listed}
    pm = metrics.get(primary_metric)
    if pm is None:
        return Verdict("keep_running", (f"primary metric {primary_metric} not in results",))
    per: dict[str, Verdict] = {}
    prim: dict[str, MetricOutcome] = {}
    for c in pm.comparisons:
        t = c.treatment
        prim[t] = _outcome(pm.metric, c, higher_is_better.get(primary_metric, True))
        guards = [_outcome(g, gc, higher_is_better.get(g, True))
                  for g in guardrails if g in metrics for gc in metrics[g].comparisons
                  if gc.treatment == t]
        reached = c.power.reached if c.power is not None else None
        ready = Readiness(reached, elapsed_seconds, min_runtime_seconds)
        per[t] = decide_treatment(prim[t], guards, srm_flagged, ready)
    return combine(per, prim)
