"""Quiescence by watermarks: the workers are done when, for every input topic-partition,
the offset stored with the applied state (``ls:{p}:off``) equals the log's high watermark.
Nothing further can then be applied (or replayed) until something new is published."""

from __future__ import annotations

import time

from state.store import Client, stored_offsets_all
from stream.kafka import log_ranges
from workers.settings import Settings


def behind(s: Settings, client: Client) -> dict[tuple[str, int], tuple[int, int]]:
    """``(topic, partition) → (stored offset, high watermark)`` of those not caught up."""
    topics = (s.topic_exposures, s.topic_events)
    wanted = [(t, p) for t in topics for p in range(s.partitions)]
    ends = log_ranges(s.kafka_bootstrap, wanted, timeout_s=10.0)
    stored = stored_offsets_all(client, range(s.partitions))
    out = {}
    for t, p in wanted:
        if (t, p) not in ends:  # the watermark did not arrive: not known caught up
            out[t, p] = (stored[p].get(t, 0), -1)
            continue
        have, end = stored[p].get(t, 0), ends[t, p].end
        if have != end:
            out[t, p] = (have, end)
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
