"""The ingest worker in a thread, and publishing test messages to the input topics."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar

from stream.kafka import make_producer
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
