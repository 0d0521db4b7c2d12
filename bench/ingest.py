"""Ingest benchmarks: worker vs a bare kafka-python consumer, and Redis bytes per unit.

Run: ``python -m bench.ingest [--units N] [--memory-units N] [--memory-only]``. Starts its own
broker and Redis (only Redis with ``--memory-only``).
Both consumers read the same topics in the same run, so the ratio is fair on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import ingest_profile
from state.definition import parse_definition
from state.layout import ExperimentLayout
from state.registry import Registry
from state.store import PartitionStore, connect, partition_count, read_counters
from stream.batch import BatchBuilder, RawRecord, Topics
from stream.kafka import TopicPartition, ensure_topics, make_consumer, make_producer
from stream.messages import Event, Exposure, encode_event, encode_exposure
from workers.dev.embedded import start_broker, start_redis
from workers.ingest import IngestWorker
from workers.settings import Settings, to_env

DEFINITION = {"id": "bench", "variations": ["control", "treatment"],
              "metrics": [{"name": "revenue", "event": "purchase", "aggregate": "sum"}],
              "covariates": ["pre_revenue"]}


def messages(units: int, seed: int = 0) -> list[tuple[str, bytes, bytes]]:
    """One exposure and one purchase event per unit: 1 metric + 1 covariate."""
    rng = np.random.default_rng(seed)
    out = []
    pre = rng.gamma(2.0, 10.0, units)
    value = rng.gamma(2.0, 5.0, units)
    for i in range(units):
        u = f"u{i}"
        ts = 1.7e9 + i * 1e-3
        out.append(("exposures", u.encode(), encode_exposure(
            Exposure("bench", u, "control" if i % 2 else "treatment", ts,
                     {"pre_revenue": float(pre[i])}))))
        out.append(("events", u.encode(), encode_event(
            Event(u, "purchase", ts + 1.0, float(value[i]), None, f"{u}:p"))))
    return out


def bare_consumer_rate(bootstrap: str, topics: list[str], partitions: int, total: int) -> float:
    consumer = make_consumer(bootstrap, None, max_poll_records=5000)
    consumer.assign([TopicPartition(t, p) for t in topics for p in range(partitions)])
    seen = 0
    t0 = time.perf_counter()
    while seen < total:
        for records in consumer.poll(timeout_ms=500, max_records=5000).values():
            seen += len(records)
    rate = total / (time.perf_counter() - t0)
    consumer.close()
    return rate


def worker_rate(settings: Settings, total: int) -> float:
    worker = IngestWorker(settings, "bench-worker")
    first: list[float] = []
    client = connect(settings.redis_url)

    def on_batch(p: int, n: int) -> None:
        if not first:
            first.append(time.perf_counter())

    t = threading.Thread(target=worker.run, kwargs={"on_batch": on_batch}, daemon=True)
    t.start()
    while True:
        n = partition_count(client)
        done = int(read_counters(client, range(n)).get("messages", 0)) if n else 0
        if done >= total:
            break
        time.sleep(0.05)
    end = time.perf_counter()
    worker.stop_event.set()
    t.join(timeout=30)
    return total / (end - first[0])


def memory_per_unit(redis_url: str, units: int, partitions: int, buckets: int) -> dict[str, Any]:
    """Redis bytes per (experiment, unit): apply batches directly (no Kafka) and read INFO."""
    client = connect(redis_url)
    client.flushall()
    d = parse_definition(DEFINITION)
    Registry(client).create(d)
    store = PartitionStore(client)
    store.set_partition_count(partitions)
    builder = BatchBuilder(store, Topics("exposures", "events"), buckets, 600.0, 100_000)
    builder.set_experiments({d.id: ExperimentLayout.of(d)})
    base = int(client.info("memory")["used_memory"])
    by_partition: dict[int, list[RawRecord]] = {p: [] for p in range(partitions)}
    offsets = {(k, p): 0 for k in ("exposures", "events") for p in range(partitions)}
    for kind, key, value in messages(units, seed=1):
        p = hash(key) % partitions
        by_partition[p].append(RawRecord(kind, offsets[(kind, p)], value))
        offsets[(kind, p)] += 1
    t0 = time.perf_counter()
    for p, records in by_partition.items():
        epoch = store.claim(p)
        for k in range(0, len(records), 5000):
            out = store.apply(builder.build(p, epoch, records[k:k + 5000]).write)
            assert out.applied, out
    seconds = time.perf_counter() - t0
    used = int(client.info("memory")["used_memory"]) - base
    return {"units": units, "partitions": partitions, "buckets": buckets,
            "bytes_per_unit": used / units, "apply_msgs_per_s": 2 * units / seconds}


def _publish(s: Settings, msgs: list[tuple[str, bytes, bytes]]) -> None:
    producer = make_producer(s.kafka_bootstrap, linger_ms=20)
    topics = {"exposures": s.topic_exposures, "events": s.topic_events}
    for kind, key, value in msgs:
        producer.send(topics[kind], value=value, key=key)
    producer.flush()
    producer.close()


def _fresh_settings(bootstrap: str, redis_url: str, name: str, partitions: int) -> Settings:
    s = Settings(kafka_bootstrap=bootstrap, redis_url=redis_url,
                 topic_exposures=f"{name}.exposures", topic_events=f"{name}.events",
                 topic_dead_letters=f"{name}.dead", group_id=f"{name}-group",
                 partitions=partitions, batch_size=5000, batch_timeout_ms=100)
    ensure_topics(s.kafka_bootstrap, {s.topic_exposures: s.partitions,
                                      s.topic_events: s.partitions})
    return s


def process_rate(s: Settings, total: int, workers: int) -> float:
    """Messages/s of ``workers`` worker processes, from the first applied batch to the last."""
    client = connect(s.redis_url)
    client.flushall()
    Registry(client).create(parse_definition(DEFINITION))
    exe = Path(sys.executable).parent / "liftstream"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LIFTSTREAM_")},
           **to_env(s)}
    procs = [subprocess.Popen([str(exe), "worker", "--name", f"w{i}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for i in range(workers)]
    try:
        start = None
        while True:
            n = partition_count(client)
            done = int(read_counters(client, range(n)).get("messages", 0)) if n else 0
            if done and start is None:
                start = (time.perf_counter(), done)
            if done >= total:
                break
            time.sleep(0.02)
        assert start is not None
        return (total - start[1]) / (time.perf_counter() - start[0])
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)


def throughput(units: int, partitions: int = 4, scaling: bool = False,
               profiled: bool = False) -> dict[str, Any]:
    """Worker vs bare consumer on the same topics, same run (and 1 vs 2 worker processes,
    and a py-spy profile of one worker process)."""
    with start_broker() as broker, start_redis() as redis_server:
        s = _fresh_settings(broker.bootstrap, redis_server.url, "b", partitions)
        client = connect(s.redis_url)
        Registry(client).create(parse_definition(DEFINITION))
        msgs = messages(units)
        _publish(s, msgs)
        topics = [s.topic_exposures, s.topic_events]
        bare = bare_consumer_rate(s.kafka_bootstrap, topics, s.partitions, len(msgs))
        worker = worker_rate(s, len(msgs))
        out: dict[str, Any] = {"messages": len(msgs), "bare_consumer_msgs_per_s": round(bare),
                               "worker_msgs_per_s": round(worker),
                               "ratio": round(worker / bare, 3)}
        if scaling:
            rates = {}
            for n in (1, 2, 3):
                s_n = _fresh_settings(broker.bootstrap, redis_server.url, f"s{n}", partitions)
                _publish(s_n, msgs)
                rates[str(n)] = round(process_rate(s_n, len(msgs), n))
            out["scaling"] = rates
            out["two_over_one"] = round(rates["2"] / rates["1"], 3)
        if profiled:
            s_p = _fresh_settings(broker.bootstrap, redis_server.url, "prof", partitions)
            client.flushall()
            Registry(client).create(parse_definition(DEFINITION))
            _publish(s_p, msgs)
            out["profile"] = ingest_profile.profile(s_p, len(msgs))
        return out


def memory_only(units: int) -> dict[str, Any]:
    with start_redis() as redis_server:
        return memory_per_unit(redis_server.url, units, 12, 4096)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=50_000)
    ap.add_argument("--memory-units", type=int, default=100_000)
    ap.add_argument("--scaling", action="store_true", help="also 1, 2 and 3 worker processes")
    ap.add_argument("--profile", action="store_true", help="also a py-spy profile")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory figure")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the memory figure (no broker, no throughput runs)")
    args = ap.parse_args()
    out: dict[str, Any] = {}
    if not args.memory_only:
        out["throughput"] = throughput(args.units, scaling=args.scaling,
                                       profiled=args.profile)
    if not args.no_memory:
        out["memory"] = memory_only(args.memory_units)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
