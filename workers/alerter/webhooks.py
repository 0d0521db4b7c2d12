"""Webhook delivery: one thread and queue per URL, retries with exponential backoff.

A slow or failing webhook only delays its own queue, never the other webhooks or the alerter
(every request has a timeout, every URL its own thread). Connection errors, timeouts, 5xx and
429 answers are retried after ``backoff · 2^k`` seconds (capped at ``max_backoff``), up to
``attempts`` tries and never past ``max_total`` seconds after the first try; other 4xx
answers are not retried (the body is wrong, trying again will not help).

Every delivery of one alert carries the same ``Idempotency-Key`` header, the alert's id: a
receiver slower than the timeout may get an alert more than once (the sender cannot know
whether a timed-out request was processed), and de-duplicates on that key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("liftstream.webhooks")

_STOP = object()


@dataclass
class DeliveryStats:
    """What one webhook's sender did (for tests and logs)."""

    delivered: int = 0
    failed: int = 0
    attempts: int = 0
    last_error: str | None = None
    errors: list[str] = field(default_factory=list)


class WebhookSender(threading.Thread):
    """Posts JSON bodies to one URL, in order, from its own daemon thread."""

    def __init__(self, url: str, *, attempts: int = 6, backoff: float = 0.5,
                 max_backoff: float = 30.0, timeout: float = 5.0, max_queue: int = 1000,
                 max_total: float = 120.0) -> None:
        super().__init__(name=f"webhook-{url[:40]}", daemon=True)
        self.url = url
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.max_total = max_total
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self.stats = DeliveryStats()
        self._stopping = threading.Event()

    def submit(self, body: Mapping[str, Any]) -> bool:
        """Queue ``body``; False (and logged) when the queue is full."""
        try:
            self.queue.put_nowait(dict(body))
            return True
        except queue.Full:
            log.error("webhook queue full, alert dropped: %s", _host(self.url))
            self.stats.failed += 1
            return False

    def run(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is _STOP:
                    return
                self._deliver(item)
            finally:
                self.queue.task_done()

    def _deliver(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        key = str(body.get("alert_id") or hashlib.sha256(data).hexdigest()[:32])
        delay = self.backoff
        deadline = time.monotonic() + self.max_total
        for attempt in range(1, self.attempts + 1):
            self.stats.attempts += 1
            retry, error = self._post(data, key)
            if error is None:
                self.stats.delivered += 1
                return
            self.stats.last_error = error
            self.stats.errors.append(error)
            if not retry or attempt == self.attempts or self._stopping.is_set():
                break
            if time.monotonic() + delay + self.timeout > deadline:
                log.warning("webhook %s: no retry %d, it would end past %.0f s after the "
                            "first try", _host(self.url), attempt, self.max_total)
                break
            log.warning("webhook %s failed (%s), retry %d in %.2fs", _host(self.url), error,
                        attempt, delay)
            if self._stopping.wait(delay):
                break
            delay = min(delay * 2, self.max_backoff)
        self.stats.failed += 1
        log.error("webhook %s: alert not delivered: %s", _host(self.url), self.stats.last_error)

    def _post(self, data: bytes, key: str) -> tuple[bool, str | None]:
        """One attempt: ``(retry?, error or None)``."""
        req = urllib.request.Request(self.url, data=data, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "liftstream-alerter",
                                              "Idempotency-Key": key})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                resp.read()
                return False, None
        except urllib.error.HTTPError as exc:
            return exc.code >= 500 or exc.code == 429, f"HTTP {exc.code}"
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return True, f"{type(exc).__name__}: {reason}"

    def drain(self, timeout: float) -> bool:
        """Wait until the queue is empty and idle; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the current delivery (no further retries) and join the thread."""
        self._stopping.set()
        with contextlib.suppress(queue.Full):
            self.queue.put(_STOP, timeout=timeout)
        self.join(timeout)


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).netloc or "?"


class WebhookDispatcher:
    """Fans every alert body out to all configured webhook senders."""

    def __init__(self, urls: Sequence[str], **sender_options: Any) -> None:
        self.senders = [WebhookSender(u, **sender_options) for u in urls]
        for s in self.senders:
            s.start()

    def send(self, body: Mapping[str, Any]) -> None:
        for s in self.senders:
            s.submit(body)

    def drain(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        return all(s.drain(max(0.0, deadline - time.monotonic())) for s in self.senders)

    def close(self, timeout: float = 5.0) -> None:
        for s in self.senders:
            s.close(timeout)
