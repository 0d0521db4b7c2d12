"""History memory: Redis bytes of a 30-day experiment's tiered history (10 metrics × 3
treatments), recorded at the default 10 s interval with a simulated clock.

Run: ``python -m bench.history [--days 30] [--interval 10] [--steps 30]``; prints one JSON
object. Starts its own Redis. The experiment is :mod:`bench.api_load`'s (4 variations, 10
metrics, a covariate and an in-experiment candidate); its data grows in ``--steps`` steps
(the moment matrices of the first rows, written through the workers' script), and every
interval of the simulated days is claimed and recorded exactly as the API and the alerter do
(:func:`state.history.claim` + :func:`state.history.record`), with the result document of the
step current at that time. At the end: points, ``MEMORY USAGE`` of every history key, and a
check that every stored point equals the snapshot of the document of its step (exact) and
that the stored times are those the tiering rule selects.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from bench.api_load import EXPERIMENT, PARTITIONS, unit_rows, write_matrices
from state import history, keys
from state.registry import Registry
from state.results import experiment_document
from state.store import connect
from workers.dev.embedded import start_redis

DAY = 86400.0
T0 = 1_790_000_000.0  # the experiment's start, simulated


def run(days: float = 30.0, interval: float = 10.0, steps: int = 30,
        units: int = 60_000) -> dict[str, Any]:
    frame = unit_rows(units, seed=3)
    total = int(days * DAY / interval)
    per_step = max(1, total // steps)
    docs: list[dict[str, Any]] = []
    times: list[float] = []
    t_record = 0.0
    with start_redis() as server:
        client = connect(server.url)
        for k in range(total):
            now = T0 + k * interval
            if k % per_step == 0:  # new data arrived: the next step's document
                for p in range(PARTITIONS):
                    client.delete(keys.matrices(p, EXPERIMENT))
                rows = (len(docs) + 1) * units // (total // per_step + 1)
                write_matrices(client, frame.iloc[:rows])
                d = Registry(client).get(EXPERIMENT)
                assert d is not None
                docs.append(experiment_document(client, d))
            t1 = time.perf_counter()
            c = history.claim(client, EXPERIMENT, now, interval)
            assert c is not None
            assert history.record(client, c, history.snapshot(docs[-1], now), interval)
            t_record += time.perf_counter() - t1
            times.append(now)
        again = history.claim(client, EXPERIMENT, times[-1], interval)  # a second replica
        t1 = time.perf_counter()
        snaps = history.read(client, EXPERIMENT)
        read_s = time.perf_counter() - t1
        t1 = time.perf_counter()
        chart = history.read(client, EXPERIMENT, max_points=400)  # what the dashboard asks
        chart_s = time.perf_counter() - t1
        stored = history.stored_bytes(client, EXPERIMENT)
        levels = {f"l{i}": int(client.zcard(keys.history_level(EXPERIMENT, i)))
                  for i in range(history.LEVELS)}
    end = times[-1]
    expected = history.expected_times(history.tiers(interval), times, end)
    exact = all(s == history.snapshot(docs[int((s["ts"] - T0) / interval) // per_step],
                                      s["ts"]) for s in snaps)
    bound = history.point_bound(history.tiers(interval))
    return {"days": days, "interval_seconds": interval, "recorded": len(times),
            "metrics": 10, "treatments": 3, "data_steps": len(docs),
            "points": len(snaps), "points_bound": bound, "points_by_level": levels,
            "bytes": stored, "bytes_per_point": round(stored / len(snaps), 1),
            "bytes_bound": round(bound * stored / len(snaps)),
            "snapshot_json_bytes": len(json.dumps(snaps[-1], separators=(",", ":"))),
            "times_follow_the_rule": [s["ts"] for s in snaps] == expected,
            "points_exact": exact, "second_claim_refused": again is None,
            "record_ms": round(1000 * t_record / len(times), 3),
            "read_all_ms": round(1000 * read_s, 1), "chart_points": len(chart),
            "chart_span_days": round((chart[-1]["ts"] - chart[0]["ts"]) / DAY, 3),
            "read_chart_ms": round(1000 * chart_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    print(json.dumps(run(args.days, args.interval, args.steps), indent=1))


if __name__ == "__main__":
    main()
