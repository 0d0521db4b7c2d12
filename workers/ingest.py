"""``liftstream worker``: consume exposures and events, keep statistics in Redis exactly.

Per owned partition *p* (of both co-partitioned topics) the worker claims a new owner epoch
in Redis, seeks both topic-partitions to the offsets stored in Redis, and applies every
polled batch with one Lua call that fences on that epoch and those offsets. Kafka commits are
made only so consumer lag can be monitored; they are never read back.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import redis

from state.layout import ExperimentLayout
from state.model_cache import ModelCache
from state.models import ModelRegistry
from state.registry import Registry
from state.store import PartitionStore, connect
from stream.batch import BatchBuilder, PreparedBatch, RawRecord, Topics
from stream.kafka import (
    ConsumerRebalanceListener,
    KafkaConsumer,
    OffsetAndMetadata,
    TopicPartition,
    ensure_topics,
    make_consumer,
    make_producer,
    partition_counts,
)
from stream.messages import dead_letter
from workers.settings import Settings

log = logging.getLogger("liftstream.worker")


class CoPartitioningError(RuntimeError):
    """The exposures and events topics have different partition counts."""


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: IngestWorker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.worker.release({tp.partition for tp in revoked})

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.worker.acquire({tp.partition for tp in assigned})


class IngestWorker:
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
        self.consumer: KafkaConsumer | None = None
        self.producer: Any = None
        self._registry_version = -1
        self._registry_checked = 0.0
        self.stats: dict[str, float] = defaultdict(float)
        self._applied: dict[Any, int] = {}
        self.expected: dict[tuple[str, int], int | None] = {}
        self.unclaimed: set[int] = set()

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
        for p in sorted(partitions):
            try:
                epoch = self.store.claim(p)
                self.builder.forget(p)
                self._seek_stored(p)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("%s: cannot claim partition %d yet: %s", self.name, p, exc)
                self.unclaimed.add(p)
                continue
            self.unclaimed.discard(p)
            self.owned[p] = epoch
            log.info("%s: owns partition %d (epoch %d)", self.name, p, epoch)

    def release(self, partitions: set[int]) -> None:
        self.unclaimed -= partitions
        for p in partitions:
            self.owned.pop(p, None)
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
        self.consumer = make_consumer(
            s.kafka_bootstrap, s.group_id, [s.topic_exposures, s.topic_events],
            listener=_Rebalance(self), client_id=self.name, max_poll_records=s.batch_size,
            overrides={"fetch_max_wait_ms": 100}, **sec)
        try:
            while not self.stop_event.is_set():
                polled = self.consumer.poll(timeout_ms=s.batch_timeout_ms,
                                            max_records=s.batch_size)
                by_partition: dict[int, list[RawRecord]] = defaultdict(list)
                for tp, records in polled.items():
                    for r in records:
                        by_partition[tp.partition].append(
                            RawRecord(tp.topic, r.offset, r.value, r.key))
                try:
                    if self.unclaimed:
                        self.acquire(set(self.unclaimed))
                    self.refresh_experiments()
                    for p, records in by_partition.items():
                        self._apply(p, records)
                        if on_batch is not None:
                            on_batch(p, len(records))
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    self._recover(exc)
                if polled:
                    self._commit_for_lag()
        finally:
            self.close()

    def _apply(self, p: int, records: list[RawRecord]) -> None:
        epoch = self.owned.get(p)
        if epoch is None:
            return
        t0 = time.perf_counter()
        try:
            stored = {t: self.expected.get((t, p)) for t in
                      (self.topics.exposures, self.topics.events)}
            batch = self.builder.build(p, epoch, records, stored)
        except Exception:
            self.builder.forget(p)
            raise
        self._send_side_outputs(batch, p)
        batch.write.counters["batches"] += 1
        batch.write.counters["batch_micros"] += int((time.perf_counter() - t0) * 1e6)
        outcome = self.store.apply(batch.write)
        self.stats["batch_seconds"] += time.perf_counter() - t0
        if outcome.applied:
            for topic, _, nxt in batch.write.offsets:
                self._applied[TopicPartition(topic, p)] = nxt
                self.expected[topic, p] = nxt
            self.stats["messages"] += len(records)
            self.stats["batches"] += 1
            self.stats["dead_letters"] += len(batch.dead_letters)
            return
        self.builder.forget(p)
        self.stats[f"refused_{outcome.reason}"] += 1
        log.warning("%s: batch of partition %d refused (%s %s)", self.name, p, outcome.reason,
                    outcome.detail)
        assert self.consumer is not None
        if outcome.reason == "epoch":
            # someone claimed p since; if Kafka still assigns it here, claim it back
            self.owned.pop(p, None)
            if p in {tp.partition for tp in self.consumer.assignment()}:
                self.acquire({p})
        else:
            self._seek_stored(p)

    def _recover(self, exc: Exception) -> None:
        """Redis went away: wait for it, then resume every owned partition from the offsets
        it actually holds (an AOF restart may have lost its last writes)."""
        log.warning("%s: Redis unavailable (%s); waiting", self.name, exc)
        delay = 0.2
        while not self.stop_event.is_set():
            try:
                self.client.ping()
                for p in list(self.owned):
                    self.builder.forget(p)
                    self._seek_stored(p)
                log.info("%s: Redis is back; resumed from stored offsets", self.name)
                return
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(delay)
                delay = min(2.0, delay * 2)

    def _send_side_outputs(self, batch: PreparedBatch, p: int) -> None:
        """Dead letters and training examples, before the batch is applied (at least once).
        A message the broker refuses is counted (``side_outputs_failed``), never fatal: one
        poison record must not stop a partition."""
        failed = 0
        for dl in batch.dead_letters:
            try:
                self.producer.send(self.settings.topic_dead_letters,
                                   dead_letter(dl.record.value, dl.record.topic, p,
                                               dl.record.offset, dl.reason))
            except Exception as exc:
                failed += 1
                log.error("%s: dead letter of %s/%d@%d not sent: %s", self.name,
                          dl.record.topic, p, dl.record.offset, exc)
        for example in batch.training:
            try:
                self.producer.send(self.settings.topic_training, example)
            except Exception as exc:
                failed += 1
                log.error("%s: training example not sent: %s", self.name, exc)
        if batch.dead_letters or batch.training:
            try:
                self.producer.flush(timeout=30)
            except Exception as exc:
                failed += 1
                log.error("%s: flushing side outputs failed: %s", self.name, exc)
        if failed:
            batch.write.counters["side_outputs_failed"] += failed

    def _commit_for_lag(self) -> None:
        assert self.consumer is not None
        offsets = {tp: OffsetAndMetadata(off, "", -1) for tp, off in self._applied.items()
                   if tp.partition in self.owned}
        if offsets:
            try:
                self.consumer.commit_async(offsets)
            except Exception as exc:  # lag monitoring only: never fatal
                log.debug("commit for lag failed: %s", exc)

    def close(self) -> None:
        if self.models is not None:
            self.models.stop()
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False)
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

    def stop(signum: int, frame: Any) -> None:
        worker.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        worker.run()
    except CoPartitioningError as exc:
        log.error("%s", exc)
        print(f"liftstream worker: error: {exc}")
        return 2
    return 0
