"""The ingest worker in a thread, publishing test messages, waiting for them to be applied,
reading the dead letters."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import msgspec

from state.store import Client, partition_count, read_counters
from stream.kafka import TopicPartition, make_consumer, make_producer
from workers.ingest import IngestWorker
from workers.settings import Settings

#: ``(kind, key, value)`` with kind ``exposures`` or ``events``.
Message = tuple[str, bytes, bytes]


class WorkerThread(threading.Thread):
    """An :class:`IngestWorker` (or one built from settings) in a thread; ``error`` holds what
    made it stop, if anything. ``strict`` subclasses also fail :meth:`stop` on an error."""

    strict: ClassVar[bool] = False

    def __init__(self, worker: IngestWorker | Settings, name: str = "w") -> None:
        super().__init__(daemon=True)
        self.worker = worker if isinstance(worker, IngestWorker) else IngestWorker(worker, name)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def stop(self) -> None:
        self.worker.stop_event.set()
        self.join(timeout=30)
        assert not self.is_alive(), "worker did not stop"
        if self.strict:
            assert self.error is None, repr(self.error)


@contextmanager
def worker_thread(s: Settings, name: str = "w0") -> Iterator[IngestWorker]:
    """Run an ingest worker for the ``with`` block; re-raise what it raised."""
    t = WorkerThread(s, name)
    t.start()
    try:
        yield t.worker
    finally:
        t.worker.stop_event.set()
        t.join(timeout=30)
    if t.error is not None:
        raise t.error


def publish(s: Settings, messages: Sequence[Message]) -> None:
    """Send every message to its input topic and wait until all are acknowledged."""
    producer = make_producer(s.kafka_bootstrap, linger_ms=20)
    topics = {"exposures": s.topic_exposures, "events": s.topic_events}
    for kind, key, value in messages:
        producer.send(topics[kind], value=value, key=key)
    producer.flush()
    producer.close()


def messages_applied(client: Client) -> int:
    """Messages the workers applied, over every partition (the ``messages`` counter)."""
    n = partition_count(client)
    return int(read_counters(client, range(n)).get("messages", 0)) if n else 0


def wait_applied(client: Client, total: int, worker: WorkerThread,
                 timeout: float = 120.0) -> None:
    """Until ``total`` messages are applied; fail at once if the worker thread stopped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if messages_applied(client) >= total:
            return
        if not worker.is_alive():
            raise AssertionError(f"the worker stopped: {worker.error!r}") from worker.error
        time.sleep(0.1)
    raise TimeoutError(f"only {messages_applied(client)} of {total} messages applied")


def read_dead_letters(s: Settings, expected: int, timeout: float = 60.0
                      ) -> list[dict[str, Any]]:
    """Every record of the dead-letter topic (waits for ``expected``, then one quiet second)."""
    consumer = make_consumer(s.kafka_bootstrap, None, max_poll_records=5000)
    try:
        tp = TopicPartition(s.topic_dead_letters, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        quiet_until: float | None = None
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                out.extend(msgspec.json.decode(r.value) for r in records)
            if len(out) >= expected:
                quiet_until = quiet_until or time.monotonic() + 1.0
                if time.monotonic() >= quiet_until:
                    break
        return out
    finally:
        consumer.close()
