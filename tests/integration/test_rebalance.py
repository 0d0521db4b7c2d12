"""Workers joining and leaving mid-stream change no result; mismatched topics are refused.

DESIGN §2: partition *p* of both co-partitioned topics goes to one worker, which seeks to the
offsets stored in Redis on assignment, so a consumer-group rebalance neither loses nor repeats
a message. A worker refuses to start when the two topics' partition counts differ.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from state import keys
from state.definition import parse_definition
from state.registry import Registry
from state.results import experiment_document
from state.store import read_counters
from stream.kafka import ensure_topics
from tests.support.quiescence import wait_quiescent
from workers.dev.embedded import Broker
from workers.ingest import CoPartitioningError, IngestWorker

from .conftest import unique
from .streaming import (
    Publisher,
    assert_documents_equal,
    create_topics,
    event_accounting,
    messages_applied,
    redis_client,
    settings_env,
    streaming_settings,
    synthetic_batch_document,
    synthetic_definition,
    synthetic_stream,
    wait_for_messages,
    worker_thread,
)

UNITS = 40_000


def wait_until(condition: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise TimeoutError(f"not within {timeout} s: {condition}")


def test_workers_join_and_leave_mid_stream(broker: Broker, redis_url: str) -> None:
    exp = "rebalance"
    s = streaming_settings(broker.bootstrap, redis_url, unique("rebal"), partitions=4)
    create_topics(s)
    client = redis_client(s)
    Registry(client).create(parse_definition(synthetic_definition(exp)))
    stream = synthetic_stream(exp, UNITS, seed=7)
    total = len(stream.messages)
    # ~3,000 messages/s; the last 30% only once two of the three workers have left
    publisher = Publisher(s, stream.messages, rate=total / 25.0, pause_at=int(total * 0.7))
    t0 = time.monotonic()
    phases: list[tuple[str, float, int, int]] = []  # (phase, seconds, applied, published)

    def mark(phase: str) -> None:
        phases.append((phase, time.monotonic() - t0, messages_applied(client), publisher.sent))

    publisher.start()
    try:
        with worker_thread(s, "r1") as w1:
            wait_until("r1 applies batches", lambda: w1.stats["batches"] > 0, timeout=30)
            mark("1 worker")
            with worker_thread(s, "r2") as w2, worker_thread(s, "r3") as w3:
                wait_until("r2 and r3 apply batches",
                           lambda: w2.stats["batches"] > 0 and w3.stats["batches"] > 0,
                           timeout=60)
                mark("3 workers")
                time.sleep(3.0)  # the three share the partitions for a while
                assert len(w1.owned) + len(w2.owned) + len(w3.owned) <= s.partitions
                mark("stopping 2")
                assert publisher.sent < total, "the stream ended before two workers left"
            mark("back to 1")  # r2 and r3 stopped cleanly (left the group)
            publisher.resume.set()
            publisher.finish()
            wait_for_messages(client, total, timeout=120)
            # every stored offset at the high watermark: nothing is left to apply or replay
            wait_quiescent(s, client, timeout=120)
            assert messages_applied(client) == total
            assert sorted(w1.owned) == list(range(s.partitions))
            mark("done")
    finally:
        publisher.resume.set()
        publisher.join(timeout=60)

    d = Registry(client).get(exp)
    assert d is not None
    live = experiment_document(client, d)
    compared = assert_documents_equal(live, synthetic_batch_document(stream.frame), 1e-9)
    acc = event_accounting(client, exp, stream, s.partitions, s.unit_buckets)
    totals = read_counters(client, range(s.partitions))
    epochs = [int(client.get(keys.epoch(p)) or 0) for p in range(s.partitions)]
    print("\n" + "; ".join(f"{name} at {t:.1f} s: {a} applied, {p} published"
                           for name, t, a, p in phases))
    print(f"messages {total}, partition epochs {epochs}, batches r1/r2/r3 "
          f"{w1.stats['batches']:.0f}/{w2.stats['batches']:.0f}/{w3.stats['batches']:.0f}, "
          f"refused epoch/offset {int(totals.get('refused_epoch', 0))}/"
          f"{int(totals.get('refused_offset', 0))}")
    print(f"events in / counted / lost / double-counted: {acc['events_in']} / "
          f"{acc['counted']} (of {acc['countable']} countable) / {acc['lost']} / "
          f"{acc['double_counted']}; {compared} estimator numbers equal the batch analysis")
    assert all(e >= 3 for e in epochs), "some partition never changed owner twice"
    assert acc["lost"] == 0 and acc["double_counted"] == 0
    assert acc["counted"] == acc["countable"]
    assert acc["wrong_units"] == 0 and acc["extra_units"] == 0
    assert compared > 50
    counters = live["slices"][0]["counters"]
    assert counters["exposures"] == UNITS
    assert counters.get("repeat_exposures", 0) == stream.duplicate_exposures


def test_worker_refuses_topics_with_different_partition_counts(
        broker: Broker, redis_url: str, tmp_path: Path) -> None:
    s = streaming_settings(broker.bootstrap, redis_url, unique("copart"), partitions=4)
    ensure_topics(s.kafka_bootstrap, {s.topic_exposures: 4, s.topic_events: 3})
    worker = IngestWorker(s, "mismatch")
    with pytest.raises(CoPartitioningError) as info:
        worker.check_topics()
    message = str(info.value)
    assert s.topic_exposures in message and s.topic_events in message
    assert "4 partitions" in message and "3 partitions" in message
    # the real process: exit code 2 and the same explanation, before joining any group
    exe = Path(sys.executable).with_name("liftstream")
    done = subprocess.run([str(exe), "worker", "--name", "mismatch"],
                          env=settings_env(replace(s, group_id=unique("g"))),
                          capture_output=True, text=True, timeout=60)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out[-2000:]
    assert "liftstream worker: error: " in out
    assert s.topic_exposures in out and s.topic_events in out
    assert messages_applied(redis_client(s)) == 0
