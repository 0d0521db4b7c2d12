"""Reliability runs for the faults operators meet (issue 10 items 2, 4, 7), as in bench.chaos:

* **broker reset**: the memory broker restarts (every topic back to offset 0) under worker
  processes; new traffic must be refused *with the warning* ``offsets_out_of_range`` (never
  skipped silently), and after ``liftstream offsets reset`` count exactly;
* **dead-letter refusal**: the broker refuses the dead letters for a while (simulated at the
  stream/kafka.py boundary, an in-process worker); batches are retried, nothing is lost;
* **Redis full**: ``maxmemory`` tiny with ``noeviction`` while worker processes ingest; they
  back off without exiting and count every event exactly once when Redis has room again.

Each prints ``events in / counted / lost / double-counted`` (bench.chaos.Tally). Run alone:
``python -m bench.chaos_ops [--quick]``; ``make chaos`` runs them after the others.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from bench.chaos import Cluster, Scenario, Tally, Workload, run_scenarios, tally, workload
from state.store import partition_count, read_counters, read_partition_warnings
from stream.kafka import ensure_topics
from workers.dev.embedded import Broker, RedisServer, start_broker
from workers.ingest import worker as ingest


def _wait(what: str, cond: Callable[[], bool], timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.3)


@contextlib.contextmanager
def _stopping(c: Cluster) -> Iterator[Cluster]:
    """Stop the scenario's worker processes however it ends (they run in their own
    sessions and would outlive this process)."""
    try:
        yield c
    finally:
        c.stop_all()


def _counters(c: Cluster) -> dict[str, float]:
    n = partition_count(c.client)
    return read_counters(c.client, range(n)) if n else {}


def _merge(a: Workload, b: Workload) -> Workload:
    return Workload(pd.concat([a.frame, b.frame], ignore_index=True), a.messages + b.messages,
                    a.clicks + b.clicks, a.invalid + b.invalid)


def _liftstream(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "liftstream"
    return subprocess.run([str(exe), *args], env=c.env, capture_output=True, text=True,
                          timeout=120)


def broker_reset(redis_server: RedisServer, units: int, seed: int) -> Tally:
    """Worker processes; broker restart; new traffic refused with a warning; reset; exact."""
    with start_broker() as broker:
        c = Cluster(broker, redis_server, f"breset{seed}")
        with _stopping(c):
            return _broker_reset(c, broker, units, seed)


def _broker_reset(c: Cluster, broker: Broker, units: int, seed: int) -> Tally:
    before = workload(units, seed)
    after = workload(max(units // 5, 50), seed + 100)  # less per partition than stored
    c.start_worker()
    c.publish(before.messages).join()
    c.wait_applied(len(before.messages), timeout=240)
    problems: list[str] = []
    broker.restart()
    ensure_topics(broker.bootstrap, {c.settings.topic_exposures: 4,
                                     c.settings.topic_events: 4})
    c.publish(after.messages).join()

    def flagged() -> int:
        return sum("offsets_out_of_range" in f for f in
                   read_partition_warnings(c.client, range(4)).values())

    try:
        _wait("offsets_out_of_range on every partition", lambda: flagged() == 4, 120)
    except TimeoutError:
        problems.append(f"only {flagged()} of 4 partitions flagged offsets_out_of_range")
    held = c.applied() == len(before.messages)
    if not held:
        problems.append("new traffic applied before the reset (skipped offsets)")
    r = _liftstream(c, "offsets", "reset")
    if r.returncode != 0:
        problems.append(f"offsets reset failed: {r.stderr.strip()}")
    c.wait_applied(len(before.messages) + len(after.messages), timeout=240)
    resets = _counters(c).get("offsets_reset", 0)
    c.stop_all()
    t = tally("broker reset", c, _merge(before, after),
              f"(refused, with warning: 4 partitions until `offsets reset`; "
              f"{int(resets)} reset)")
    return replace(t, differences=list(t.differences) + problems)


class _Refused(Exception):
    pass


class _RefusedFuture:
    def get(self, timeout: float | None = None) -> Any:
        raise _Refused("record refused (simulated broker)")


class _RefusingProducer:
    """A real producer whose records to ``topic`` fail while ``refusing`` is set."""

    def __init__(self, real: Any, topic: str) -> None:
        self.real, self.topic = real, topic
        self.refusing = threading.Event()

    def send(self, topic: str, value: Any = None, **kw: Any) -> Any:
        if topic == self.topic and self.refusing.is_set():
            return _RefusedFuture()
        return self.real.send(topic, value, **kw)

    def flush(self, timeout: float | None = None) -> None:
        self.real.flush(timeout=timeout)

    def close(self, timeout: float | None = None) -> None:
        self.real.close(timeout=timeout)


@contextlib.contextmanager
def _refusing_producers(topic: str) -> Iterator[list[_RefusingProducer]]:
    made: list[_RefusingProducer] = []
    real = ingest.make_producer

    def factory(*args: Any, **kw: Any) -> _RefusingProducer:
        p = _RefusingProducer(real(*args, **kw), topic)
        p.refusing.set()
        made.append(p)
        return p

    ingest.make_producer = factory  # type: ignore[assignment]
    quiet = logging.getLogger("liftstream.worker")
    quiet.disabled = True
    try:
        yield made
    finally:
        ingest.make_producer = real
        quiet.disabled = False


def dead_letter_refusal(broker: Broker, redis_server: RedisServer, units: int, seed: int,
                        fuzz: int) -> Tally:
    """An in-process worker whose dead letters the broker refuses, then accepts."""
    c = Cluster(broker, redis_server, f"dlq{seed}")
    w = workload(units, seed, fuzz=fuzz)
    problems: list[str] = []
    with _refusing_producers(c.settings.topic_dead_letters) as made:
        worker = ingest.IngestWorker(c.settings, "w-dlq")
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        c.publish(w.messages).join()
        _wait("batches refused", lambda: _counters(c).get("refused_side_outputs", 0) >= 5)
        if _counters(c).get("dead_letters", 0):
            problems.append("a batch was stored while its dead letters were refused")
        refused = int(_counters(c).get("refused_side_outputs", 0))
        made[0].refusing.clear()
        # not Cluster.wait_applied: it would start a worker process when none runs
        _wait("all applied", lambda: c.applied() >= len(w.messages))
        worker.stop_event.set()
        thread.join(30)
        if thread.is_alive():
            problems.append("the worker did not stop")
    letters = c.dead_letters(w.invalid)
    origins = {(x.get("topic"), x.get("partition"), x.get("offset")) for x in letters}
    if len(origins) != w.invalid:
        problems.append(f"dead letters: {len(origins)} of {w.invalid}")
    if _counters(c).get("dead_letters", 0) != w.invalid:
        problems.append(f"dead_letters counter {_counters(c).get('dead_letters')} "
                        f"!= {w.invalid}")
    t = tally("dead-letter refusal", c, w,
              f"({refused}+ batches refused and retried; {len(origins)}/{w.invalid} "
              f"dead-lettered)")
    return replace(t, differences=list(t.differences) + problems)


def redis_full(broker: Broker, redis_server: RedisServer, units: int, seed: int,
               seconds: float) -> Tally:
    """Worker processes; Redis at maxmemory (noeviction) for ``seconds`` while the second half
    of the stream arrives; every event exactly once after."""
    c = Cluster(broker, redis_server, f"full{seed}")
    with _stopping(c):
        return _redis_full(c, redis_server, units, seed, seconds)


def _redis_full(c: Cluster, redis_server: RedisServer, units: int, seed: int,
                seconds: float) -> Tally:
    w = workload(units, seed)
    half = len(w.messages) // 2
    problems: list[str] = []
    for _ in range(2):
        c.start_worker()
    c.publish(w.messages[:half]).join()
    c.wait_applied(half, timeout=240)
    admin = redis_server.client()
    policy = str(admin.config_get("maxmemory-policy")["maxmemory-policy"])
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)
    try:
        c.publish(w.messages[half:]).join()
        time.sleep(1.0)
        frozen = c.applied()
        time.sleep(seconds)
        if c.applied() != frozen:
            problems.append("batches applied while Redis refused writes")
        if len(c.alive()) != len(c.procs):
            problems.append(f"{len(c.procs) - len(c.alive())} worker(s) exited on OOM")
    finally:
        admin.config_set("maxmemory", 0)
        admin.config_set("maxmemory-policy", policy)
        admin.close()
    c.wait_applied(len(w.messages), timeout=240)
    with contextlib.suppress(TimeoutError):
        _wait("refusals counted", lambda: _counters(c).get("redis_errors_oom", 0) > 0, 30)
    oom = int(_counters(c).get("redis_errors_oom", 0))
    if not oom:
        problems.append("no OOM refusal counted")
    if len(c.alive()) != len(c.procs):
        problems.append("a worker exited")
    c.stop_all()
    t = tally("Redis full (OOM)", c, w, f"({seconds:.0f} s at maxmemory; {oom} refusals "
                                        f"backed off, workers kept running)")
    return replace(t, differences=list(t.differences) + problems)


def ops_scenarios(units: int, quick: bool) -> list[tuple[str, Scenario]]:
    """The scenarios above, for bench.chaos.run."""
    return [
        ("broker-reset", lambda b, r: broker_reset(r, units, 6)),
        ("dead-letter-refusal", lambda b, r: dead_letter_refusal(
            b, r, units // 3, 7, 200 if quick else 1000)),
        ("redis-full", lambda b, r: redis_full(b, r, units, 8, 4.0 if quick else 10.0)),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes")
    args = ap.parse_args()
    units = 3000 if args.quick else 20_000
    tallies = run_scenarios(ops_scenarios(units, args.quick))
    return 0 if all(t.ok for t in tallies) else 1


if __name__ == "__main__":
    sys.exit(main())
