"""The worker's answers to refusals: Redis refusing or gone, side outputs not acknowledged.

Redis refusing commands (OOM at ``maxmemory``, READONLY, BUSY, script errors): logged,
counted (``redis_errors_<kind>``, written once Redis accepts writes), retried after a bounded
exponential back-off with the partitions kept; lost connections: wait and resume from the
stored offsets. Side outputs the broker does not acknowledge: the batch is not applied,
counted (``refused_side_outputs``), and read again from the stored offsets.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import redis

from state import keys
from state.store import Client, PartitionStore
from stream.batch import BatchBuilder, PreparedBatch
from stream.kafka import deliver
from stream.messages import dead_letter
from workers.settings import Settings

log = logging.getLogger("liftstream.worker")

BACKOFF_FIRST_S = 0.2  # first retry delay after Redis or the broker refused; doubled ...
BACKOFF_MAX_S = 5.0  # ... up to this (below max_poll_interval_ms: the group keeps us)
SIDE_OUTPUT_TIMEOUT_S = 5.0  # how long a batch waits for its side outputs' acknowledgements


def redis_error_kind(exc: redis.RedisError) -> str:
    """Short name of a Redis refusal for counters: oom, readonly, busy, script or other."""
    text = str(exc)  # a refusal inside a script arrives wrapped: "Error running script ..."
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or "OOM " in text:
        return "oom"
    if isinstance(exc, redis.exceptions.ReadOnlyError) or "READONLY " in text:
        return "readonly"
    if text.startswith("BUSY") or "BUSY " in text:
        return "busy"
    if isinstance(exc, redis.exceptions.NoScriptError) or "script" in text.lower():
        return "script"
    return "other"


class Refusals:
    """Mixin of :class:`workers.ingest.worker.IngestWorker`."""

    settings: Settings
    name: str
    client: Client
    store: PartitionStore
    builder: BatchBuilder
    consumer: Any
    producer: Any
    stats: dict[str, float]
    owned: dict[int, int]
    held: dict[int, str]
    stop_event: threading.Event
    _pending_counters: dict[str, int]
    _redis_delay: float
    _side_delay: float

    if TYPE_CHECKING:  # provided by the worker and its guard (no stubs: the MRO would pick them)
        def _seek_stored(self, p: int) -> None: ...

        def _rewind(self, p: int) -> None: ...

        def _drain(self) -> None: ...

    def _recover(self, exc: Exception) -> None:
        """Redis went away: wait for it, then resume every owned partition from the offsets
        it actually holds (an AOF restart may have lost its last writes)."""
        log.warning("%s: Redis unavailable (%s); waiting", self.name, exc)
        self._drain()
        delay = 0.2
        while not self.stop_event.is_set():
            try:
                self.client.ping()
                for p in list(self.owned):
                    self.builder.forget(p)
                    self._seek_stored(p)
                log.info("%s: Redis is back; resumed from stored offsets", self.name)
                return
            except redis.RedisError:  # still down, loading, or refusing (BUSY): wait
                time.sleep(delay)
                delay = min(2.0, delay * 2)

    def _send_side_outputs(self, batch: PreparedBatch, p: int) -> list[str]:
        """Dead letters and training examples, before the batch is applied (at least once):
        the errors of those the broker did not acknowledge (empty: all stored)."""
        records = [(self.settings.topic_dead_letters,
                    dead_letter(dl.record.value, dl.record.topic, p, dl.record.offset,
                                dl.reason)) for dl in batch.dead_letters]
        records += [(self.settings.topic_training, example) for example in batch.training]
        if not records:
            return []
        return deliver(self.producer, records, SIDE_OUTPUT_TIMEOUT_S)

    def _side_outputs_refused(self, p: int, sent: int, errors: list[str]) -> None:
        """The batch is not applied: count it, read it again from the stored offsets after a
        bounded back-off."""
        self.builder.forget(p)
        self._side_delay = min(BACKOFF_MAX_S, max(BACKOFF_FIRST_S, 2 * self._side_delay))
        log.error("%s: partition %d: %d of %d side outputs not acknowledged (%s); batch not "
                  "applied, retrying in %.1fs", self.name, p, len(errors), sent, errors[0],
                  self._side_delay)
        self.stats[keys.refused_counter("side_outputs")] += 1
        self.store.add_counters(p, {keys.refused_counter("side_outputs"): 1,
                                    "side_outputs_failed": len(errors)})
        self._rewind(p)
        self.stop_event.wait(self._side_delay)

    def _redis_refused(self, exc: redis.RedisError) -> None:
        """Redis answered with an error (OOM, READONLY, BUSY, a script error): keep the
        partitions, rewind them to the offsets expected stored, back off, retry."""
        self._drain()
        kind = redis_error_kind(exc)
        self._pending_counters["redis_errors"] += 1
        self._pending_counters[f"redis_errors_{kind}"] += 1
        self.stats[f"redis_errors_{kind}"] += 1
        self._redis_delay = min(BACKOFF_MAX_S, max(BACKOFF_FIRST_S, 2 * self._redis_delay))
        log.error("%s: Redis refused (%s: %s); partitions kept, retrying in %.1fs", self.name,
                  kind, exc, self._redis_delay)
        assert self.consumer is not None
        for p in list(self.owned):
            self.builder.forget(p)
            if p not in self.held:
                self._rewind(p)
        self.stop_event.wait(self._redis_delay)

    def _write_pending_counters(self) -> None:
        """Counters of Redis refusals, written once Redis accepts writes again."""
        if self._pending_counters and self.owned:
            self.store.add_counters(min(self.owned), self._pending_counters)
            self._pending_counters.clear()
