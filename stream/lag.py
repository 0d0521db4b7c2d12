"""Consumer lag of the ingest workers: Kafka high watermarks minus the offsets applied in Redis.

The durable position of ingest is the next offset stored in Redis per topic-partition (DESIGN
§2), so lag is measured against it rather than against Kafka commits. High watermarks come from
a fetch response (Tansu answers ``ListOffsets(LATEST)`` with the base offset of the last
record batch + 1, see :mod:`stream.kafka`): a short-lived group-less consumer seeks every
partition just before that answer and reads the watermark the fetch reports. On a real Kafka
cluster the same procedure reads at most one record per partition.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from state.store import Client, partition_count, stored_offsets_all
from stream.kafka import TopicPartition, make_consumer

log = logging.getLogger("liftstream.lag")


@dataclass(frozen=True)
class LagReading:
    """Messages published but not yet applied, per topic and in total, at ``measured_at``."""

    total: int
    by_topic: dict[str, int]
    by_partition: dict[str, dict[int, int]] = field(default_factory=dict)
    measured_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "by_topic": dict(self.by_topic),
                "measured_at": self.measured_at}


def high_watermarks(bootstrap: str, topics: Sequence[str], partitions: int,
                    timeout_s: float = 3.0, **security: Any) -> dict[tuple[str, int], int]:
    """High watermark of each topic-partition (missing ones are left out after ``timeout_s``)."""
    consumer = make_consumer(bootstrap, None, client_id="liftstream-lag", **security)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps, timeout_ms=int(timeout_s * 1000))
        for tp in tps:
            consumer.seek(tp, max(int(ends.get(tp) or 0) - 1, 0))
        got: dict[tuple[str, int], int] = {}
        deadline = time.monotonic() + timeout_s
        while len(got) < len(tps) and time.monotonic() < deadline:
            consumer.poll(timeout_ms=100, max_records=10_000)
            done = []
            for tp in tps:
                high = consumer.highwater(tp)
                if high is not None and (tp.topic, tp.partition) not in got:
                    got[(tp.topic, tp.partition)] = int(high)
                    done.append(tp)
            if done:
                consumer.pause(*done)
        return got
    finally:
        consumer.close()


def measure_lag(client: Client, bootstrap: str, topics: Sequence[str],
                timeout_s: float = 3.0, **security: Any) -> LagReading | None:
    """Lag of the ingest path now; ``None`` before the workers announced a partition count."""
    n = partition_count(client)
    if not n:
        return None
    highs = high_watermarks(bootstrap, topics, n, timeout_s, **security)
    applied = stored_offsets_all(client, range(n))
    by_partition: dict[str, dict[int, int]] = {t: {} for t in topics}
    for (topic, p), high in highs.items():
        by_partition[topic][p] = max(0, high - applied.get(p, {}).get(topic, 0))
    by_topic = {t: sum(v.values()) for t, v in by_partition.items()}
    return LagReading(sum(by_topic.values()), by_topic, by_partition, time.time())


class LagMonitor:
    """Measures lag every ``interval`` seconds in a daemon thread; :meth:`latest` reads it."""

    def __init__(self, client: Client, bootstrap: str, topics: Sequence[str],
                 interval: float = 5.0, security: Mapping[str, Any] | None = None) -> None:
        self.client = client
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.interval = interval
        self.security = dict(security or {})
        self.error: str | None = None
        self._latest: LagReading | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def latest(self) -> LagReading | None:
        return self._latest

    def measure(self) -> LagReading | None:
        """One measurement now (errors are kept in :attr:`error`, never raised)."""
        try:
            reading = measure_lag(self.client, self.bootstrap, self.topics,
                                  timeout_s=min(3.0, self.interval), **self.security)
        except Exception as exc:  # Kafka or Redis down: report, keep the last good reading
            self.error = f"{type(exc).__name__}: {exc}"
            log.debug("lag measurement failed: %s", self.error)
            return self._latest
        self.error = None
        if reading is not None:
            self._latest = reading
        return reading

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lag-monitor", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.measure()
            self._stop.wait(self.interval)
