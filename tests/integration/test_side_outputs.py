"""Side outputs are acknowledged before a batch's offsets are stored: when the broker refuses
the dead letters, the batch is not applied, is counted and read again; nothing is lost.

The refusal is simulated at the stream/kafka.py boundary (the worker's producer); broker,
topics, Redis and the rest of the path are real."""

from __future__ import annotations

from typing import Any

import pytest

from state.store import partition_count, read_counters
from workers.dev.embedded import Broker
from workers.ingest import IngestWorker
from workers.ingest import worker as ingest

from .conftest import unique
from .opskit import (
    RefusingProducer,
    Worker,
    click_traffic,
    counted,
    metric_value,
    metrics_text,
    read_topic,
    register_clicks,
    wait_until,
)
from .streaming import create_topics, publish, redis_client, streaming_settings, wait_for_messages


def test_refused_dead_letters_hold_the_batch_until_the_broker_accepts(
        broker: Broker, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    exp = unique("dlq")
    s = streaming_settings(broker.bootstrap, redis_url, exp, 4)
    create_topics(s)
    client = redis_client(s)
    register_clicks(client, exp)
    traffic = click_traffic(exp, "a", 500, seed=51, invalid=12)
    producers: list[RefusingProducer] = []

    def make_producer(*args: Any, **kw: Any) -> RefusingProducer:
        p = RefusingProducer(real_make_producer(*args, **kw), s.topic_dead_letters)
        p.refusing.set()
        producers.append(p)
        return p

    real_make_producer = ingest.make_producer
    monkeypatch.setattr(ingest, "make_producer", make_producer)

    def counters() -> dict[str, float]:
        n = partition_count(client)
        return read_counters(client, range(n)) if n else {}

    publish(s, traffic.messages)
    w = Worker(IngestWorker(s, "w-dlq"))
    w.start()
    try:
        wait_until("batches refused for their side outputs",
                   lambda: counters().get("refused_side_outputs", 0) >= 4)
        c = counters()
        # no batch holding a dead letter was stored, so not everything was applied
        assert c.get("dead_letters", 0) == 0
        assert c.get("messages", 0) < len(traffic.messages)
        assert c["side_outputs_failed"] >= c["refused_side_outputs"]
        text = metrics_text(s)
        assert metric_value(text, 'liftstream_ingest_refused_batches_total{reason="side_outputs"}'
                            ) >= 4
        assert read_topic(s.kafka_bootstrap, s.topic_dead_letters, 1, timeout=2.0) == []

        producers[0].refusing.clear()  # the broker accepts again
        wait_for_messages(client, len(traffic.messages))
        assert counted(client, exp) == (traffic.units, traffic.clicks)
        c = counters()
        assert c["messages"] == len(traffic.messages)
        assert c["dead_letters"] == traffic.invalid  # applied exactly once
        letters = read_topic(s.kafka_bootstrap, s.topic_dead_letters, traffic.invalid)
        origins = {(d["topic"], d["partition"], d["offset"]) for d in letters}
        assert len(origins) == traffic.invalid and all(d["reason"] for d in letters)
    finally:
        w.stop()
