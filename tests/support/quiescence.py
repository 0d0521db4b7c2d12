"""Quiescence by watermarks: the workers are done when, for every input topic-partition,
the offset stored with the applied state (``ls:{p}:off``) equals the log's high watermark
(:func:`stream.lag.lag_reading` is 0 everywhere). Nothing further can then be applied (or
replayed) until something new is published."""

from __future__ import annotations

import time

from state.store import Client, stored_offsets_all
from stream.kafka import log_ranges
from stream.lag import lag_reading
from workers.settings import Settings


def behind(s: Settings, client: Client) -> dict[tuple[str, int], int | str]:
    """``(topic, partition) → messages not applied`` (or why unknown) of those not caught up."""
    topics = (s.topic_exposures, s.topic_events)
    wanted = [(t, p) for t in topics for p in range(s.partitions)]
    ranges = log_ranges(s.kafka_bootstrap, wanted, timeout_s=10.0)
    reading = lag_reading(topics, ranges, stored_offsets_all(client, range(s.partitions)),
                          set())
    out: dict[tuple[str, int], int | str] = {tp: "no high watermark" for tp in wanted
                                             if tp not in ranges}
    out |= {(t, p): f"stored {stored} outside the log" for t, p, stored, _ in
            reading.out_of_range}
    out |= {(t, p): n for t, parts in reading.by_partition.items() for p, n in parts.items()
            if n != 0}
    return out


def wait_quiescent(s: Settings, client: Client, timeout: float = 120.0) -> None:
    """Until every input topic-partition's stored offset equals its high watermark."""
    deadline = time.monotonic() + timeout
    while True:
        lagging = behind(s, client)
        if not lagging:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"stored offsets behind the high watermarks: {lagging}")
        time.sleep(0.2)
