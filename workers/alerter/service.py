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
:mod:`workers.alerter.webhooks` retries with exponential backoff, one thread per URL).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence

from estimators import document
from state import history
from state.alerts import AlertStateStore
from state.definition import ExperimentDef
from state.registry import Registry
from state.results import experiment_document
from state.store import Client, connect
from state.window import accepts
from workers.alerter.rules import Alert, AlertSink, evaluate_experiment
from workers.alerter.sinks import default_sinks
from workers.settings import Settings

__all__ = ["Alerter"]

log = logging.getLogger("liftstream.alerter")

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
        doc = document.parse(experiment_document(self.client, d, now=now))
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

