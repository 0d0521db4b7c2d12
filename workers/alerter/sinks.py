"""Where alerts go: the alerts topic (Kafka) and webhooks (one dispatcher thread per URL)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from workers.alerter.rules import AlertSink
from workers.alerter.webhooks import WebhookDispatcher
from workers.settings import Settings

log = logging.getLogger("liftstream.alerter")


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
