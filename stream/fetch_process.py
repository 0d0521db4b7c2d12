"""The ingest worker's consumer in a process of its own, so that polling (kafka-python's
record parsing and CRC checks, ~60% of a worker's CPU) runs on one core while the worker
builds and applies on another.

:class:`FetchProcess` offers the part of ``KafkaConsumer`` the worker uses (``poll``,
``seek``, ``seek_to_beginning``, ``pause``, ``resume``, ``highwater``, ``assignment``,
``commit_async``, ``close``) and drives a consumer in :mod:`stream.fetch_child`. It keeps
an in-process consumer's semantics:

* commands reach the child in the order they are made, and the child polls only when asked;
  one poll is asked ahead, so the child fetches batch k+1 while the worker handles batch k;
* records polled before a seek (or pause) the worker made since are dropped: each answer says
  how many repositionings of a topic-partition the child had run when it polled, and only
  records polled after all of those the worker made are returned (the seek reads them again);
* rebalance callbacks run the worker's listener inside :meth:`FetchProcess.poll`, and the
  child waits for it (and runs its seeks) before fetching, as kafka-python runs a listener
  inside ``poll``;
* the child dies with the worker (``PR_SET_PDEATHSIG``); if the child dies first,
  :meth:`FetchProcess.poll` raises :class:`FetchProcessDied`.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from itertools import repeat
from multiprocessing.connection import Connection
from typing import Any

from stream.batch import RawRecord
from stream.fetch_child import REPOSITIONING
from stream.kafka import ConsumerRebalanceListener, OffsetAndMetadata, TopicPartition

log = logging.getLogger("liftstream.fetch")

START_TIMEOUT_S = 60.0  # the child imports kafka-python and connects
CLOSE_TIMEOUT_S = 15.0  # leaving the group; then the child is killed
# The child imports what the worker would (same interpreter, environment and directory); the
# directory holding this package is a fallback at the end of the path, never ahead of it.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CHILD_MAIN = (f"import sys; sys.path.append({_ROOT!r}); from stream.fetch_child import main; "
               "main(int(sys.argv[1]), int(sys.argv[2]))")


class FetchProcessDied(RuntimeError):
    """The fetch process exited (or its socket closed) while the worker used it."""


class FetchProcess:
    """A KafkaConsumer in a child process (arguments as :func:`stream.kafka.make_consumer`)."""

    def __init__(self, *, listener: ConsumerRebalanceListener | None = None,
                 **config: Any) -> None:
        self.listener = listener
        ours, theirs = socket.socketpair()
        with theirs:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_MAIN, str(theirs.fileno()), str(os.getpid())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        self._conn = Connection(ours.detach())
        self._moves: dict[tuple[str, int], int] = defaultdict(int)
        self._high: dict[tuple[str, int], int | None] = {}
        self._assigned: set[tuple[str, int]] = set()
        self._asked: tuple[int, int] | None = None
        try:
            self._send(("config", config))
            self._expect_ready()
        except BaseException:
            self._kill()
            raise

    @property
    def pid(self) -> int:
        return self._proc.pid

    # -- commands (answered by nothing; in order) ------------------------------------------
    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._reposition("seek", [tp], offset)

    def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self._reposition("seek_to_beginning", tps)

    def pause(self, *tps: TopicPartition) -> None:
        self._reposition("pause", tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._send(("resume", [(tp.topic, tp.partition) for tp in tps]))

    def commit_async(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None:
        self._send(("commit", {(tp.topic, tp.partition): om.offset
                               for tp, om in offsets.items()}))

    def _reposition(self, kind: str, tps: Iterable[TopicPartition], *args: Any) -> None:
        pairs = [(tp.topic, tp.partition) for tp in tps]
        assert kind in REPOSITIONING
        for pair in pairs:
            self._moves[pair] += 1
        self._send((kind, pairs, *args))

    # -- what the last answer said ---------------------------------------------------------
    def highwater(self, tp: TopicPartition) -> int | None:
        return self._high.get((tp.topic, tp.partition))

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(t, p) for t, p in self._assigned}

    # -- poll ------------------------------------------------------------------------------
    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[RawRecord]]:
        """The records of the poll asked ahead (waiting up to ``timeout_ms`` for it), then
        the next poll is asked; rebalance events met on the way run the listener."""
        if self._asked is None:
            self._ask(timeout_ms, max_records)
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            remaining = deadline - time.monotonic()
            if not self._readable(max(0.0, remaining)):
                return {}
            msg = self._recv()
            if msg[0] == "records":
                self._asked = None
                self._ask(timeout_ms, max_records)
                return self._records(msg[1], msg[2], msg[3])
            self._event(msg)

    def _ask(self, timeout_ms: int, max_records: int) -> None:
        self._asked = (timeout_ms, max_records)
        self._send(("poll", timeout_ms, max_records))

    def _records(self, rows: list[Any], high: dict[tuple[str, int], int | None],
                 assigned: list[tuple[str, int]]) -> dict[TopicPartition, list[RawRecord]]:
        self._high = high
        self._assigned = set(assigned)
        out: dict[TopicPartition, list[RawRecord]] = {}
        for topic, partition, moves, offsets, values, keys in rows:
            if moves != self._moves[topic, partition]:
                continue  # polled before a seek still on its way: the seek reads it again
            out[TopicPartition(topic, partition)] = list(
                map(RawRecord, repeat(topic), offsets, values, keys))
        return out

    def _event(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "error":  # the poll asked failed in the child: ask again next time
            self._asked = None
            raise msg[1]
        if kind not in ("revoked", "assigned"):
            raise FetchProcessDied(f"fetch process: unexpected message {kind!r}")
        self._assigned = set(msg[2])
        tps = {TopicPartition(t, p) for t, p in msg[1]}
        try:
            if self.listener is not None and kind == "revoked":
                self.listener.on_partitions_revoked(tps)
            elif self.listener is not None:
                self.listener.on_partitions_assigned(tps)
        except Exception as exc:  # as kafka-python treats a failing listener: logged
            log.error("rebalance listener failed on %s %s: %s", kind, sorted(msg[1]), exc)
        finally:
            self._send(("ack",))

    # -- the socket ------------------------------------------------------------------------
    def _send(self, msg: tuple[Any, ...]) -> None:
        try:
            self._conn.send(msg)
        except (OSError, ValueError) as exc:
            raise FetchProcessDied(f"fetch process {self._proc.pid} gone: {exc}") from exc

    def _recv(self) -> tuple[Any, ...]:
        try:
            msg: tuple[Any, ...] = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise FetchProcessDied(f"fetch process {self._proc.pid} gone "
                                   f"(exit code {self._proc.poll()})") from exc
        return msg

    def _readable(self, timeout: float) -> bool:
        try:
            return self._conn.poll(timeout)
        except (EOFError, OSError) as exc:
            raise FetchProcessDied(f"fetch process {self._proc.pid} gone") from exc

    def _expect_ready(self) -> None:
        if not self._readable(START_TIMEOUT_S):
            raise FetchProcessDied(f"fetch process not ready in {START_TIMEOUT_S:.0f}s")
        msg = self._recv()
        if msg[0] == "error":
            raise msg[1]
        if msg[0] != "ready":
            raise FetchProcessDied(f"fetch process: unexpected message {msg[0]!r}")

    # -- the end ---------------------------------------------------------------------------
    def close(self) -> None:
        """Leave the group (no commit: the durable offsets live in Redis) and end the child
        (killed after ``CLOSE_TIMEOUT_S``); answers and events on their way are dropped."""
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        try:
            self._send(("close",))
            while time.monotonic() < deadline:
                if not self._readable(max(0.0, deadline - time.monotonic())):
                    break
                msg = self._recv()
                if msg[0] == "closed":
                    break
                if msg[0] in ("revoked", "assigned"):
                    self._send(("ack",))
        except FetchProcessDied:
            pass
        self._kill(max(0.1, deadline - time.monotonic()))

    def _kill(self, grace: float = 0.0) -> None:
        try:
            self._proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._conn.close()

