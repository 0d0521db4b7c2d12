"""The worker's consumer in a process of its own (stream/fetch_process.py) keeps an in-process
consumer's semantics: no record polled before a seek is returned after it, a dead child is
reported, and a worker whose fetch process is SIGKILLed mid-stream loses and double-counts
nothing (real broker, real Redis)."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable

import pytest

from state.store import partition_count, read_counters
from stream.batch import RawRecord
from stream.fetch_process import FetchProcess, FetchProcessDied
from stream.kafka import TopicPartition, ensure_topics, make_producer
from workers.dev.embedded import Broker
from workers.ingest import IngestWorker

from .conftest import unique
from .opskit import (
    Worker,
    click_traffic,
    counted,
    metric_value,
    metrics_text,
    register_clicks,
    wait_until,
)
from .streaming import create_topics, publish, redis_client, streaming_settings

RECORDS = 3000
Polled = dict[TopicPartition, list[RawRecord]]


def _fill(bootstrap: str, topic: str) -> None:
    producer = make_producer(bootstrap, linger_ms=5)
    for i in range(RECORDS):
        producer.send(topic, value=str(i).encode(), key=b"k", partition=0)
    producer.flush()
    producer.close()


def _poll_until(fp: FetchProcess, cond: Callable[[Polled], bool], what: str,
                timeout: float = 60.0) -> Polled:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fp.poll(timeout_ms=200, max_records=500)
        if got and cond(got):
            return got
    raise TimeoutError(what)


def test_no_record_polled_before_a_seek_comes_after_it(broker: Broker) -> None:
    topic = unique("fetch")
    ensure_topics(broker.bootstrap, {topic: 1})
    _fill(broker.bootstrap, topic)
    tp = TopicPartition(topic, 0)
    fp = FetchProcess(bootstrap=broker.bootstrap, group_id=unique("g"), topics=[topic],
                      max_poll_records=500)
    try:
        first = _poll_until(fp, lambda got: tp in got, "first records")
        assert first[tp][0].offset == 0 and first[tp][0].value == b"0"
        # the next poll was asked ahead when these came: its records (from 500 on) are stale
        # once we seek, and must not be returned
        for _ in range(5):
            fp.seek(tp, 7)
            got = _poll_until(fp, lambda got: tp in got, "records after the seek")
            offsets = [r.offset for r in got[tp]]
            assert offsets[0] == 7, offsets[:3]
            assert offsets == list(range(7, 7 + len(offsets)))
        assert fp.assignment() == {tp}
        assert fp.highwater(tp) == RECORDS
        fp.pause(tp)
        fp.seek(tp, 0)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # paused: nothing of tp, stale or new
            assert tp not in fp.poll(timeout_ms=200, max_records=500)
        fp.resume(tp)
        got = _poll_until(fp, lambda got: tp in got, "records after resume")
        assert got[tp][0].offset == 0
    finally:
        fp.close()
    assert fp._proc.returncode is not None


def test_a_dead_fetch_process_is_reported(broker: Broker) -> None:
    topic = unique("fetchdead")
    ensure_topics(broker.bootstrap, {topic: 1})
    fp = FetchProcess(bootstrap=broker.bootstrap, group_id=unique("g"), topics=[topic])
    os.kill(fp.pid, signal.SIGKILL)
    with pytest.raises(FetchProcessDied):
        for _ in range(100):
            fp.poll(timeout_ms=100, max_records=10)
    fp.close()


def test_worker_rides_out_its_fetch_process_killed(broker: Broker, redis_url: str) -> None:
    exp = unique("fetchkill")
    s = streaming_settings(broker.bootstrap, redis_url, exp, 4)
    s = dataclasses.replace(s, batch_size=200)
    create_topics(s)
    client = redis_client(s)
    register_clicks(client, exp)
    traffic = click_traffic(exp, "a", 3000, seed=61)
    w = Worker(IngestWorker(s, "w-fetch"))
    w.start()
    try:
        publish(s, traffic.messages[:len(traffic.messages) // 2])
        wait_until("the first half applied", lambda: counted(client, exp)[0] > 0)
        killed = []
        for _ in range(2):
            fp = w.worker.consumer
            assert fp is not None
            os.kill(fp.pid, signal.SIGKILL)
            killed.append(fp.pid)
            wait_until("a new fetch process", lambda: w.worker.consumer is not None
                       and w.worker.consumer.pid not in killed)
        publish(s, traffic.messages[len(traffic.messages) // 2:])
        wait_until("every click counted",
                   lambda: counted(client, exp) == (traffic.units, traffic.clicks),
                   timeout=180)
        assert w.worker.stats["fetch_process_restarts"] == 2
        wait_until("the restarts counted in Redis", lambda: read_counters(
            client, range(partition_count(client))).get("fetch_process_restarts") == 2)
        assert metric_value(metrics_text(s), 'liftstream_ingest_counter_total'
                            '{counter="fetch_process_restarts"}') == 2
    finally:
        w.stop()
    assert counted(client, exp) == (traffic.units, traffic.clicks)
