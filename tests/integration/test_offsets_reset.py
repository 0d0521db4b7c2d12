"""Broker reset: stored offsets beyond the new log are refused with a warning, never skipped
silently; ``liftstream offsets reset`` accepts the gap and the new traffic counts exactly.

The broker of these tests is their own (a restart wipes every topic of a memory broker)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from state.store import PartitionStore, partition_count, read_counters, read_partition_warnings
from stream.lag import measure_lag
from workers.dev.embedded import Broker, start_broker
from workers.ingest import IngestWorker

from .conftest import unique
from .opskit import (
    Worker,
    click_traffic,
    counted,
    liftstream,
    metric_value,
    metrics_text,
    register_clicks,
    results_json,
    wait_until,
)
from .streaming import create_topics, publish, redis_client, streaming_settings, wait_for_messages

PARTITIONS = 4


@pytest.fixture
def own_broker() -> Iterator[Broker]:
    with start_broker() as b:
        yield b


def codes(doc: dict[str, Any]) -> dict[str, str]:
    return {w["code"]: w["detail"] for w in doc["warnings"]}


def flagged(client: Any) -> set[int]:
    return {p for p, f in read_partition_warnings(client, range(PARTITIONS)).items()
            if "offsets_out_of_range" in f}


def test_broker_reset_is_refused_then_reset_counts_new_traffic_exactly(
        own_broker: Broker, redis_url: str) -> None:
    exp = unique("reset")
    s = streaming_settings(own_broker.bootstrap, redis_url, exp, PARTITIONS)
    create_topics(s)
    client = redis_client(s)
    register_clicks(client, exp)
    before = click_traffic(exp, "a", 1500, seed=21)
    after = click_traffic(exp, "b", 300, seed=22)  # fewer per partition than stored before
    publish(s, before.messages)
    w = Worker(IngestWorker(s, "w-reset"))
    w.start()
    try:
        wait_for_messages(client, len(before.messages))
        assert counted(client, exp) == (before.units, before.clicks)
        stored_before = {p: PartitionStore(client).stored_offsets(p) for p in range(PARTITIONS)}
        assert all(len(o) == 2 for o in stored_before.values())

        own_broker.restart()  # every topic gone: new logs start at offset 0
        create_topics(s)
        publish(s, after.messages)
        wait_until("every partition flagged offsets_out_of_range",
                   lambda: flagged(client) == set(range(PARTITIONS)))

        doc = results_json(s, exp)  # the real CLI
        detail = codes(doc)["offsets_out_of_range"]
        assert f"{s.topic_exposures} partition" in detail and "stored offset" in detail
        assert "outside the log range 0.." in detail
        # nothing of the new traffic was applied, and lag is not reported as 0
        assert counted(client, exp) == (before.units, before.clicks)
        lag = measure_lag(client, s.kafka_bootstrap, [s.topic_exposures, s.topic_events])
        assert lag is not None and lag.by_topic[s.topic_exposures] is None
        assert {p for _, p, _, _ in lag.out_of_range} == set(range(PARTITIONS))
        text = metrics_text(s)
        oor = 'liftstream_ingest_counter_total{counter="offsets_out_of_range"}'
        assert metric_value(text, oor) == PARTITIONS

        r = liftstream(s, "offsets", "show")
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("OUTSIDE THE LOG") == 2 * PARTITIONS, r.stdout
        assert r.stdout.count("offsets_out_of_range:") == PARTITIONS, r.stdout

        r = liftstream(s, "offsets", "reset")
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("-> 0") == 2 * PARTITIONS, r.stdout

        # the running worker notices the reset and seeks: the new traffic counts exactly
        wait_until("new traffic counted", lambda: counted(client, exp) == (
            before.units + after.units, before.clicks + after.clicks))
        wait_for_messages(client, len(before.messages) + len(after.messages))
        doc = results_json(s, exp)
        warn = codes(doc)
        assert "offsets_out_of_range" not in warn
        resets = [w["detail"] for w in doc["warnings"] if w["code"] == "offsets_reset"]
        assert len(resets) == PARTITIONS
        for p in range(PARTITIONS):
            for topic in (s.topic_exposures, s.topic_events):
                line = f"{topic} partition {p} stored offset {stored_before[p][topic]} -> 0"
                assert sum(line in d for d in resets) == 1, (line, resets)
        assert flagged(client) == set()
        n = partition_count(client)
        c = read_counters(client, range(n))
        assert c["offsets_reset"] == PARTITIONS
        assert c["messages"] == len(before.messages) + len(after.messages)
        assert counted(client, exp) == (before.units + after.units,
                                        before.clicks + after.clicks)
    finally:
        w.stop()


def test_offset_reset_earliest_resets_by_itself(own_broker: Broker, redis_url: str) -> None:
    exp = unique("early")
    s = streaming_settings(own_broker.bootstrap, redis_url, exp, PARTITIONS,
                           offset_reset="earliest")
    create_topics(s)
    client = redis_client(s)
    register_clicks(client, exp)
    before = click_traffic(exp, "a", 800, seed=31)
    after = click_traffic(exp, "b", 200, seed=32)
    publish(s, before.messages)
    w = Worker(IngestWorker(s, "w-early"))
    w.start()
    try:
        wait_for_messages(client, len(before.messages))
        own_broker.restart()
        create_topics(s)
        publish(s, after.messages)
        wait_until("new traffic counted", lambda: counted(client, exp) == (
            before.units + after.units, before.clicks + after.clicks))
        warn = codes(results_json(s, exp))
        assert "offsets_out_of_range" not in warn
        assert "LIFTSTREAM_OFFSET_RESET=earliest" in warn["offsets_reset"]
        wait_for_messages(client, len(before.messages) + len(after.messages))
        assert counted(client, exp) == (before.units + after.units,
                                        before.clicks + after.clicks)
    finally:
        w.stop()


def test_offsets_reset_keeps_in_range_partitions(broker: Broker, redis_url: str) -> None:
    """Without a fault the reset changes nothing (no double count), and says so."""
    exp = unique("noop")
    s = streaming_settings(broker.bootstrap, redis_url, exp, PARTITIONS)
    create_topics(s)
    client = redis_client(s)
    register_clicks(client, exp)
    traffic = click_traffic(exp, "a", 300, seed=41)
    publish(s, traffic.messages)
    w = Worker(IngestWorker(s, "w-noop"))
    w.start()
    try:
        wait_for_messages(client, len(traffic.messages))
        r = liftstream(s, "offsets", "reset")
        assert r.returncode == 0 and "nothing to reset" in r.stdout, r.stdout + r.stderr
        r = liftstream(s, "offsets", "reset", "--force")
        assert r.returncode == 2 and "--force needs --partition" in r.stderr
        r = liftstream(s, "offsets", "reset", "--partition", "9")
        assert r.returncode == 2 and "partitions 0..3" in r.stderr
        assert codes(results_json(s, exp)) == {}
        assert counted(client, exp) == (traffic.units, traffic.clicks)
    finally:
        w.stop()
