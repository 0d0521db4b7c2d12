"""Shared helpers for streaming integration tests: settings, publishing, a worker thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np

from state.store import Client, connect, partition_count, read_counters
from stream.kafka import ensure_topics, make_producer
from workers.ingest import IngestWorker
from workers.settings import Settings


def streaming_settings(bootstrap: str, redis_url: str, prefix: str, partitions: int = 4,
                       **overrides: Any) -> Settings:
    base = Settings()
    return replace(base, kafka_bootstrap=bootstrap, redis_url=redis_url,
                   topic_exposures=f"{prefix}.exposures", topic_events=f"{prefix}.events",
                   topic_dead_letters=f"{prefix}.dead", group_id=f"{prefix}-group",
                   partitions=partitions, batch_size=2000, batch_timeout_ms=100, **overrides)


def create_topics(s: Settings) -> None:
    ensure_topics(s.kafka_bootstrap, {s.topic_exposures: s.partitions,
                                      s.topic_events: s.partitions})


def publish(s: Settings, messages: Sequence[tuple[str, bytes, bytes]]) -> None:
    producer = make_producer(s.kafka_bootstrap, linger_ms=20)
    topics = {"exposures": s.topic_exposures, "events": s.topic_events}
    for kind, key, value in messages:
        producer.send(topics[kind], value=value, key=key)
    producer.flush()
    producer.close()


def messages_applied(client: Client) -> int:
    n = partition_count(client)
    return int(read_counters(client, range(n)).get("messages", 0)) if n else 0


def wait_for_messages(client: Client, total: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if messages_applied(client) >= total:
            return
        time.sleep(0.2)
    raise TimeoutError(f"only {messages_applied(client)} of {total} messages applied")


@contextmanager
def worker_thread(s: Settings, name: str = "w0") -> Iterator[IngestWorker]:
    worker = IngestWorker(s, name)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            worker.run()
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    try:
        yield worker
    finally:
        worker.stop_event.set()
        t.join(timeout=30)
    if errors:
        raise errors[0]


def redis_client(s: Settings) -> Client:
    return connect(s.redis_url, s.redis_cluster)


def assert_documents_equal(stream_doc: dict[str, Any], batch_doc: dict[str, Any],
                           rel: float = 1e-9) -> int:
    """Every estimator number of two result documents agrees; returns how many compared."""
    a, b = stream_doc["slices"][0], batch_doc["slices"][0]
    assert [(v["name"], v["n"]) for v in a["variations"]] == \
        [(v["name"], v["n"]) for v in b["variations"]]
    compared = 0
    for ma, mb in zip(a["metrics"], b["metrics"], strict=True):
        assert ma["metric"] == mb["metric"]
        for ca, cb in zip(ma["comparisons"], mb["comparisons"], strict=True):
            assert set(ca["estimators"]) == set(cb["estimators"])
            for name, ea in ca["estimators"].items():
                eb = cb["estimators"][name]
                for field, va in ea.items():
                    vb = eb[field]
                    if isinstance(va, float) and isinstance(vb, float):
                        assert np.isclose(va, vb, rtol=rel, atol=1e-300), \
                            (ma["metric"], ca["treatment"], name, field, va, vb)
                        compared += 1
                    else:
                        assert va == vb, (ma["metric"], name, field, va, vb)
    return compared
