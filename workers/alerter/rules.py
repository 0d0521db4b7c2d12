"""Alert rules, pure: which transitions of a result document raise which alert, and its text."""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from estimators import defaults, document
from state import keys
from state.definition import ExperimentDef

SRM_THRESHOLD = defaults.SRM_THRESHOLD


@dataclass(frozen=True)
class Alert:
    """One fired alert: a human-readable ``text`` and structured ``fields``."""

    kind: str  # significance | guardrail_harm | srm | decision | stale
    experiment: str
    condition: str
    text: str
    ts: float
    fields: dict[str, Any] = field(default_factory=dict)
    alert_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def body(self) -> dict[str, Any]:
        """The JSON body for the alerts topic and webhooks (Slack reads ``text``)."""
        return {"text": self.text, "alert_id": self.alert_id, "kind": self.kind,
                "experiment": self.experiment, "condition": self.condition, "ts": self.ts,
                **self.fields}


class AlertSink(Protocol):
    """Where alerts go."""

    def send(self, body: Mapping[str, Any]) -> None: ...

    def drain(self, timeout: float = 30.0) -> bool: ...

    def close(self, timeout: float = 5.0) -> None: ...



def _fmt(x: float | None, spec: str = ".4g") -> str:
    return "n/a" if x is None else format(x, spec)


def _direction(e: document.Estimator | None, alpha: float) -> str | None:
    p, effect = (None, None) if e is None else (e.seq_p_value, e.effect)
    if p is None or effect is None or not p < alpha or effect == 0:
        return None
    return "positive" if effect > 0 else "negative"


def _comparison_fields(metric: str, c: document.Comparison, estimator: str,
                       e: document.Estimator | None, alpha: float) -> dict[str, Any]:
    return {"metric": metric, "treatment": c.treatment, "control": c.control,
            "estimator": estimator, "alpha": alpha,
            **{k: None if e is None else getattr(e, k)
               for k in ("effect", "rel_effect", "ci_low", "ci_high", "seq_ci_low",
                         "seq_ci_high", "seq_p_value", "p_value")}}


def _comparison_text(d: ExperimentDef, head: str, f: Mapping[str, Any]) -> str:
    rel = f.get("rel_effect")
    rel_text = f" ({rel:+.1%})" if rel is not None else ""
    return (f"[{d.id}] {head}: {f['treatment']} vs {f['control']}, effect "
            f"{_fmt(f['effect'], '+.4g')}{rel_text}, anytime-valid CI "
            f"[{_fmt(f['seq_ci_low'])}, {_fmt(f['seq_ci_high'])}], anytime-valid p = "
            f"{_fmt(f['seq_p_value'], '.3g')} < α = {f['alpha']:g} ({f['estimator']})")


def activity_signature(doc: Mapping[str, Any] | document.ResultDocument) -> str:
    """A fingerprint of what changes when data arrives: arm sizes, means, counters."""
    sl = document.parse(doc).first
    parts: list[Any] = [[v.n for v in sl.variations], sorted((sl.counters or {}).items())]
    for m in sl.metrics:
        for c in m.comparisons:
            e = c.estimators.get("diff")
            parts.append([None, None] if e is None else [e.treatment_mean, e.control_mean])
    return format(zlib.crc32(msgspec.json.encode(parts)), "08x")


def evaluate_experiment(d: ExperimentDef, doc: Mapping[str, Any] | document.ResultDocument,
                        states: Mapping[str, Mapping[str, Any]], now: float,
                        stale_after: float) -> tuple[list[Alert], dict[str, dict[str, Any]]]:
    """Alerts that fire now and the condition states that changed (pure: no I/O)."""
    alerts: list[Alert] = []
    changed: dict[str, dict[str, Any]] = {}
    typed = document.parse(doc)
    sl = typed.first
    alpha = d.alpha
    guardrails = set(d.guardrails)
    lower_better = {k for k, v in d.higher_is_better().items() if not v}
    for m in sl.metrics:
        name = m.metric
        if name != d.primary and name not in guardrails:
            continue
        for c in m.comparisons:
            estimator, e = c.primary_name, c.primary_estimate()
            direction = _direction(e, alpha)
            f = _comparison_fields(name, c, estimator, e, alpha)
            if name == d.primary:
                cond = keys.alert_condition("significance", name, c.treatment)
                fired = states.get(cond, {}).get("fired")
                if direction is not None and direction != fired:
                    word = "higher" if direction == "positive" else "lower"
                    changed[cond] = {"fired": direction, "at": now}
                    alerts.append(Alert(
                        "significance", d.id, cond,
                        _comparison_text(d, f"primary metric {name} is significantly {word}",
                                         f), now, {**f, "direction": direction}))
            if name in guardrails:
                cond = keys.alert_condition("guardrail", name, c.treatment)
                bad = "positive" if name in lower_better else "negative"
                if direction == bad and not states.get(cond, {}).get("fired"):
                    changed[cond] = {"fired": True, "at": now}
                    word = "increase" if bad == "positive" else "decrease"
                    alerts.append(Alert(
                        "guardrail_harm", d.id, cond,
                        _comparison_text(d, f"guardrail {name} is harmed (significant "
                                            f"{word})", f), now,
                        {**f, "direction": bad}))
    srm = sl.srm or document.Srm()
    seq_p = srm.sequential_p_value
    srm_now = srm.flagged
    if srm_now and not states.get("srm", {}).get("fired"):
        counts = {v.name: v.n for v in sl.variations}
        weights = dict(zip(d.variations, d.weights, strict=True))
        changed["srm"] = {"fired": True, "at": now}
        shown = ", ".join(f"{k} {n} ({weights[k]:.0%} expected)" for k, n in counts.items())
        alerts.append(Alert(
            "srm", d.id, "srm",
            f"[{d.id}] sample-ratio mismatch: {shown}; χ² p = {_fmt(srm.p_value, '.3g')}"
            f", anytime-valid p = {_fmt(seq_p, '.3g')} (threshold {SRM_THRESHOLD:g}). "
            f"Results are not trustworthy until the assignment is fixed.", now,
            {"counts": counts, "expected_weights": weights, "p_value": srm.p_value,
             "sequential_p_value": seq_p, "threshold": SRM_THRESHOLD}))
    alerts += _decision_alert(d, typed, states, now, changed)
    sig = activity_signature(typed)
    st = states.get("stale")
    if st is None or st.get("signature") != sig:
        changed["stale"] = {"signature": sig, "changed_at": now, "fired": False}
    else:
        idle = now - float(st.get("changed_at", now))
        if idle >= stale_after and not st.get("fired"):
            changed["stale"] = {**st, "fired": True, "at": now}
            last = sl.freshness.last_event_ts if sl.freshness is not None else None
            alerts.append(Alert(
                "stale", d.id, "stale",
                f"[{d.id}] no new data for {idle:.0f} s (threshold {stale_after:g} s) while "
                f"the experiment is running", now,
                {"idle_seconds": idle, "stale_after_seconds": stale_after,
                 "last_event_ts": last}))
    return alerts, changed


def has_plan(d: ExperimentDef) -> bool:
    """Whether the definition declares what makes a verdict ready (target MDE or runtime)."""
    return d.primary in d.targets() or d.min_runtime_seconds is not None


def _decision_alert(d: ExperimentDef, doc: document.ResultDocument,
                    states: Mapping[str, Mapping[str, Any]], now: float,
                    changed: dict[str, dict[str, Any]]) -> list[Alert]:
    dec = doc.decision
    if dec is None or not has_plan(d):
        return []
    rec = dec.recommendation
    before = states.get("decision", {}).get("recommendation")
    if rec == before:
        return []
    changed["decision"] = {"recommendation": rec, "at": now}
    if before is None and rec == "keep_running":
        return []
    reasons = list(dec.reasons)
    return [Alert("decision", d.id, "decision",
                  f"[{d.id}] decision: {rec}" + (f" (was {before})" if before else "") +
                  (f": {'; '.join(reasons)}" if reasons else ""), now,
                  {"recommendation": rec, "previous": before, "reasons": reasons,
                   "treatment": dec.treatment})]
