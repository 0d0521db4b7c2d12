"""``liftstream worker``: consume exposures and events, keep statistics in Redis exactly.

Per owned partition *p* (of both co-partitioned topics) the worker claims a new owner epoch
in Redis, seeks both topic-partitions to the offsets stored in Redis, and applies every
polled batch with one Lua call that fences on that epoch and those offsets. Kafka commits are
made only so consumer lag can be monitored; they are never read back. The consumer polls in a
process of its own (:mod:`stream.fetch_process`): the next batch is fetched while this one is
built and applied.

Faults the worker rides out, never exiting:

* stored offsets outside the log (broker or topic reset, retention; :mod:`stream.offsets`),
  checked on assignment and before each apply: the partition is held (nothing applied,
  ``offsets_out_of_range``) until an offsets reset, which it notices and seeks to;
* side outputs (dead letters, training examples) the broker does not acknowledge: the batch is
  not applied, counted (``refused_side_outputs``), and read again from the stored offsets;
* the fetch process dying: its partitions are released and a new one is started (counted,
  ``fetch_process_restarts``);
* Redis refusing commands (OOM at ``maxmemory``, READONLY, BUSY, script errors): logged,
  counted (``redis_errors_<kind>``, written once Redis accepts writes), retried after a
  bounded exponential back-off with the partitions kept; lost connections: wait and resume.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import redis

from state import keys
from state.layout import ExperimentLayout
from state.model_cache import ModelCache
from state.models import ModelRegistry
from state.registry import Registry
from state.store import PartitionStore, connect
from stream.batch import BatchBuilder, RawRecord, Topics
from stream.commit import Applier, BatchCommit
from stream.fetch_process import FetchProcess, FetchProcessDied
from stream.kafka import (
    ConsumerRebalanceListener,
    OffsetAndMetadata,
    TopicPartition,
    ensure_topics,
    make_producer,
    partition_counts,
)
from workers.cli.prologue import stop_on_signals
from workers.ingest.guard import OffsetGuard
from workers.ingest.refusals import Refusals
from workers.settings import Settings

log = logging.getLogger("liftstream.worker")

BACKOFF_S = 1.0  # between attempts to start a fetch process


class CoPartitioningError(RuntimeError):
    """The exposures and events topics have different partition counts."""


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: IngestWorker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.worker.applier.wait()  # its outcome is acted on by the loop
        self.worker.release({tp.partition for tp in revoked})

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.worker.applier.wait()
        self.worker.acquire({tp.partition for tp in assigned})


class IngestWorker(Refusals, OffsetGuard):
    """One ingest process (any number run in one consumer group)."""

    def __init__(self, settings: Settings, name: str = "worker") -> None:
        self.settings = settings
        self.name = name
        self.client = connect(settings.redis_url, settings.redis_cluster)
        self.store = PartitionStore(self.client)
        self.registry = Registry(self.client)
        self.topics = Topics(settings.topic_exposures, settings.topic_events)
        self.models: ModelCache | None = None
        if settings.model_hmac_key:
            self.models = ModelCache(ModelRegistry(self.client, settings.model_hmac_key))
        self.builder = BatchBuilder(self.store, self.topics, settings.unit_buckets,
                                    settings.grace_seconds, settings.max_pending_events,
                                    self.models, max_ids_per_unit=settings.event_ids_per_unit)
        self.owned: dict[int, int] = {}
        self.stop_event = threading.Event()
        self.consumer: FetchProcess | None = None
        self.producer: Any = None
        self._registry_version = -1
        self._registry_checked = 0.0
        self.stats: dict[str, float] = defaultdict(float)
        self._applied: dict[Any, int] = {}
        self.expected: dict[tuple[str, int], int | None] = {}
        self.unclaimed: set[int] = set()
        self.held: dict[int, str] = {}  # partition → why nothing of it is applied
        self.unchecked: set[int] = set()  # owned, offsets not yet checked against the log
        self._range_checked: dict[int, float] = {}  # last successful check
        self._range_tried: dict[int, float] = {}  # last attempt (a probe may time out)
        self._held_checked = 0.0
        self._pending_counters: dict[str, int] = defaultdict(int)  # counted, not yet written
        self._redis_delay = 0.0
        self._side_delay = 0.0
        self.applier = Applier(self.store)  # the fenced apply in flight (stream.commit)
        self._stale: set[int] = set()  # partitions re-sought since the last poll
        self._to_commit: list[BatchCommit] = []  # applied, lag not committed yet
        self._on_batch: Callable[[int, int], None] | None = None

    # -- start-up -------------------------------------------------------------------------
    def check_topics(self) -> int:
        s = self.settings
        sec = s.kafka_options()
        counts = partition_counts(s.kafka_bootstrap, [s.topic_exposures, s.topic_events], **sec)
        missing = [t for t, n in counts.items() if n is None]
        if missing:
            ensure_topics(s.kafka_bootstrap, {t: s.partitions for t in missing}, **sec)
            counts = partition_counts(s.kafka_bootstrap, [s.topic_exposures, s.topic_events],
                                      **sec)
        ne, nv = counts[s.topic_exposures], counts[s.topic_events]
        if ne != nv:
            raise CoPartitioningError(
                f"topics {s.topic_exposures!r} ({ne} partitions) and {s.topic_events!r} "
                f"({nv} partitions) must have the same partition count: partition p of both "
                f"must go to one worker")
        ensure_topics(s.kafka_bootstrap, {s.topic_dead_letters: 1, s.topic_training: 1},
                      strict=False, **sec)
        assert ne is not None
        self.store.set_partition_count(ne)
        return ne

    def refresh_experiments(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._registry_checked < 1.0:
            return
        self._registry_checked = now
        version = self.registry.version()
        if version == self._registry_version and not force:
            return
        self._registry_version = version
        layouts = {d.id: ExperimentLayout.of(d) for d in self.registry.list()}
        self.builder.set_experiments(layouts)
        if self.models is not None:
            self.models.want({m for lay in layouts.values() for m in lay.model_ids.values()})

    # -- ownership ------------------------------------------------------------------------
    def acquire(self, partitions: set[int]) -> None:
        """Claim each partition (new epoch) and seek to its stored offsets; a partition whose
        claim fails (Redis down) is retried by the loop."""
        assert self.consumer is not None
        claimed = []
        for p in sorted(partitions):
            try:
                epoch = self.store.claim(p)
                self.builder.forget(p)
                self.held.pop(p, None)
                self._seek_stored(p)
            except redis.RedisError as exc:  # down, or refusing writes (OOM, READONLY, ...)
                log.warning("%s: cannot claim partition %d yet: %s", self.name, p, exc)
                self.unclaimed.add(p)
                continue
            self.unclaimed.discard(p)
            self.owned[p] = epoch
            claimed.append(p)
            log.info("%s: owns partition %d (epoch %d)", self.name, p, epoch)
        if claimed:
            self.unchecked.update(claimed)
            try:  # one probe for every claimed partition that has offsets to check
                needed = [p for p in claimed if self.store.stored_offsets(p)
                          or self.store.partition_flags(p)]
            except redis.RedisError as exc:
                log.warning("%s: offsets not checked yet: %s", self.name, exc)
                return
            ranges = self._log_ranges(needed) if needed else {}
            for p in claimed:
                self._first_check(p, ranges)

    def release(self, partitions: set[int]) -> None:
        self.unclaimed -= partitions
        for p in partitions:
            self.owned.pop(p, None)
            self.held.pop(p, None)
            self.unchecked.discard(p)
            self.builder.forget(p)

    def _seek_stored(self, p: int) -> None:
        """Seek both topic-partitions to the offsets in Redis and expect exactly those."""
        assert self.consumer is not None
        stored = self.store.stored_offsets(p)
        for topic in (self.topics.exposures, self.topics.events):
            tp = TopicPartition(topic, p)
            self.expected[topic, p] = stored.get(topic)
            if topic in stored:
                self.consumer.seek(tp, stored[topic])
            else:
                self.consumer.seek_to_beginning(tp)

    # -- the loop -------------------------------------------------------------------------
    def run(self, on_batch: Callable[[int, int], None] | None = None) -> None:
        s = self.settings
        self.check_topics()
        self.refresh_experiments(force=True)
        if self.models is not None:
            self.models.refresh()
            self.models.start()
        sec = s.kafka_options()
        self.producer = make_producer(s.kafka_bootstrap, client_id=f"{self.name}-dlq", **sec)
        self.consumer = self._start_fetching()
        self._on_batch = on_batch
        try:
            while not self.stop_event.is_set() and self.consumer is not None:
                try:
                    polled = self.consumer.poll(timeout_ms=s.batch_timeout_ms,
                                                max_records=s.batch_size)
                except FetchProcessDied as exc:
                    self._fetch_process_died(exc)
                    continue
                by_partition: dict[int, list[RawRecord]] = defaultdict(list)
                for tp, records in polled.items():
                    by_partition[tp.partition] += records
                self._stale.clear()
                try:
                    self._settle()  # the apply in flight, overlapped with the poll
                    if self.unclaimed:
                        self.acquire(set(self.unclaimed))
                    self.refresh_experiments()
                    self._watch_offsets()
                    for p, records in by_partition.items():
                        self._apply(p, records)
                    self._write_pending_counters()
                    self._redis_delay = 0.0
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    self._recover(exc)
                except redis.RedisError as exc:
                    self._redis_refused(exc)
                if polled:
                    self._commit_for_lag()
        finally:
            self.close()

    def _start_fetching(self) -> FetchProcess:
        """The consumer, polling in a process of its own (:mod:`stream.fetch_process`)."""
        s = self.settings
        return FetchProcess(
            listener=_Rebalance(self), bootstrap=s.kafka_bootstrap, group_id=s.group_id,
            topics=[s.topic_exposures, s.topic_events], client_id=self.name,
            max_poll_records=s.batch_size, overrides={"fetch_max_wait_ms": 100},
            **s.kafka_options())

    def _fetch_process_died(self, exc: FetchProcessDied) -> None:
        """Give up every partition (the group reassigns them, maybe here again: claimed anew
        and read from the stored offsets) and start a new fetch process."""
        log.error("%s: %s; starting a new one", self.name, exc)
        self.stats["fetch_process_restarts"] += 1
        self._pending_counters["fetch_process_restarts"] += 1  # in /metrics once written
        self._drain()
        self.release(set(self.owned))
        if self.consumer is not None:
            self.consumer.close()
        self.consumer = None
        while not self.stop_event.is_set():
            try:
                self.consumer = self._start_fetching()
                return
            except Exception as start_exc:  # the broker away as well: keep trying
                log.error("%s: fetch process not started: %s", self.name, start_exc)
                self.stop_event.wait(BACKOFF_S)

    def _apply(self, p: int, records: list[RawRecord]) -> None:
        """Build the batch, have its side outputs acknowledged, then start its fenced apply
        (:class:`stream.commit.BatchCommit`); it is settled before the partition is read
        or written again (the next apply, the next poll, a rebalance)."""
        self._settle()
        epoch = self.owned.get(p)
        if epoch is None or p in self.held or p in self._stale:
            return
        if self._rewound(p, records):
            return
        t0 = time.perf_counter()
        try:
            stored = {t: self.expected.get((t, p)) for t in
                      (self.topics.exposures, self.topics.events)}
            commit = BatchCommit(p, self.builder.build(p, epoch, records, stored),
                                 len(records))
        except Exception:
            self.builder.forget(p)
            raise
        if not commit.side_outputs(lambda b: self._send_side_outputs(b, p)):
            batch = commit.batch
            self._side_outputs_refused(p, len(batch.dead_letters) + len(batch.training),
                                       commit.errors)
            return
        self._side_delay = 0.0
        commit.seal({"batches": 1, "batch_micros": int((time.perf_counter() - t0) * 1e6)})
        self.stats["batch_seconds"] += time.perf_counter() - t0
        self.applier.submit(commit)

    def _settle(self) -> None:
        """Wait for the apply in flight and act on its outcome (store errors propagate)."""
        commit = self.applier.settle()
        if commit is None:
            return
        p, outcome = commit.partition, commit.outcome
        assert outcome is not None
        if outcome.applied:
            for topic, _, nxt in commit.write.offsets:
                self._applied[TopicPartition(topic, p)] = nxt
                self.expected[topic, p] = nxt
            self.stats["messages"] += commit.records
            self.stats["batches"] += 1
            self.stats["dead_letters"] += len(commit.batch.dead_letters)
            self._to_commit.append(commit)
            if self._on_batch is not None:
                self._on_batch(p, commit.records)
            return
        self._stale.add(p)  # what was polled after this batch is read again
        self.builder.forget(p)
        self.stats[keys.refused_counter(outcome.reason)] += 1
        log.warning("%s: batch of partition %d refused (%s %s)", self.name, p, outcome.reason,
                    outcome.detail)
        if self.owned.get(p) != commit.write.epoch:
            return  # released or claimed again since: already sought to its stored offsets
        assert self.consumer is not None
        if outcome.reason == "epoch":
            # someone claimed p since; if Kafka still assigns it here, claim it back
            self.owned.pop(p, None)
            if p in {tp.partition for tp in self.consumer.assignment()}:
                self.acquire({p})
        else:
            self._seek_stored(p)

    def _commit_for_lag(self) -> None:
        assert self.consumer is not None
        offsets = {tp: OffsetAndMetadata(off, "", -1) for tp, off in self._applied.items()
                   if tp.partition in self.owned}
        for commit in self._to_commit:
            commit.lag_committed()
        self._to_commit.clear()
        if offsets:
            try:
                self.consumer.commit_async(offsets)
            except Exception as exc:  # lag monitoring only: never fatal
                log.debug("commit for lag failed: %s", exc)

    def _drain(self) -> None:
        """Settle the apply in flight whatever it met (its partition's stored offsets decide
        where it continues)."""
        try:
            self._settle()
        except redis.RedisError as exc:
            log.debug("%s: the apply in flight failed: %s", self.name, exc)

    def close(self) -> None:
        self._drain()
        self.applier.close()
        if self.models is not None:
            self.models.stop()
        if self.consumer is not None:
            try:
                self.consumer.close()
            except Exception as exc:
                log.debug("consumer close: %s", exc)
            self.consumer = None
        if self.producer is not None:
            try:
                self.producer.close(timeout=5)
            except Exception as exc:
                log.debug("producer close: %s", exc)
            self.producer = None


def run_worker(settings: Settings, name: str = "worker") -> int:
    worker = IngestWorker(settings, name)
    stop_on_signals(worker.stop_event)
    try:
        worker.run()
    except CoPartitioningError as exc:
        log.error("%s", exc)
        print(f"liftstream worker: error: {exc}")
        return 2
    return 0
