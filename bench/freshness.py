"""Freshness: how old is the newest event visible to ``/results`` at a steady input rate.

A worker process consumes while a producer sends events stamped with their send time at a
steady rate; a sampler reads the ``last_event_ts`` counter that results report as freshness
(what the API reads, before its ≤ ``results_cache_seconds`` cache) every 50 ms; each
sample's age is
``now − last_event_ts``. Reports p50/p99 of the age and the rate actually achieved.
Also reports worker and Redis RSS over the run (the soak uses the same loop for minutes).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from state.definition import parse_definition
from state.registry import Registry
from state.store import connect, partition_count, read_counters
from stream.kafka import ensure_topics, make_producer
from stream.messages import Event, Exposure, encode_event, encode_exposure
from workers.dev.embedded import start_broker, start_redis
from workers.settings import Settings, to_env

DEFINITION = {"id": "fresh", "variations": ["control", "treatment"],
              "metrics": [{"name": "clicks", "event": "click", "aggregate": "count"}],
              "covariates": ["x"]}


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run(rate: float, seconds: float, units: int = 50_000) -> dict[str, Any]:
    with start_broker() as broker, start_redis() as server:
        s = replace(Settings(), kafka_bootstrap=broker.bootstrap, redis_url=server.url,
                    topic_exposures="f.exposures", topic_events="f.events",
                    topic_dead_letters="f.dead", partitions=4, batch_size=2000,
                    batch_timeout_ms=50)
        ensure_topics(s.kafka_bootstrap, {s.topic_exposures: 4, s.topic_events: 4})
        client = connect(s.redis_url)
        Registry(client).create(parse_definition(DEFINITION))
        producer = make_producer(s.kafka_bootstrap, linger_ms=5)
        now = time.time()
        for i in range(units):  # expose everyone first so events count
            u = f"u{i}"
            producer.send(s.topic_exposures, key=u.encode(), value=encode_exposure(
                Exposure("fresh", u, "control" if i % 2 else "treatment", now - 1.0,
                         {"x": float(i % 7)})))
        producer.flush()
        exe = Path(sys.executable).parent / "liftstream"
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("LIFTSTREAM_")},
               **to_env(s)}
        worker = subprocess.Popen([str(exe), "worker", "--name", "fresh"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while int(read_counters(client, range(max(1, partition_count(client))))
                  .get("messages", 0)) < units:
            time.sleep(0.1)
        stop = threading.Event()
        sent = [0]

        def produce() -> None:
            rng = np.random.default_rng(0)
            t0 = time.monotonic()
            i = 0
            while not stop.is_set():
                u = f"u{int(rng.integers(0, units))}"
                producer.send(s.topic_events, key=u.encode(), value=encode_event(
                    Event(u, "click", time.time(), 1.0, None, f"e{i}")))
                i += 1
                if i % 100 == 0:
                    ahead = i / rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
            sent[0] = i
            producer.flush()

        p = threading.Thread(target=produce, daemon=True)
        p.start()
        ages, rss_worker, rss_redis = [], [], []
        t0 = time.monotonic()
        time.sleep(2.0)  # warm-up
        while time.monotonic() - t0 < seconds:
            last = read_counters(client, range(partition_count(client))).get("last_event_ts")
            if last:
                ages.append(time.time() - float(last))
            rss_worker.append(_rss(worker.pid))
            rss_redis.append(_rss(server.pid or 0))
            time.sleep(0.05)
        stop.set()
        p.join()
        elapsed = time.monotonic() - t0
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        producer.close()
    a = np.array(ages)
    return {"target_events_per_s": rate, "achieved_events_per_s": round(sent[0] / elapsed),
            "seconds": round(elapsed, 1), "samples": len(a),
            "age_p50_s": round(float(np.percentile(a, 50)), 3),
            "age_p99_s": round(float(np.percentile(a, 99)), 3),
            "worker_rss_mb": [round(rss_worker[0] / 2**20, 1), round(rss_worker[-1] / 2**20, 1)],
            "redis_rss_mb": [round(rss_redis[0] / 2**20, 1), round(rss_redis[-1] / 2**20, 1)],
            "rss_trend_mb_per_min": _trend(rss_worker, elapsed)}


def _trend(samples: list[int], seconds: float) -> float:
    if len(samples) < 3:
        return 0.0
    x = np.linspace(0.0, seconds / 60.0, len(samples))
    slope = float(np.polyfit(x, np.array(samples) / 2**20, 1)[0])
    return round(slope, 2)


if __name__ == "__main__":
    print(json.dumps(run(rate=5000.0, seconds=20.0), indent=1))
