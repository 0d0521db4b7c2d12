"""state.store against a real Redis: a batch applied atomically (matrices, offsets, counters,
unit states), fencing by epoch, and matrices merged over partitions in the packed format."""

from __future__ import annotations

import numpy as np
import pytest

from estimators.moments import MomentMatrix
from state import keys
from state.store import (
    BatchWrite,
    Client,
    PartitionStore,
    read_counters,
    read_matrices,
    stored_offsets_all,
)
from state.units import UnitState

COLUMNS = ("revenue", "visits")


def rows(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal([10.0, 3.0], [2.0, 1.0], size=(n, 2))


def write(store: PartitionStore, partition: int, epoch: int, x: np.ndarray, offset: int,
          expected: int | None = None) -> bool:
    m = MomentMatrix.from_rows(COLUMNS, x)
    w = BatchWrite(partition=partition, epoch=epoch,
                   offsets=[("exposures", expected, offset)],
                   matrices={("shop", "control"): (m.shift, m.sums)},
                   units={("shop", 0, f"u{partition}"): UnitState(0, 0, 1.0, (1.0, 2.0)).pack()},
                   counters={"messages": len(x), "shop:late_events": 1})
    return store.apply(w).applied


def test_batches_merge_over_partitions(redis_client: Client) -> None:
    store = PartitionStore(redis_client)
    a, b = rows(1, 200), rows(2, 300)
    assert write(store, 0, store.claim(0), a, 200)
    assert write(store, 1, store.claim(1), b, 300)
    merged = read_matrices(redis_client, "shop", COLUMNS, range(2))["control"]
    direct = MomentMatrix.from_rows(COLUMNS, np.vstack([a, b]))
    assert merged.n == 500
    np.testing.assert_allclose(merged.mean, direct.mean, rtol=1e-12)
    np.testing.assert_allclose(merged.cov, direct.cov, rtol=1e-10)
    assert stored_offsets_all(redis_client, range(2)) == {0: {"exposures": 200},
                                                          1: {"exposures": 300}}
    counters = read_counters(redis_client, range(2))
    assert counters["messages"] == 500 and counters["shop:late_events"] == 2
    states, held = store.read_batch_state(0, {"shop": ["u0", "nobody"]}, [], buckets=1)
    assert states == {("shop", "u0"): UnitState(0, 0, 1.0, (1.0, 2.0))} and held == {}


def test_a_fenced_owner_changes_nothing(redis_client: Client) -> None:
    store = PartitionStore(redis_client)
    old = store.claim(0)
    assert write(store, 0, old, rows(3, 50), 50)
    store.claim(0)  # a new owner
    assert not write(store, 0, old, rows(4, 50), 100, expected=50)
    assert read_matrices(redis_client, "shop", COLUMNS, [0])["control"].n == 50
    assert store.stored_offsets(0) == {"exposures": 50}


def test_matrix_of_another_layout_is_refused(redis_client: Client) -> None:
    store = PartitionStore(redis_client)
    assert write(store, 0, store.claim(0), rows(5, 10), 10)
    stored = redis_client.hget(keys.matrices(0, "shop"), "control")
    assert isinstance(stored, bytes)
    assert MomentMatrix.from_bytes(COLUMNS, stored).n == 10  # the one packed format
    with pytest.raises(ValueError, match="has 8 values; the definition's 3 columns need 13"):
        read_matrices(redis_client, "shop", (*COLUMNS, "extra"), [0])
