"""``liftstream alerter``: watch running experiments, alert on transitions, record history.

Every ``LIFTSTREAM_ALERT_INTERVAL_SECONDS`` the alerter computes each running experiment's
results (the same document as the API), records a snapshot to its history unless an API
replica already recorded this interval (:mod:`state.history`: tiered, the whole experiment,
served by ``GET /v1/experiments/{id}/history``) and checks four conditions. An alert is
emitted only when a condition *becomes* true:

``significance``   the primary metric (``primary_metric``, else the first metric) of a
                   treatment is significant under the anytime-valid test: the comparison's
                   recommended estimator (its ``primary`` field) has ``seq_p_value < alpha``.
                   The direction (positive or negative) is latched: flapping around the
                   threshold does not re-fire; a reversal of direction does.
``guardrail_harm`` a guardrail metric is *harmed*: anytime-valid significant in its bad
                   direction: a decrease, or an increase for a metric with
                   ``higher_is_better: false`` (latency, errors). Fires once per guardrail ×
                   treatment.
``srm``            sample-ratio mismatch: ``srm.flagged``, the anytime-valid decision
                   (``srm.sequential_p_value < 0.001``; the χ² p-value is only reported, since
                   checked at every poll it would raise false alarms). Fires once per experiment.
``decision``       the verdict (``decision.recommendation``: ship, roll_back, keep_running,
                   no_effect; :mod:`estimators.decision`) changed from the last one stored
                   (the first verdict fires unless it is ``keep_running``). Only for
                   experiments that declare a plan (an ``mde`` on the primary metric or
                   ``min_runtime_seconds``): without one, the verdict follows the
                   significance and guardrail alerts above, which already fire.
``stale``          nothing changed (arm sizes, metric means, ingest counters) for
                   ``LIFTSTREAM_STALE_AFTER_SECONDS`` of wall-clock time while the experiment is
                   running and inside its window. Fires again after data resumed and stalled
                   once more.

What fired is stored in Redis (:mod:`state.alerts`) *before* delivery, so a restarted alerter
never re-fires (a crash between storing and delivering loses that one alert rather than
duplicating it). A lease in Redis lets only one of several alerter replicas evaluate.

Sinks: the alerts topic (``LIFTSTREAM_TOPIC_ALERTS``, key = experiment id, JSON value) and every
URL in ``LIFTSTREAM_ALERT_WEBHOOKS`` (Slack-compatible body: ``text`` plus structured fields;
:mod:`workers.webhooks` retries with exponential backoff, one thread per URL).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from estimators import defaults, document
from state import history
from state.alerts import AlertStateStore
from state.definition import ExperimentDef
from state.registry import Registry
from state.results import experiment_document
from state.store import Client, connect
from state.window import accepts
from workers.settings import Settings, SettingsError, load_settings
from workers.webhooks import WebhookDispatcher

__all__ = ["Alert", "Alerter", "KafkaAlertSink", "add_alerter_parser", "evaluate_experiment"]

log = logging.getLogger("liftstream.alerter")

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


# --------------------------------------------------------------------------- evaluation


def _typed(doc: Mapping[str, Any] | document.ResultDocument) -> document.ResultDocument:
    return doc if isinstance(doc, document.ResultDocument) else document.parse(doc)


def _fmt(x: float | None, spec: str = ".4g") -> str:
    return "n/a" if x is None else format(x, spec)


def _primary_estimate(c: document.Comparison) -> tuple[str, document.Estimator | None]:
    name = c.primary or "diff"
    return name, c.estimators.get(name)


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
    sl = _typed(doc).first
    parts: list[Any] = [[v.n for v in sl.variations], sorted((sl.counters or {}).items())]
    for m in sl.metrics:
        for c in m.comparisons:
            e = c.estimators.get("diff")
            parts.append([None, None] if e is None else [e.treatment_mean, e.control_mean])
    return format(zlib.crc32(msgspec.json.encode(parts)), "08x")


def evaluate_experiment(d: ExperimentDef, doc: Mapping[str, Any],
                        states: Mapping[str, Mapping[str, Any]], now: float,
                        stale_after: float) -> tuple[list[Alert], dict[str, dict[str, Any]]]:
    """Alerts that fire now and the condition states that changed (pure: no I/O)."""
    alerts: list[Alert] = []
    changed: dict[str, dict[str, Any]] = {}
    typed = _typed(doc)
    sl = typed.first
    alpha = d.alpha
    guardrails = set(d.guardrails)
    lower_better = {k for k, v in d.higher_is_better().items() if not v}
    for m in sl.metrics:
        name = m.metric
        if name != d.primary and name not in guardrails:
            continue
        for c in m.comparisons:
            estimator, e = _primary_estimate(c)
            direction = _direction(e, alpha)
            f = _comparison_fields(name, c, estimator, e, alpha)
            if name == d.primary:
                cond = f"significance:{name}:{c.treatment}"
                fired = states.get(cond, {}).get("fired")
                if direction is not None and direction != fired:
                    word = "higher" if direction == "positive" else "lower"
                    changed[cond] = {"fired": direction, "at": now}
                    alerts.append(Alert(
                        "significance", d.id, cond,
                        _comparison_text(d, f"primary metric {name} is significantly {word}",
                                         f), now, {**f, "direction": direction}))
            if name in guardrails:
                cond = f"guardrail:{name}:{c.treatment}"
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
            last = (sl.freshness or {}).get("last_event_ts")
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


# --------------------------------------------------------------------------- sinks


class KafkaAlertSink:
    """Publishes alerts to the alerts topic; unsent alerts are kept (bounded) and retried."""

    def __init__(self, settings: Settings, max_pending: int = 1000) -> None:
        self.settings = settings
        self.max_pending = max_pending
        self.pending: list[Mapping[str, Any]] = []
        self._producer: Any = None

    def send(self, body: Mapping[str, Any]) -> None:
        self.pending.append(body)
        del self.pending[:-self.max_pending]

    def drain(self, timeout: float = 30.0) -> bool:
        if not self.pending:
            return True
        from stream.kafka import ensure_topics, make_producer

        s = self.settings
        try:
            if self._producer is None:
                ensure_topics(s.kafka_bootstrap, {s.topic_alerts: 1}, strict=False,
                              timeout_s=min(timeout, 10.0), **s.kafka_options())
                self._producer = make_producer(s.kafka_bootstrap, client_id="liftstream-alerter",
                                               **s.kafka_options())
            futures = [self._producer.send(s.topic_alerts, key=str(b["experiment"]).encode(),
                                           value=msgspec.json.encode(dict(b)))
                       for b in self.pending]
            self._producer.flush(timeout=timeout)
            for f in futures:
                f.get(timeout=0)
        except Exception as exc:  # Kafka down: keep the alerts, retry next cycle
            log.error("alerts topic %s unavailable (%d alerts kept): %s", s.topic_alerts,
                      len(self.pending), exc)
            self._reset()
            return False
        self.pending.clear()
        return True

    def _reset(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=1)
            except Exception as exc:
                log.debug("producer close: %s", exc)
        self._producer = None

    def close(self, timeout: float = 5.0) -> None:
        self.drain(timeout)
        self._reset()


class WebhookSink:
    """Adapts :class:`WebhookDispatcher` to :class:`AlertSink`."""

    def __init__(self, urls: Sequence[str], **options: Any) -> None:
        self.dispatcher = WebhookDispatcher(urls, **options)

    def send(self, body: Mapping[str, Any]) -> None:
        self.dispatcher.send(body)

    def drain(self, timeout: float = 30.0) -> bool:
        return True  # deliveries run in the background; see :meth:`wait`

    def wait(self, timeout: float = 30.0) -> bool:
        """Block until every queued delivery finished (delivered or given up)."""
        return self.dispatcher.drain(timeout)

    def close(self, timeout: float = 5.0) -> None:
        self.dispatcher.drain(timeout)
        self.dispatcher.close(timeout)


def default_sinks(settings: Settings) -> list[AlertSink]:
    """The alerts topic, plus the webhooks when any are configured."""
    sinks: list[AlertSink] = [KafkaAlertSink(settings)]
    if settings.alert_webhooks:
        sinks.append(WebhookSink(settings.alert_webhooks))
    return sinks


# --------------------------------------------------------------------------- the alerter


class Alerter:
    """Evaluates every running experiment; :meth:`evaluate_once` is one cycle."""

    def __init__(self, settings: Settings, client: Client | None = None, *,
                 sinks: Sequence[AlertSink] | None = None, owner: str | None = None) -> None:
        self.settings = settings
        self.client = client if client is not None else connect(settings.redis_url,
                                                                settings.redis_cluster)
        self.registry = Registry(self.client)
        self.states = AlertStateStore(self.client)
        self.sinks = list(sinks) if sinks is not None else default_sinks(settings)
        self.owner = owner or f"alerter-{uuid.uuid4().hex[:12]}"
        self.stop_event = threading.Event()
        self.fired: list[Alert] = []

    def evaluate_once(self, now: float | None = None) -> list[Alert]:
        """One cycle: snapshot history, fire alerts on transitions, deliver them."""
        now = time.time() if now is None else now
        lease = max(3 * self.settings.alert_interval_seconds, 10.0)
        if not self.states.hold_lease(self.owner, lease):
            log.debug("%s: another alerter holds the lease", self.owner)
            return []
        alerts: list[Alert] = []
        for d in self.registry.list():
            if not accepts(d.status, d.start, d.end, now):
                continue
            try:
                alerts += self._evaluate(d, now)
            except Exception:  # one broken experiment must not silence the others
                log.exception("%s: evaluating %s failed", self.owner, d.id)
        for a in alerts:
            log.info("alert %s: %s", a.kind, a.text)
            for sink in self.sinks:
                sink.send(a.body())
        for sink in self.sinks:
            sink.drain(timeout=10.0)
        self.fired += alerts
        return alerts

    def _evaluate(self, d: ExperimentDef, now: float) -> list[Alert]:
        doc = experiment_document(self.client, d, now=now)
        interval = self.settings.alert_interval_seconds
        claimed = history.claim(self.client, d.id, now, interval)
        if claimed is not None:  # else another process recorded this interval
            history.record(self.client, claimed, history.snapshot(doc, now), interval)
        states = self.states.load(d.id)
        alerts, changed = evaluate_experiment(d, doc, states, now,
                                              self.settings.stale_after_seconds)
        self.states.save(d.id, changed)
        return alerts

    def run(self) -> None:
        """Evaluate every interval until :attr:`stop_event` is set."""
        interval = self.settings.alert_interval_seconds
        while not self.stop_event.is_set():
            t0 = time.monotonic()
            try:
                self.evaluate_once()
            except Exception:  # Redis down: log, try again next interval
                log.exception("%s: evaluation failed", self.owner)
            self.stop_event.wait(max(0.0, interval - (time.monotonic() - t0)))

    def close(self) -> None:
        try:
            self.states.release_lease(self.owner)
        except Exception as exc:
            log.debug("release lease: %s", exc)
        for sink in self.sinks:
            sink.close()


# --------------------------------------------------------------------------- CLI


def _alerter_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # connection chatter while Kafka is down
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"liftstream alerter: error: {exc}", file=sys.stderr)
        return 2
    alerter = Alerter(settings)

    def stop(signum: int, frame: Any) -> None:
        alerter.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        if args.once:
            for a in alerter.evaluate_once():
                print(a.text)
        else:
            log.info("%s: every %gs, webhooks: %d, topic %s", alerter.owner,
                     settings.alert_interval_seconds, len(settings.alert_webhooks),
                     settings.topic_alerts)
            alerter.run()
    finally:
        alerter.close()
    return 0


def add_alerter_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``alerter`` to the ``liftstream`` sub-commands."""
    p = sub.add_parser(
        "alerter", help="alert on significance, guardrail harm, SRM and stale data",
        description="Evaluate running experiments every LIFTSTREAM_ALERT_INTERVAL_SECONDS, "
                    "record result history, and send alerts on transitions to the alerts "
                    "topic and LIFTSTREAM_ALERT_WEBHOOKS.")
    p.add_argument("--once", action="store_true", help="evaluate once, print alerts, exit")
    p.set_defaults(handler=_alerter_command)
