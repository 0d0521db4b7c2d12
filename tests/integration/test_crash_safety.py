"""Worker processes SIGKILLed at random moments lose and double-count nothing (DESIGN §2).

A synthetic experiment of 110,000 units (~210,000 messages: exposures and events locally
shuffled so about a third of the events arrive before their unit's exposure, 3% of messages
published twice) is published from a background thread while ``liftstream worker`` processes
of one consumer group are SIGKILLed at seeded random moments: three workers run; each time
batches are being applied, after a random 1-3 s, the live owner of a random partition is
killed (possibly inside a batch) and a new member starts 5 s later, once the victim's 6 s
session has expired (joining earlier makes Tansu wait for the dead member and rebalance twice,
~13 s per kill). After ten kills the one worker left runs to completion. The live results must
equal the batch analysis of the unit rows, every stored unit vector must be exactly what its
events imply, and every message must have been applied exactly once.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from state import keys
from state.definition import parse_definition
from state.registry import Registry
from state.results import experiment_document
from state.store import Client, read_counters
from tests.support.quiescence import wait_quiescent
from workers.dev.embedded import Broker

from .conftest import unique
from .streaming import (
    Publisher,
    assert_documents_equal,
    create_topics,
    event_accounting,
    messages_applied,
    redis_client,
    start_worker_process,
    stop_processes,
    streaming_settings,
    synthetic_batch_document,
    synthetic_definition,
    synthetic_stream,
)

UNITS = 110_000
KILLS = 10
POOL = 3  # live workers, a new one replaces each victim but the last POOL - 1
REPLACE_AFTER = 5.0
SEED = 20_240_611


def wait_applied(client: Client, total: int, proc: subprocess.Popen[bytes],
                 timeout: float) -> None:
    """Until ``total`` messages are applied; fail at once if the worker process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if messages_applied(client) >= total:
            return
        assert proc.poll() is None, f"the last worker exited with {proc.returncode}"
        time.sleep(0.2)
    raise TimeoutError(f"only {messages_applied(client)} of {total} messages applied")


Procs = Callable[[], dict[str, subprocess.Popen[bytes]]]


def wait_progress(client: Client, base: int, live: Procs, starting: Callable[[], bool],
                  timeout: float, total: int | None = None) -> None:
    """Until more than ``base`` messages are applied (or all ``total`` are)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        applied = messages_applied(client)
        if applied > base or (total is not None and applied >= total):
            return
        assert live() or starting(), "every worker exited"
        time.sleep(0.1)
    raise TimeoutError(f"no batch applied within {timeout} s after {base} messages")


def live_owner(client: Client, live: Procs, log_dir: Path, partitions: int,
               rng: random.Random, timeout: float) -> str:
    """A live worker that claimed the current epoch of a partition (from its log), at random."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = {name: (log_dir / f"{name}.log").read_text(errors="replace") for name in live()}
        owners = set()
        for p in range(partitions):
            epoch = client.get(keys.epoch(p))
            needle = f": owns partition {p} (epoch {int(epoch or 0)})"
            owners |= {name for name, text in logs.items() if needle in text}
        if owners:
            return rng.choice(sorted(owners))
        time.sleep(0.1)
    raise TimeoutError("no live worker owns a partition")


def test_sigkilled_workers_lose_and_double_count_nothing(broker: Broker, redis_url: str,
                                                          tmp_path: Path) -> None:
    exp = "crash"
    s = streaming_settings(broker.bootstrap, redis_url, unique("crash"), partitions=4)
    create_topics(s)
    client = redis_client(s)
    Registry(client).create(parse_definition(synthetic_definition(exp)))
    stream = synthetic_stream(exp, UNITS, seed=SEED)
    total = len(stream.messages)
    assert total >= 200_000 and stream.early > 10_000
    assert stream.duplicate_exposures > 1000 and stream.duplicate_events > 500

    rng = random.Random(SEED)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    lock = threading.Lock()
    timers: list[threading.Timer] = []
    kills: list[tuple[float, str, int, bool]] = []  # (s since start, victim, applied, moving)

    def start() -> None:
        with lock:
            name = f"w{len(procs)}"
            procs[name] = start_worker_process(s, name, tmp_path)

    def live() -> dict[str, subprocess.Popen[bytes]]:
        with lock:
            return {n: p for n, p in procs.items() if p.poll() is None}

    # paced so that the stream outlasts the kills: every kill happens while messages flow
    publisher = Publisher(s, stream.messages, rate=total / 75.0)
    t0 = time.monotonic()
    try:
        publisher.start()
        for _ in range(POOL):
            start()
        for k in range(KILLS):
            # a random while after batches are applied again, SIGKILL (no leave-group, no
            # flush, possibly inside a batch) the live owner of a random partition
            wait_progress(client, kills[-1][2] if kills else 0, live,
                          lambda: any(t.is_alive() for t in timers), timeout=40, total=total)
            time.sleep(rng.uniform(0.5, 2.5))
            before = messages_applied(client)
            time.sleep(0.5)
            victim = live_owner(client, live, tmp_path, s.partitions, rng, timeout=40)
            applied = messages_applied(client)
            proc = live()[victim]
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            assert proc.returncode == -signal.SIGKILL, f"{victim} died by itself"
            kills.append((time.monotonic() - t0, victim, applied, applied > before))
            if k < KILLS - POOL + 1:
                # a new member, once the victim's session (6 s) has expired: joining earlier
                # makes the group wait for the dead member and then rebalance twice
                timers.append(threading.Timer(REPLACE_AFTER, start))
                timers[-1].start()
        for t in timers:
            t.join()
        (last,) = live().values()
        (last,) = [p for p in procs.values() if p.poll() is None]
        publisher.finish()
        kill_phase = time.monotonic() - t0
        applied_at_last = messages_applied(client)
        wait_applied(client, total, last, timeout=200)
        # every stored offset at the high watermark: nothing is left to apply or replay
        wait_quiescent(s, client, timeout=120)
        assert messages_applied(client) == total
        assert last.poll() is None
        stop_processes([last], signal.SIGTERM)
        assert last.returncode == 0
    finally:
        for t in timers:
            t.cancel()
            t.join()
        stop_processes(list(procs.values()), signal.SIGKILL)
        publisher.join(timeout=60)

    d = Registry(client).get(exp)
    assert d is not None
    live_doc = experiment_document(client, d)
    compared = assert_documents_equal(live_doc, synthetic_batch_document(stream.frame), 1e-9)
    counters = live_doc["slices"][0]["counters"]
    acc = event_accounting(client, exp, stream, s.partitions, s.unit_buckets)
    totals = read_counters(client, range(s.partitions))
    print(f"\nmessages {total} ({stream.early} events before their exposure, "
          f"{stream.duplicate_exposures + stream.duplicate_events} duplicates); "
          f"{len(kills)} SIGKILLs in {kill_phase:.1f} s at "
          f"{', '.join(f'{t:.0f} s ({v}, {n})' for t, v, n, _ in kills)} (victim, "
          f"messages applied), {sum(m for *_, m in kills)} while batches were being applied; "
          f"{applied_at_last} applied before the last worker; "
          f"refused batches: epoch {int(totals.get('refused_epoch', 0))}, offset "
          f"{int(totals.get('refused_offset', 0))}, shift {int(totals.get('refused_shift', 0))}")
    print(f"events in / counted / lost / double-counted: {acc['events_in']} / "
          f"{acc['counted']} (of {acc['countable']} countable) / {acc['lost']} / "
          f"{acc['double_counted']}; {compared} estimator numbers equal the batch analysis")
    assert acc["lost"] == 0 and acc["double_counted"] == 0
    assert acc["counted"] == acc["countable"]
    assert acc["wrong_units"] == 0 and acc["extra_units"] == 0
    assert compared > 50
    assert counters["exposures"] == UNITS
    assert counters.get("repeat_exposures", 0) == stream.duplicate_exposures
    assert "withdrawn" not in counters
    assert int(totals.get("events", 0)) == stream.events_in
    assert int(totals.get("dead_letters", 0)) == 0
