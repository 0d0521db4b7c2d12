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
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio.to_thread

V = TypeVar("V")


@dataclass
class _Entry(Generic[V]):
    value: V
    expires: float


def _retrieve(task: asyncio.Task[V]) -> None:
    """Mark a failed computation's exception as seen even if every waiter went away."""
    if not task.cancelled():
        task.exception()


class SingleFlightCache(Generic[V]):
    """Values by key for ``ttl`` seconds (0: no reuse, only sharing of concurrent calls)."""

    def __init__(self, ttl: float, max_entries: int = 1024,
                 clock: Callable[[], float] = time.monotonic, stale: bool = True) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
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
            value = await anyio.to_thread.run_sync(compute)
        finally:
            self._inflight.pop(key, None)
        if self.ttl > 0:
            self._entries[key] = _Entry(value, self.clock() + self.ttl)
            self._entries.move_to_end(key)
            self._prune()
        return value

    def _prune(self) -> None:
        now = self.clock()
        for k in [k for k, e in self._entries.items() if e.expires + self.ttl <= now]:
            del self._entries[k]
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def invalidate(self, predicate: Callable[[Hashable], bool]) -> None:
        """Drop cached values whose key satisfies ``predicate``."""
        for k in [k for k in self._entries if predicate(k)]:
            del self._entries[k]
