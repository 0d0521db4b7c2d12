"""Reliability runs: faults while a stream flows; nothing may be lost or counted twice.

Each scenario publishes a synthetic experiment (known unit rows), injects its fault, waits
until every message is applied, and compares

* events in (distinct valid ``click`` events published) with events counted (the ``clicks``
  count metric summed over arms from Redis), and
* the live result document with ``liftstream analyze`` of the unit rows (1e-9 relative).

Scenarios: worker SIGKILLs, fetch-process SIGKILLs, Redis SIGKILL + AOF restart, duplicated
and reordered delivery, rebalance 1 → 3 → 1 workers, 10,000 fuzzed messages. Prints
``events in / counted / lost / double-counted`` per scenario; exits 1 on any loss, double
count or disagreement. Run: ``python -m bench.chaos [--quick]`` (``make chaos``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from estimators.compare import document_differences
from state.definition import parse_definition
from state.registry import Registry
from state.results import experiment_document, experiment_matrices
from state.store import connect, partition_count, read_counters
from stream.kafka import TopicPartition, ensure_topics, make_consumer, make_producer
from stream.messages import Event, Exposure, encode_event, encode_exposure
from workers.batch.analyze import AnalyzeRequest, analyze_frame
from workers.batch.columns import MetricColumn
from workers.dev.embedded import Broker, RedisServer, start_broker, start_redis
from workers.settings import Settings, to_env

Message = tuple[str, bytes, bytes]
ARMS = ("control", "t1", "t2")
DEFINITION = {
    "id": "chaos", "variations": list(ARMS),
    "metrics": [{"name": "clicks", "event": "click", "aggregate": "count"},
                {"name": "revenue", "event": "purchase", "aggregate": "sum", "cap": 50},
                {"name": "converted", "event": "purchase", "aggregate": "binary"}],
    "covariates": ["x"],
}


@dataclass(frozen=True)
class Workload:
    frame: pd.DataFrame  # unit rows: the truth
    messages: list[Message]  # valid messages, in publish order (with duplicates)
    clicks: int  # distinct valid click events
    invalid: int = 0  # malformed messages mixed in


def workload(units: int, seed: int, duplicate: float = 0.05, fuzz: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    arm = rng.integers(0, 3, units)
    x = rng.normal(size=units)
    clicks = rng.poisson(np.exp(0.3 * x) * (1 + 0.1 * arm))
    buys = rng.random(units) < 0.2 + 0.05 * arm
    revenue = np.where(buys, rng.gamma(2.0, 20.0, units), 0.0)
    msgs: list[Message] = []
    for i in range(units):
        u = f"u{seed}-{i}"
        ts = 1.7e9 + i * 1e-3
        key = u.encode()
        msgs.append(("exposures", key, encode_exposure(
            Exposure("chaos", u, ARMS[arm[i]], ts, {"x": float(x[i])}))))
        for k in range(int(clicks[i])):
            msgs.append(("events", key, encode_event(Event(u, "click", ts + 1 + k, 1.0, None,
                                                           f"{u}:c{k}"))))
        if buys[i]:
            msgs.append(("events", key, encode_event(Event(u, "purchase", ts + 2,
                                                           float(revenue[i]), None,
                                                           f"{u}:p"))))
    order = rng.permutation(len(msgs))
    msgs = [msgs[k] for k in order]
    for k in rng.choice(len(msgs), int(duplicate * len(msgs)), replace=False):
        msgs.insert(int(rng.integers(k, len(msgs) + 1)), msgs[k])
    for _ in range(fuzz):
        msgs.insert(int(rng.integers(0, len(msgs) + 1)), _garbage(rng))
    frame = pd.DataFrame({"arm": np.array(ARMS)[arm], "x": x, "clicks": clicks.astype(float),
                          "revenue": np.minimum(revenue, 50.0),
                          "converted": buys.astype(float)})
    return Workload(frame, msgs, int(clicks.sum()), fuzz)


def _garbage(rng: np.random.Generator) -> Message:
    kind = "exposures" if rng.random() < 0.5 else "events"
    n = int(rng.integers(0, 12))
    pick = int(rng.integers(0, n + 1)) if n else 0
    samples: list[bytes] = [
        bytes(rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8)),
        b'{"experiment": "chaos", "unit": 5, "variation": "t1", "ts": 1700000000}',
        b'{"unit": "u", "event": "click", "ts": NaN}',
        b'{"unit": "u", "event": "click", "ts": "yesterday"}',
        b'{"experiment": "nope", "unit": "u", "variation": "t1", "ts": 1700000000}',
        b'{"experiment": "chaos", "unit": "u", "variation": "t9", "ts": 1700000000}',
        b'{"unit": "' + b"x" * 5000 + b'", "event": "click", "ts": 1700000000}',
        b"[" * 5000,
        b'{"unit": "u", "event": "click", "ts": 1700000000, "value": 1e400}',
        b'\xff\xfe{"unit": "u"}',
        b'{"unit": "u", "event": "click", "ts": 1700000000, "experiment": "ghost"}',
        b"null",
        b'{"experiment": "chaos", "unit": "u", "variation": "t1", "ts": 1700000000,'
        b' "covariates": {"x": "high"}}',
    ]
    return kind, f"g{pick}".encode(), samples[int(rng.integers(0, len(samples)))]


class Cluster:
    """Topics, settings and worker processes of one scenario."""

    def __init__(self, broker: Broker, redis_server: RedisServer, name: str) -> None:
        self.redis_server = redis_server
        self.settings = replace(
            Settings(), kafka_bootstrap=broker.bootstrap, redis_url=redis_server.url,
            topic_exposures=f"{name}.exposures", topic_events=f"{name}.events",
            topic_dead_letters=f"{name}.dead", topic_training=f"{name}.training",
            group_id=f"{name}-group", partitions=4, batch_size=2000, batch_timeout_ms=100)
        ensure_topics(broker.bootstrap, {self.settings.topic_exposures: 4,
                                         self.settings.topic_events: 4})
        self.client = connect(redis_server.url)
        self.client.flushall()
        Registry(self.client).create(parse_definition(DEFINITION))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("LIFTSTREAM_")},
                    **to_env(self.settings)}

    def start_worker(self) -> subprocess.Popen[bytes]:
        exe = Path(sys.executable).parent / "liftstream"
        p = subprocess.Popen([str(exe), "worker", "--name", f"w{len(self.procs)}"],
                             env=self.env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(p)
        return p

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def stop_all(self) -> None:
        for p in self.alive():
            os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def publish(self, messages: list[Message], rate: float | None = None) -> threading.Thread:
        def run() -> None:
            producer = make_producer(self.settings.kafka_bootstrap, linger_ms=20)
            topics = {"exposures": self.settings.topic_exposures,
                      "events": self.settings.topic_events}
            t0 = time.monotonic()
            for i, (kind, key, value) in enumerate(messages):
                producer.send(topics[kind], value=value, key=key)
                if rate and i % 500 == 0:
                    ahead = i / rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
            producer.flush()
            producer.close()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def applied(self) -> int:
        try:
            n = partition_count(self.client)
            return int(read_counters(self.client, range(n)).get("messages", 0)) if n else 0
        except Exception:
            return -1

    def wait_applied(self, total: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.applied() >= total:
                return
            if not self.alive():
                self.start_worker()
            time.sleep(0.3)
        raise TimeoutError(f"{self.applied()} of {total} messages applied")

    def dead_letters(self, expected: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        consumer = make_consumer(self.settings.kafka_bootstrap, None)
        consumer.assign([TopicPartition(self.settings.topic_dead_letters, 0)])
        consumer.seek_to_beginning()
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out.extend(json.loads(r.value) for r in records)
        consumer.close()
        return out


@dataclass(frozen=True)
class Tally:
    scenario: str
    events_in: int
    counted: int
    differences: list[str]
    detail: str = ""

    @property
    def lost(self) -> int:
        return max(0, self.events_in - self.counted)

    @property
    def double_counted(self) -> int:
        return max(0, self.counted - self.events_in)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.double_counted == 0 and not self.differences

    def line(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return (f"{self.scenario:<22} events in {self.events_in:>8,} / counted "
                f"{self.counted:>8,} / lost {self.lost} / double-counted "
                f"{self.double_counted}  {verdict} {self.detail}").rstrip()


def tally(name: str, c: Cluster, w: Workload, detail: str = "") -> Tally:
    d = Registry(c.client).get("chaos")
    assert d is not None
    arms = experiment_matrices(c.client, d)
    counted = round(sum(m.n * float(m.mean[m.index("clicks")]) for m in arms.values() if m.n))
    live = experiment_document(c.client, d)
    req = AnalyzeRequest(variation="arm", control="control",
                         metrics=(MetricColumn("clicks", "numeric"),
                                  MetricColumn("revenue", "numeric"),
                                  MetricColumn("converted", "binary")), covariates=("x",))
    diffs = document_differences(live, analyze_frame(w.frame, req))
    return Tally(name, w.clicks, counted, diffs[:5], detail)


def kill_workers(broker: Broker, redis_server: RedisServer, units: int, kills: int,
                 seed: int) -> Tally:
    c = Cluster(broker, redis_server, f"kill{seed}")
    w = workload(units, seed)

    def kill_one(rng: random.Random) -> bool:
        victims = c.alive()
        if victims:
            os.killpg(rng.choice(victims).pid, signal.SIGKILL)
        c.start_worker()
        return True

    _under_kills(c, w, kills, seed, 2.5, (1.0, 3.0), kill_one)
    return tally("worker SIGKILL", c, w, f"({kills} kills)")


def fetch_kills(broker: Broker, redis_server: RedisServer, units: int, kills: int,
                seed: int) -> Tally:
    """SIGKILL the fetch process (stream/fetch_process.py) of a live worker, not the worker."""
    c = Cluster(broker, redis_server, f"fetch{seed}")
    w = workload(units, seed)

    def kill_one(rng: random.Random) -> bool:
        children = [pid for p in c.alive() for pid in _children(p.pid)]
        if children:
            os.kill(rng.choice(children), signal.SIGKILL)
        return bool(children)

    _under_kills(c, w, kills, seed, 2.0, (0.5, 2.0), kill_one)
    return tally("fetch process SIGKILL", c, w, f"({kills} kills)")


def _under_kills(c: Cluster, w: Workload, kills: int, seed: int, seconds_per_kill: float,
                 gap: tuple[float, float], kill_one: Callable[[random.Random], bool]) -> None:
    """Two workers; the workload published over ``kills × seconds_per_kill`` s while
    ``kill_one`` kills, a random ``gap`` apart, until it has killed ``kills`` times; then
    until every message is applied."""
    rng = random.Random(seed)
    for _ in range(2):
        c.start_worker()
    pub = c.publish(w.messages, rate=len(w.messages) / max(5.0, kills * seconds_per_kill))
    done = 0
    while done < kills:
        time.sleep(rng.uniform(*gap))
        done += kill_one(rng)
    pub.join()
    c.wait_applied(len(w.messages), timeout=240)
    c.stop_all()


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def redis_restart(broker: Broker, redis_server: RedisServer, units: int, restarts: int,
                  seed: int) -> Tally:
    c = Cluster(broker, redis_server, f"aof{seed}")
    w = workload(units, seed)
    c.start_worker()
    pub = c.publish(w.messages, rate=len(w.messages) / max(6.0, restarts * 3.0))
    for _ in range(restarts):
        time.sleep(2.0)
        redis_server.restart(crash=True)
    pub.join()
    c.client = connect(redis_server.url)
    c.wait_applied(len(w.messages), timeout=240)
    c.stop_all()
    return tally("Redis SIGKILL + AOF", c, w, f"({restarts} restarts)")


def disorder(broker: Broker, redis_server: RedisServer, units: int, seed: int) -> Tally:
    c = Cluster(broker, redis_server, f"dup{seed}")
    w = workload(units, seed, duplicate=0.3)
    c.start_worker()
    c.publish(w.messages).join()
    c.wait_applied(len(w.messages), timeout=240)
    c.stop_all()
    return tally("duplicates + reorder", c, w, "(30% duplicated, shuffled)")


def rebalance(broker: Broker, redis_server: RedisServer, units: int, seed: int) -> Tally:
    c = Cluster(broker, redis_server, f"reb{seed}")
    w = workload(units, seed)
    first = c.start_worker()
    pub = c.publish(w.messages, rate=len(w.messages) / 12.0)
    time.sleep(3.0)
    extra = [c.start_worker(), c.start_worker()]
    time.sleep(5.0)
    for p in extra:
        os.killpg(p.pid, signal.SIGTERM)
    pub.join()
    if first.poll() is not None:
        c.start_worker()
    c.wait_applied(len(w.messages), timeout=240)
    c.stop_all()
    return tally("rebalance 1→3→1", c, w)


def fuzz(broker: Broker, redis_server: RedisServer, units: int, seed: int, n: int) -> Tally:
    c = Cluster(broker, redis_server, f"fuzz{seed}")
    w = workload(units, seed, fuzz=n)
    c.start_worker()
    c.publish(w.messages).join()
    c.wait_applied(len(w.messages), timeout=240)
    letters = c.dead_letters(w.invalid)
    c.stop_all()
    t = tally("fuzzed messages", c, w, f"({len(letters)}/{w.invalid} dead-lettered)")
    problems = list(t.differences)
    if len(letters) != w.invalid or not all(x.get("reason") for x in letters):
        problems.append(f"dead letters: {len(letters)} of {w.invalid} with reasons")
    return replace(t, differences=problems)


Scenario = Callable[[Broker, RedisServer], Tally]


def run(quick: bool) -> list[Tally]:
    units = 3000 if quick else 20_000
    scenarios: list[tuple[str, Scenario]] = [
        ("kill", lambda b, r: kill_workers(b, r, units, 3 if quick else 10, 1)),
        ("fetch", lambda b, r: fetch_kills(b, r, units, 3 if quick else 8, 6)),
        ("aof", lambda b, r: redis_restart(b, r, units, 1 if quick else 3, 2)),
        ("disorder", lambda b, r: disorder(b, r, units, 3)),
        ("rebalance", lambda b, r: rebalance(b, r, units, 4)),
        ("fuzz", lambda b, r: fuzz(b, r, units // 3, 5, 2000 if quick else 10_000)),
    ]
    from bench.chaos_integrity import scenarios as integrity  # issue 10: items 1, 3, 5, 6
    scenarios += integrity(units)
    from bench.chaos_ops import ops_scenarios  # broker reset, dead-letter refusal, Redis full

    scenarios += ops_scenarios(units, quick)
    return run_scenarios(scenarios)


def run_scenarios(scenarios: Iterable[tuple[str, Scenario]]) -> list[Tally]:
    """Every scenario against one broker and one AOF Redis; each tally printed as it ends."""
    out = []
    with start_broker() as broker, start_redis(appendonly=True, appendfsync="everysec") as rs:
        for _, scenario in scenarios:
            t = scenario(broker, rs)
            print(t.line(), flush=True)
            for d in t.differences:
                print(f"    {d}", flush=True)
            out.append(t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes, ~1 minute")
    ap.add_argument("--json", help="also write the tallies to this file")
    args = ap.parse_args()
    tallies = run(args.quick)
    if args.json:
        Path(args.json).write_text(json.dumps([
            {"scenario": t.scenario, "events_in": t.events_in, "counted": t.counted,
             "lost": t.lost, "double_counted": t.double_counted, "ok": t.ok,
             "detail": t.detail, "differences": t.differences} for t in tallies], indent=1))
    return 0 if all(t.ok for t in tallies) else 1


if __name__ == "__main__":
    sys.exit(main())
