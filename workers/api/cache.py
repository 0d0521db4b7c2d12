"""A short-lived, single-flight cache for the API's expensive reads.

Within ``ttl`` seconds of a computation finishing, requests for the same key get its value
without touching Redis; requests that arrive while a computation for the key is running wait
for that one computation instead of starting their own. So any number of polling dashboards
cost one Redis read per key and interval. The computation runs in a worker thread as its own
task: a client that disconnects does not cancel it for the others.

Stale-while-revalidate: in the ``ttl`` seconds after a value expired, a request gets that value
at once while one refresh runs in the background, so a busy key never makes its pollers wait
for the recomputation. A value is therefore at most ``2·ttl`` (plus one computation) old; a
key nobody asked for during that window is recomputed before answering.

Bounded: at most ``max_entries`` values and ``max_bytes`` (as charged by ``size_of``) are kept,
the least recently computed dropped first; a value larger than ``max_bytes`` alone is returned
to its waiters but not kept. A :class:`ComputeGate` shared by caches bounds the computations:
``threads`` run at once (worker threads, never the event loop) and ``queue`` more may wait;
beyond, :class:`Busy` is raised at once instead of queueing unbounded work.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio
import anyio.to_thread

V = TypeVar("V")


class Busy(Exception):
    """Too many computations are running or waiting; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__("too many computations in progress")
        self.retry_after = retry_after


class ComputeGate:
    """At most ``threads`` computations at once and ``queue`` more waiting for a thread."""

    def __init__(self, threads: int = 1, queue: int = 8) -> None:
        self.threads = threads
        self.queue = queue
        self.pending = 0  # running + waiting (only touched on the event loop)
        self.refused = 0
        self._limiter: anyio.CapacityLimiter | None = None

    def admit(self) -> None:
        """Count one more computation, or raise :class:`Busy` when the gate is full."""
        if self.pending >= self.threads + self.queue:
            self.refused += 1
            raise Busy()
        self.pending += 1

    async def run(self, compute: Callable[[], V]) -> V:
        """Run an admitted ``compute`` in a worker thread (one of ``threads``)."""
        try:
            return await self.run_admitted(compute)
        finally:
            self.pending -= 1

    async def run_admitted(self, compute: Callable[[], V]) -> V:
        """Run ``compute`` in one of the ``threads`` (waiting for one; no admission check:
        for cheap follow-up work of a request already answered from the cache)."""
        if self._limiter is None:  # created lazily: it needs the running event loop
            self._limiter = anyio.CapacityLimiter(self.threads)
        return await anyio.to_thread.run_sync(compute, limiter=self._limiter)


@dataclass
class _Entry(Generic[V]):
    value: V
    expires: float
    size: int = 0


def _retrieve(task: asyncio.Task[V]) -> None:
    """Mark a failed computation's exception as seen even if every waiter went away."""
    if not task.cancelled():
        task.exception()


class SingleFlightCache(Generic[V]):
    """Values by key for ``ttl`` seconds (0: no reuse, only sharing of concurrent calls)."""

    def __init__(self, ttl: float, max_entries: int = 1024,
                 clock: Callable[[], float] = time.monotonic, stale: bool = True, *,
                 max_bytes: int | None = None, size_of: Callable[[V], int] | None = None,
                 gate: ComputeGate | None = None) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size_of = size_of
        self.gate = gate if gate is not None else ComputeGate(threads=4, queue=1 << 30)
        self.bytes = 0
        self.evictions = 0
        self.clock = clock
        self.stale = stale
        self._entries: OrderedDict[Hashable, _Entry[V]] = OrderedDict()
        self._inflight: dict[Hashable, asyncio.Task[V]] = {}
        self.hits = 0
        self.stale_hits = 0
        self.misses = 0
        self.shared = 0

    async def get(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The cached value of ``key``, or ``compute()`` run once in a thread for all callers."""
        now = self.clock()
        entry = self._entries.get(key)
        if entry is not None and entry.expires > now:
            self.hits += 1
            return entry.value
        task = self._inflight.get(key)
        if task is None:
            if entry is not None and self._servable(entry, now):
                try:
                    self.gate.admit()
                except Busy:  # no refresh now: the stale value is still servable
                    self.stale_hits += 1
                    return entry.value
            else:
                self.gate.admit()  # Busy propagates: nothing to answer with
            self.misses += 1
            task = asyncio.get_running_loop().create_task(self._run(key, compute))
            task.add_done_callback(_retrieve)
            self._inflight[key] = task
        elif entry is None or not self._servable(entry, now):
            self.shared += 1
        if entry is not None and self._servable(entry, now):
            self.stale_hits += 1
            return entry.value
        return await asyncio.shield(task)

    def _servable(self, entry: _Entry[V], now: float) -> bool:
        return self.stale and self.ttl > 0 and now < entry.expires + self.ttl

    async def _run(self, key: Hashable, compute: Callable[[], V]) -> V:
        try:
            value = await self.gate.run(compute)
        finally:
            self._inflight.pop(key, None)
        if self.ttl > 0:
            size = self.size_of(value) if self.size_of is not None else 0
            self._drop(key)
            if self.max_bytes is None or size <= self.max_bytes:
                self._entries[key] = _Entry(value, self.clock() + self.ttl, size)
                self.bytes += size
            self._prune()
        return value

    def _drop(self, key: Hashable) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size

    def _prune(self) -> None:
        now = self.clock()
        for k in [k for k, e in self._entries.items() if e.expires + self.ttl <= now]:
            self._drop(k)
        while self._entries and (len(self._entries) > self.max_entries or (
                self.max_bytes is not None and self.bytes > self.max_bytes)):
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.size
            self.evictions += 1

    def __len__(self) -> int:
        return len(self._entries)

    def invalidate(self, predicate: Callable[[Hashable], bool]) -> None:
        """Drop cached values whose key satisfies ``predicate``."""
        for k in [k for k in self._entries if predicate(k)]:
            self._drop(k)
