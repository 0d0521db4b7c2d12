"""The batch script refuses zombie and replayed batches and changes nothing (DESIGN §2)."""

from __future__ import annotations

import numpy as np
import redis

from state import keys
from state.store import BatchWrite, PartitionStore


def _batch(p: int, epoch: int, first: int, nxt: int, value: float) -> BatchWrite:
    """A batch of offsets ``first..nxt`` whose owner believes ``first`` is stored."""
    w = BatchWrite(p, epoch)
    w.offsets = [("events", first or None, nxt)]
    shift = np.array([1.0])
    delta = np.array([[1.0, value - 1.0], [value - 1.0, (value - 1.0) ** 2]])
    w.matrices[("exp", "control")] = (shift, delta)
    w.units[("exp", 0, f"u{first}")] = b"state"
    w.counters["messages"] = nxt - first
    return w


def test_zombie_and_replayed_batches_are_refused_and_counted(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    store = PartitionStore(client)
    old = store.claim(3)
    assert store.apply(_batch(3, old, 0, 10, 2.0)).applied
    new = store.claim(3)  # a new owner fences the old one
    before = client.hgetall(keys.matrices(3, "exp"))
    zombie = store.apply(_batch(3, old, 10, 20, 5.0))
    assert not zombie.applied and zombie.reason == "epoch"
    replay = store.apply(_batch(3, new, 5, 20, 5.0))  # overlaps offsets already applied
    assert not replay.applied and replay.reason == "offset"
    gap = store.apply(_batch(3, new, 15, 20, 5.0))  # Redis lost its tail: owner is ahead
    assert not gap.applied and gap.reason == "offset"
    assert client.hgetall(keys.matrices(3, "exp")) == before
    assert client.hget(keys.units(3, "exp", 0), "u10") is None
    assert store.stored_offsets(3) == {"events": 10}
    counters = client.hgetall(keys.counters(3))
    assert counters[b"refused_epoch"] == b"1" and counters[b"refused_offset"] == b"2"
    assert counters[b"messages"] == b"10"
    assert store.apply(_batch(3, new, 10, 20, 5.0)).applied
    assert store.stored_offsets(3) == {"events": 20}
    blob = client.hget(keys.matrices(3, "exp"), "control")
    flat = np.frombuffer(blob, dtype="<f8")
    assert flat[1] == 2.0  # n: two batches of one unit each
    assert flat[2] == (2.0 - 1.0) + (5.0 - 1.0)


def test_shift_mismatch_is_refused_before_any_write(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    store = PartitionStore(client)
    e = store.claim(1)
    assert store.apply(_batch(1, e, 0, 1, 2.0)).applied
    bad = _batch(1, e, 1, 2, 3.0)
    bad.matrices[("exp", "control")] = (np.array([7.0]), np.zeros((2, 2)))
    out = store.apply(bad)
    assert not out.applied and out.reason == "shift"
    assert client.hget(keys.units(1, "exp", 0), "u1") is None
    assert store.stored_offsets(1) == {"events": 1}
