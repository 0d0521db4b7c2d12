"""Records result history from a process that serves results (``liftstream api``).

Every process that serves or watches results (each API replica and the alerter) tries to
record each running experiment's snapshot once per ``LIFTSTREAM_ALERT_INTERVAL_SECONDS``;
:func:`state.history.claim` lets exactly one of them have each interval, so N replicas record
what one would, and history continues as long as any of them runs.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from functools import partial

from state import history
from state.registry import Registry
from state.results import experiment_document
from state.store import Client

__all__ = ["HistoryRecorder"]

log = logging.getLogger("liftstream.history")


class HistoryRecorder:
    """A background thread recording history at the start of every interval."""

    def __init__(self, client: Client, interval: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.registry = Registry(client)
        self.interval = interval
        self.clock = clock
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    def record_once(self, now: float | None = None) -> int:
        """Try every running experiment once; the number of snapshots this call recorded."""
        now = self.clock() if now is None else now
        done = 0
        for d in self.registry.list():
            if d.status != "running" or not d.is_active(now):
                continue
            try:
                snap = history.record_due(self.client, d.id, now, self.interval,
                                          partial(experiment_document, self.client, d))
            except Exception:  # one broken experiment must not stop the others' history
                log.exception("recording history of %s failed", d.id)
                continue
            done += snap is not None
        return done

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.record_once()
            except Exception as exc:  # Redis down: try again next interval
                log.warning("recording history failed: %s", exc)
            now = self.clock()
            wake = (math.floor(now / self.interval) + 1) * self.interval
            self.stop_event.wait(max(0.0, wake - now) + 0.01)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="history-recorder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)
