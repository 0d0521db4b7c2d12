"""Memory of quantile histograms per (experiment, arm), in Redis and in Python.

Writes, through the real ``apply_batch.lua``, the histogram a worker would hold for ``n``
units of one arm spread over ``P`` partitions (``ls:{p}:h:<exp>:<arm>``, field
``<metric>:<bucket>``), and reads ``MEMORY USAGE`` of every key. Data: lognormal unit values
(σ = 1 and 2) with 30% of units at 0 (no event) and 2% negative (refunds).

Run: ``python -m bench.quantiles``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from estimators.quantiles import Histogram, bucket_field
from state import keys
from state.store import BatchWrite, PartitionStore
from workers.dev.embedded import start_redis


def _values(n: int, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.lognormal(3.0, sigma, n)
    v[rng.random(n) < 0.3] = 0.0
    v[rng.random(n) < 0.02] *= -1.0
    return v


def measure(n: int, sigma: float, accuracy: float, partitions: int) -> dict[str, Any]:
    server = start_redis()
    try:
        client = server.client()
        store = PartitionStore(client)
        x = _values(n, sigma, seed=n + partitions)
        part = np.arange(n) % partitions
        total, buckets = 0, 0
        for p in range(partitions):
            h = Histogram.of(x[part == p], accuracy)
            w = BatchWrite(p, store.claim(p))
            w.histograms[("exp", "control")] = {f"spend:{bucket_field(b)}": c
                                                for b, c in h.counts.items()}
            assert store.apply(w).applied
            total += int(client.memory_usage(keys.histograms(p, "exp", "control")) or 0)
            buckets += len(h.counts)
        return {"units": n, "sigma": sigma, "accuracy": accuracy, "partitions": partitions,
                "buckets_all_partitions": buckets,
                "buckets_one_pass": len(Histogram.of(x, accuracy).counts),
                "redis_bytes": total, "bytes_per_bucket": round(total / buckets, 1)}
    finally:
        server.stop()


def main() -> None:
    rows = [measure(n, s, a, p) for n in (10_000, 1_000_000) for s in (1.0, 2.0)
            for a in (0.01, 0.005) for p in (1, 8)]
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
