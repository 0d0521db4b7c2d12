"""Records result history from a process that serves results (``liftstream api``).

Every process that serves or watches results (each API replica and the alerter) tries to
record each running experiment's snapshot once per ``LIFTSTREAM_ALERT_INTERVAL_SECONDS``;
:func:`state.history.claim` lets exactly one of them have each interval, so N replicas record
what one would, and history continues as long as any of them runs.

In the API the recorder is a task on the event loop whose computations run through the
API's :class:`~workers.api.cache.ComputeGate` (:meth:`HistoryRecorder.run_through`): one
compute thread serves results and history in turn, instead of a second thread computing
documents beside it and holding the GIL against the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol, TypeVar

from state import history
from state.definition import ExperimentDef
from state.registry import Registry
from state.results import experiment_document
from state.store import Client

__all__ = ["HistoryRecorder"]

log = logging.getLogger("liftstream.history")

T = TypeVar("T")


class Runner(Protocol):
    """Runs a blocking call off the event loop (``ComputeGate.run_admitted``)."""

    def __call__(self, compute: Callable[[], T]) -> Awaitable[T]: ...


class HistoryRecorder:
    """Records history at the start of every interval (:meth:`run_through`)."""

    def __init__(self, client: Client, interval: float,
                 clock: Callable[[], float] = time.time,
                 snapshot_of: Callable[[ExperimentDef, float], dict[str, Any]] | None = None
                 ) -> None:
        self.client = client
        self.registry = Registry(client)
        self.interval = interval
        self.clock = clock
        self.snapshot_of = snapshot_of if snapshot_of is not None else self._snapshot

    def _snapshot(self, d: ExperimentDef, now: float) -> dict[str, Any]:
        return history.snapshot(experiment_document(self.client, d), now)

    def due(self, now: float) -> list[ExperimentDef]:
        """The experiments to record at ``now``: running and active."""
        return [d for d in self.registry.list() if d.status == "running" and d.is_active(now)]

    def record_one(self, d: ExperimentDef, now: float | None = None) -> bool:
        """Record ``d``'s snapshot (taken at ``now``, default: when this runs) if this process
        wins the interval; ``True`` if it did."""
        now = self.clock() if now is None else now
        try:
            c = history.claim(self.client, d.id, now, self.interval)
            if c is None:  # another process has this interval
                return False
            return history.record(self.client, c, self.snapshot_of(d, now), self.interval)
        except Exception:  # one broken experiment must not stop the others' history
            log.exception("recording history of %s failed", d.id)
            return False

    def record_once(self, now: float | None = None) -> int:
        """Try every running experiment once; the number of snapshots this call recorded."""
        now = self.clock() if now is None else now
        return sum(self.record_one(d, now) for d in self.due(now))

    def delay(self) -> float:
        """Seconds until just after the start of the next interval."""
        now = self.clock()
        return max(0.0, (math.floor(now / self.interval) + 1) * self.interval - now) + 0.01

    async def run_through(self, run: Runner) -> None:
        """Record every interval until cancelled; each Redis read and each experiment's
        computation runs through ``run`` (the API's ``ComputeGate.run_admitted``), never on
        the event loop."""
        while True:
            now = self.clock()
            try:
                due = await run(partial(self.due, now))
                for d in due:
                    await run(partial(self.record_one, d))  # timed when it computes
            except Exception as exc:  # Redis down: try again next interval
                log.warning("recording history failed: %s", exc)
            await asyncio.sleep(self.delay())
