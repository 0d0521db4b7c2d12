"""Consumer lag of the ingest workers: Kafka high watermarks minus the offsets applied in Redis.

The durable position of ingest is the next offset stored in Redis per topic-partition (DESIGN
§2), so lag is measured against it rather than against Kafka commits. High watermarks come from
a fetch response (Tansu answers ``ListOffsets(LATEST)`` with the base offset of the last
record batch + 1, see :mod:`stream.kafka`): a short-lived group-less consumer seeks every
partition just before that answer and reads the watermark the fetch reports. On a real Kafka
cluster the same procedure reads at most one record per partition.

A stored offset outside its partition's log (beyond the high watermark after a broker or topic
reset, or before the beginning after retention) is never reported as lag 0: such partitions are
listed in :attr:`LagReading.out_of_range`, left out of the sums, and the topics they belong to
report unknown lag (``None`` in :attr:`LagReading.by_topic`). So are partitions a worker
flagged ``offsets_out_of_range`` in Redis (a reset log may have grown past the stored offset
again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from state.store import (
    Client,
    partition_count,
    read_partition_warnings,
    stored_offsets_all,
)
from stream.kafka import LogRange, log_ranges

log = logging.getLogger("liftstream.lag")


@dataclass(frozen=True)
class LagReading:
    """Messages published but not yet applied, per topic and in total, at ``measured_at``.

    ``by_topic[t]`` is ``None`` (unknown) and ``total`` counts only in-range partitions when
    any partition of ``t`` is in ``out_of_range`` (``topic, partition, stored, log range``).
    """

    total: int
    by_topic: dict[str, int | None]
    by_partition: dict[str, dict[int, int]] = field(default_factory=dict)
    measured_at: float = 0.0
    out_of_range: list[tuple[str, int, int, LogRange | None]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "by_topic": dict(self.by_topic),
                "measured_at": self.measured_at,
                "out_of_range": [{"topic": t, "partition": p, "stored": s,
                                  "log_begin": r.begin if r else None,
                                  "log_end": r.end if r else None}
                                 for t, p, s, r in self.out_of_range]}


def measure_lag(client: Client, bootstrap: str, topics: Sequence[str],
                timeout_s: float = 3.0, **security: Any) -> LagReading | None:
    """Lag of the ingest path now; ``None`` before the workers announced a partition count."""
    n = partition_count(client)
    if not n:
        return None
    ranges = log_ranges(bootstrap, [(t, p) for t in topics for p in range(n)], timeout_s,
                        **security)
    applied = stored_offsets_all(client, range(n))
    flagged = {p for p, flags in read_partition_warnings(client, range(n)).items()
               if "offsets_out_of_range" in flags}
    return lag_reading(topics, ranges, applied, flagged, time.time())


def lag_reading(topics: Sequence[str], ranges: Mapping[tuple[str, int], LogRange],
                applied: Mapping[int, Mapping[str, int]], flagged: set[int],
                measured_at: float = 0.0) -> LagReading:
    """Pure part of :func:`measure_lag`.

    >>> r = lag_reading(["e"], {("e", 0): LogRange(0, 5), ("e", 1): LogRange(0, 3)},
    ...                 {0: {"e": 2}, 1: {"e": 9}}, set())
    >>> r.by_topic, r.total, [(t, p, s) for t, p, s, _ in r.out_of_range]
    ({'e': None}, 3, [('e', 1, 9)])
    """
    by_partition: dict[str, dict[int, int]] = {t: {} for t in topics}
    out: list[tuple[str, int, int, LogRange | None]] = []
    for (topic, p), rng in sorted(ranges.items()):
        stored = applied.get(p, {}).get(topic)
        if stored is not None and (not rng.begin <= stored <= rng.end or p in flagged):
            out.append((topic, p, stored, rng))
            continue
        by_partition[topic][p] = rng.end - (rng.begin if stored is None else stored)
    bad_topics = {t for t, _, _, _ in out}
    by_topic: dict[str, int | None] = {t: None if t in bad_topics else sum(v.values())
                                       for t, v in by_partition.items()}
    total = sum(sum(v.values()) for v in by_partition.values())
    return LagReading(total, by_topic, by_partition, measured_at, out)


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
