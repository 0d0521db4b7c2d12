"""The child of :class:`stream.fetch_process.FetchProcess`: one KafkaConsumer, driven over a
socket by the ingest worker (:func:`main`, given the socket's descriptor and the worker's pid).

It does nothing on its own: it runs the commands it receives in the order they were sent and
polls only when asked, answering every poll with the records, the high watermarks and the
assignment. Rebalance callbacks (which kafka-python runs inside ``poll``) are forwarded to the
worker, and the child waits, running the worker's commands (its seeks), until the worker
acknowledges: exactly as an in-process listener would run inside ``poll``.

Messages (tuples; the first item names the kind):

* worker → child: ``config`` (the :func:`stream.kafka.make_consumer` arguments), ``poll``,
  ``seek``, ``seek_to_beginning``, ``pause``, ``resume``, ``commit``, ``ack``, ``close``;
* child → worker: ``ready``, ``records``, ``revoked``, ``assigned``, ``error``, ``closed``.

``records`` carries, per topic-partition, how many repositionings (seeks and pauses) of it the
child had run when it polled, so the worker can drop records polled before a seek it sent.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pickle
import signal
import sys
from collections import defaultdict
from multiprocessing.connection import Connection
from typing import Any

from stream.kafka import (
    ConsumerRebalanceListener,
    KafkaConsumer,
    OffsetAndMetadata,
    TopicPartition,
    make_consumer,
)

log = logging.getLogger("liftstream.fetch")

#: Commands that move a topic-partition's position (the worker counts them the same way).
REPOSITIONING = frozenset({"seek", "seek_to_beginning", "pause"})

Rows = tuple[str, int, int, list[int], list[bytes], list[bytes | None]]


class Child:
    """The consumer and the per-topic-partition repositioning counts."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.moves: dict[tuple[str, int], int] = defaultdict(int)
        self.consumer: KafkaConsumer | None = None
        self.closing = False

    def start(self, config: dict[str, Any]) -> None:
        listener = _Forward(self) if config.get("topics") else None
        self.consumer = make_consumer(listener=listener, **config)

    def assignment(self) -> list[tuple[str, int]]:
        assert self.consumer is not None
        return [(tp.topic, tp.partition) for tp in self.consumer.assignment()]

    def run_command(self, msg: tuple[Any, ...]) -> None:
        """One command that answers nothing (a failure is logged: an in-process call on a
        partition no longer assigned fails the same way and nothing was read for it)."""
        assert self.consumer is not None
        kind = msg[0]
        if kind in REPOSITIONING:
            for topic, partition in msg[1]:
                self.moves[topic, partition] += 1
        try:
            if kind == "seek":
                (topic, partition), = msg[1]
                self.consumer.seek(TopicPartition(topic, partition), msg[2])
            elif kind == "seek_to_beginning":
                self.consumer.seek_to_beginning(*_tps(msg[1]))
            elif kind == "pause":
                self.consumer.pause(*_tps(msg[1]))
            elif kind == "resume":
                self.consumer.resume(*_tps(msg[1]))
            elif kind == "commit":
                self.consumer.commit_async({TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                                            for (t, p), o in msg[1].items()})
            else:
                raise ValueError(f"unknown command {kind!r}")
        except Exception as exc:
            log.debug("fetch child: %s %s: %s", kind, msg[1:], exc)

    def poll(self, timeout_ms: int, max_records: int) -> None:
        assert self.consumer is not None
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        if self.closing:
            return
        rows: list[Rows] = []
        for tp, records in polled.items():
            rows.append((tp.topic, tp.partition, self.moves[tp.topic, tp.partition],
                         [r.offset for r in records], [r.value for r in records],
                         [r.key for r in records]))
        high = {(tp.topic, tp.partition): self.consumer.highwater(tp)
                for tp in self.consumer.assignment()}
        self.conn.send(("records", rows, high, self.assignment()))

    def wait_for_ack(self) -> None:
        """Run the worker's commands until it acknowledges the event sent."""
        while True:
            msg = self.conn.recv()
            if msg[0] == "ack":
                return
            if msg[0] == "close":  # answered once the poll under way returns
                self.closing = True
                return
            self.run_command(msg)

    def serve(self) -> None:
        while not self.closing:
            msg = self.conn.recv()
            if msg[0] == "poll":
                try:
                    self.poll(msg[1], msg[2])
                except Exception as exc:
                    self.conn.send(("error", _portable(exc)))
            elif msg[0] == "close":
                self.closing = True
            else:
                self.run_command(msg)
        assert self.consumer is not None
        try:
            self.consumer.close(autocommit=False)
        finally:
            self.conn.send(("closed",))


class _Forward(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, child: Child) -> None:
        self.child = child

    def _forward(self, kind: str, tps: Any) -> None:
        if self.child.closing:
            return
        self.child.conn.send((kind, [(tp.topic, tp.partition) for tp in tps],
                              self.child.assignment()))
        self.child.wait_for_ack()

    def on_partitions_revoked(self, revoked: Any) -> None:
        self._forward("revoked", revoked)

    def on_partitions_assigned(self, assigned: Any) -> None:
        self._forward("assigned", assigned)


def _tps(pairs: list[tuple[str, int]]) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t, p in pairs]


def _portable(exc: BaseException) -> BaseException:
    """The exception if it survives pickling, else a RuntimeError naming it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the worker dies (as its in-process consumer would)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def main(fd: int, parent: int) -> None:
    _die_with_parent()
    if os.getppid() != parent:  # the worker died before prctl
        return
    for sig in (signal.SIGINT, signal.SIGTERM):  # the worker stops this process itself
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    conn = Connection(fd)
    child = Child(conn)
    try:
        kind, config = conn.recv()
        assert kind == "config"
        try:
            child.start(config)
        except Exception as exc:
            conn.send(("error", _portable(exc)))
            return
        conn.send(("ready",))
        child.serve()
    except (EOFError, ConnectionError):  # the worker went away
        return

