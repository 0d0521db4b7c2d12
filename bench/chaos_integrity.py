"""Reliability runs for the operator faults of issue 10 (items 1, 3, 5, 6).

Each scenario runs real ``liftstream worker`` processes against the embedded broker and Redis
of :mod:`bench.chaos`, prints ``events in / counted / lost / double-counted`` (and what was
refused, with its warning) and fails on any silent loss, double count, disagreement with the
batch analysis, missing warning or worker that exited:

* **poison definition** — a 257-column definition (128 metrics + a model + 1 covariate) and a
  definition whose layout changed under its stored state, next to the chaos experiment: the
  wide one counts exactly, the poison one's messages are dead-lettered with the reason
  (``build_failed``), the chaos experiment counts exactly, no worker dies;
* **held-store flood** — untagged events of never-exposed units at ten times the held store's
  capacity, then every member event before its exposure, then the exposures: every member
  event counts; the evictions are counted (``held_events_evicted``);
* **stop freeze** — after ``stop``, tagged and untagged events of exposed units, exposures of
  new units with their events: none changes the statistics (refused, with warning);
* **colliding ids** — event ids whose CRC-32 collide within a unit, and one unit with 5,000
  ids: all count, the unit's remembered ids stay bounded.

Run: ``python -m bench.chaos_integrity [--quick]``; also part of ``make chaos``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import zlib
from dataclasses import replace
from typing import Any

import numpy as np

from bench.chaos import (
    ARMS,
    Cluster,
    Scenario,
    Tally,
    Workload,
    run_scenarios,
    tally,
    workload,
)
from estimators import document
from state import keys
from state.definition import parse_definition
from state.limits import CEILINGS
from state.registry import REGISTRY_KEY, VERSION_KEY, Registry
from state.results import experiment_document
from state.store import read_counters
from state.units import UnitState
from state.warnings import experiment_warnings
from stream.messages import Event, Exposure, encode_event, encode_exposure
from workers.dev.embedded import Broker, RedisServer
from workers.settings import to_env

Message = tuple[str, bytes, bytes]


def _event(unit: str, name: str, ts: float, value: float = 1.0, x: str | None = None,
           event_id: str | None = None) -> Message:
    return "events", unit.encode(), encode_event(Event(unit, name, ts, value, x, event_id))


def _exposure(x: str, unit: str, variation: str, ts: float,
              cov: dict[str, float] | None = None) -> Message:
    return "exposures", unit.encode(), encode_exposure(Exposure(x, unit, variation, ts,
                                                                cov or {}))


def _configure(c: Cluster, **overrides: Any) -> None:
    c.settings = replace(c.settings, **overrides)
    c.env = {**{k: v for k, v in os.environ.items() if not k.startswith("LIFTSTREAM_")},
             **to_env(c.settings)}


def _store_definition(c: Cluster, d: dict[str, Any]) -> None:
    """Store a definition past the registry's checks (as an older release could)."""
    c.client.hset(REGISTRY_KEY, d["id"], parse_definition(d, CEILINGS).to_json())
    c.client.incr(VERSION_KEY)


def _wait(c: Cluster, total: int, timeout: float = 240.0) -> list[str]:
    """Wait until ``total`` messages are applied; never restarts a worker (one that exits is
    the failure under test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if c.applied() >= total:
            return []
        if not c.alive():
            return [f"every worker exited ({c.applied()} of {total} applied)"]
        time.sleep(0.2)
    return [f"timeout: {c.applied()} of {total} messages applied"]


def _stop(c: Cluster) -> list[str]:
    died = [p.pid for p in c.procs if p.poll() is not None]
    for p in c.alive():
        os.killpg(p.pid, signal.SIGTERM)
    for p in c.procs:
        p.wait(timeout=30)
    c.procs.clear()  # reaped: a later check sees only the workers started after this
    return [f"worker {pid} exited during the run" for pid in died]


def _counters(c: Cluster) -> dict[str, float]:
    return read_counters(c.client, range(c.settings.partitions))


def _warnings(c: Cluster, experiment: str) -> set[str]:
    d = Registry(c.client).get(experiment)
    assert d is not None
    return {w.code for w in document.parse(experiment_document(c.client, d)).warnings}


def _unit_states(c: Cluster, experiment: str) -> dict[str, UnitState]:
    out: dict[str, UnitState] = {}
    for p in range(c.settings.partitions):
        for key in c.client.scan_iter(match=keys.unit_pattern(p, experiment), count=1000):
            raw: Any = c.client.hgetall(key)
            for unit, blob in raw.items():
                out[unit.decode()] = UnitState.unpack(blob)
    return out


def _with_problems(t: Tally, problems: list[str], detail: str) -> Tally:
    return replace(t, differences=[*t.differences, *problems], detail=detail)


# ----------------------------------------------------------------------------- scenarios


def poison_definition(broker: Broker, redis_server: RedisServer, units: int, seed: int
                      ) -> Tally:
    c = Cluster(broker, redis_server, f"poison{seed}")
    wide = {"id": "wide", "variations": ["a", "b"], "covariates": ["x"], "model": "linear",
            "metrics": [{"name": f"m{i}", "event": f"e{i}", "aggregate": "count"}
                        for i in range(128)]}
    _store_definition(c, wide)
    first = {"id": "poison", "variations": ["a", "b"],
             "metrics": [{"name": "pokes", "event": "poke", "aggregate": "count"}]}
    Registry(c.client).create(parse_definition(first))
    before = [m for i in range(200) for m in (
        _exposure("poison", f"p{i}", "ab"[i % 2], 1.7e9 + i),
        _event(f"p{i}", "poke", 1.7e9 + i + 1, x="poison"))]
    c.start_worker()
    c.publish(before).join()
    problems = _wait(c, len(before))
    problems += _stop(c)
    # the poison: its layout changes under its stored unit states and matrices
    _store_definition(c, {**first, "metrics": [*first["metrics"], {
        "name": "spend", "event": "pay", "aggregate": "sum"}]})
    w = workload(units, seed)
    rng = np.random.default_rng(seed)
    poison: list[Message] = []
    for i in range(200, 600):  # new units' exposures; events of units exposed before
        poison += [_exposure("poison", f"p{i}", "ab"[i % 2], 1.7e9 + i),
                   _event(f"p{i % 200}", "poke", 1.7e9 + i + 1, x="poison"),
                   _event(f"p{i % 200}", "pay", 1.7e9 + i + 2, 2.0)]
    wide_msgs: list[Message] = []
    wide_events = 0
    for i in range(units // 4):
        u = f"u{seed}-{i}"
        wide_msgs.append(_exposure("wide", u, "ab"[i % 2], 1.7e9 + i, {"x": 1.0}))
        for k in rng.choice(128, 3, replace=False):
            wide_msgs.append(_event(u, f"e{k}", 1.7e9 + i + 1, x="wide"))
            wide_events += 1
    messages = list(w.messages) + poison + wide_msgs
    order = rng.permutation(len(messages))
    c.start_worker()
    c.publish([messages[k] for k in order]).join()
    problems += _wait(c, len(before) + len(messages))
    letters = c.dead_letters(len(poison), timeout=120.0)
    problems += _stop(c)
    t = tally("poison definition", c, w)
    bad = [x for x in letters if "'poison'" not in x.get("reason", "")]
    n = _counters(c)
    if len(letters) != len(poison) or bad or n.get("poison:build_failed") != len(poison):
        problems.append(f"dead letters: {len(letters)} of {len(poison)}, "
                        f"{len(bad)} without the experiment's reason; build_failed "
                        f"{n.get('poison:build_failed', 0)}, side_outputs_failed "
                        f"{n.get('side_outputs_failed', 0)}")
    counted_wide = int(sum(sum(st.raw[:128]) for st in _unit_states(c, "wide").values()))
    if counted_wide != wide_events:
        problems.append(f"257-column experiment: {counted_wide} of {wide_events} counted")
    # its result document cannot be computed (the stored layout disagrees): the warning
    # comes from the counters the document would show
    if "build_failed" not in {x["code"] for x in experiment_warnings("poison", _counters(c),
                                                                      {})}:
        problems.append("no build_failed warning on the poison experiment")
    return _with_problems(t, problems, f"(refused, with warning: {len(letters)} poison "
                                       f"messages dead-lettered; 257 columns: "
                                       f"{counted_wide}/{wide_events} counted)")


def held_flood(broker: Broker, redis_server: RedisServer, units: int, seed: int) -> Tally:
    c = Cluster(broker, redis_server, f"held{seed}")
    capacity = max(200, units // 2)  # units held per partition; members fit any partition
    _configure(c, max_pending_events=capacity)
    w = workload(units, seed, duplicate=0.0)
    flood = [_event(f"ghost{seed}-{i}", "click", 1.7e9 + i * 1e-3)
             for i in range(10 * capacity * c.settings.partitions)]
    events = [m for m in w.messages if m[0] == "events"]
    exposures = [m for m in w.messages if m[0] == "exposures"]
    c.start_worker()
    problems: list[str] = []
    sent = 0
    for batch in (flood, events, exposures):  # members' events all before their exposures
        c.publish(batch).join()
        sent += len(batch)
        problems += _wait(c, sent)
    problems += _stop(c)
    t = tally("held-store flood", c, w)
    n = _counters(c)
    held = [int(c.client.hlen(keys.pending(p))) for p in range(c.settings.partitions)]
    if max(held) > capacity:
        problems.append(f"held store {held} above its bound {capacity}")
    if n.get("held_evicted", 0) < len(flood) - capacity * c.settings.partitions:
        problems.append(f"held_evicted {n.get('held_evicted', 0)} too low")
    if "held_events_evicted" not in _warnings(c, "chaos"):
        problems.append("no held_events_evicted warning")
    return _with_problems(t, problems, f"({len(flood):,} ghost events at 10x capacity; "
                                       f"{int(n.get('held_evicted', 0)):,} evicted, "
                                       f"with warning)")


def stop_freeze(broker: Broker, redis_server: RedisServer, units: int, seed: int) -> Tally:
    c = Cluster(broker, redis_server, f"stop{seed}")
    w = workload(units, seed)
    c.start_worker()
    c.publish(w.messages).join()
    problems = _wait(c, len(w.messages))
    problems += _stop(c)
    Registry(c.client).stop("chaos")
    after: list[Message] = []
    for i in range(units):
        u = f"u{seed}-{i}"
        after += [_event(u, "click", 1.7e9 + 100 + i, x="chaos", event_id=f"{u}:late"),
                  _event(u, "click", 1.7e9 + 100 + i)]
    for i in range(units // 5):
        u = f"late{seed}-{i}"
        after += [_exposure("chaos", u, ARMS[i % 3], 1.7e9 + 100 + i, {"x": 0.0}),
                  _event(u, "click", 1.7e9 + 101 + i, x="chaos")]
    c.start_worker()
    c.publish(after).join()
    problems += _wait(c, len(w.messages) + len(after))
    problems += _stop(c)
    t = tally("stop freeze", c, w)
    n = _counters(c)
    refused = int(n.get("chaos:events_after_stop", 0) + n.get("chaos:exposures_after_stop", 0))
    if refused != units + 2 * (units // 5):
        problems.append(f"refused after stop {refused}, expected {units + 2 * (units // 5)}")
    if not {"events_after_stop", "exposures_after_stop"} <= _warnings(c, "chaos"):
        problems.append("no after-stop warnings")
    return _with_problems(t, problems, f"(refused, with warning: {refused:,} messages after "
                                       f"stop)")


def _crc_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` pairs of distinct ids with equal CRC-32 (birthday search, deterministic)."""
    seen: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []
    i = 0
    while len(pairs) < n:
        s = f"id{seed}-{i}"
        h = zlib.crc32(s.encode())
        if h in seen:
            pairs.append((seen.pop(h), s))
        else:
            seen[h] = s
        i += 1
    return pairs


def colliding_ids(broker: Broker, redis_server: RedisServer, units: int, seed: int) -> Tally:
    c = Cluster(broker, redis_server, f"ids{seed}")
    cap = 1000
    _configure(c, event_ids_per_unit=cap)
    base = workload(units, seed)
    frame = base.frame.copy()
    extra: list[Message] = []
    pairs = _crc_pairs(min(100, units), seed)
    for k, (a, b) in enumerate(pairs):
        u = f"u{seed}-{k}"
        extra += [_event(u, "click", 1.7e9 + 50, event_id=a),
                  _event(u, "click", 1.7e9 + 51, event_id=b),
                  _event(u, "click", 1.7e9 + 51, event_id=b)]  # a true duplicate
        frame.loc[k, "clicks"] += 2
    busy, n_busy = f"u{seed}-{units - 1}", 5 * cap
    extra += [_event(busy, "click", 1.7e9 + 60 + j * 1e-3, event_id=f"{busy}:many{j}")
              for j in range(n_busy)]
    frame.loc[units - 1, "clicks"] += n_busy
    w = Workload(frame, [*base.messages, *extra], base.clicks + 2 * len(pairs) + n_busy)
    c.start_worker()
    c.publish(base.messages).join()  # the exposures first: 5,000 early events of one unit
    problems = _wait(c, len(base.messages))  # would exceed its held-event bound (1,000)
    c.publish(extra).join()
    problems += _wait(c, len(w.messages))
    problems += _stop(c)
    t = tally("colliding ids", c, w)
    st = _unit_states(c, "chaos")[busy]
    if len(st.seen) > cap:
        problems.append(f"unit {busy} remembers {len(st.seen)} ids, over the cap {cap}")
    if "event_ids_evicted" not in _warnings(c, "chaos"):
        problems.append("no event_ids_evicted warning")
    return _with_problems(t, problems, f"({len(pairs)} CRC-32 collisions within units; "
                                       f"a unit with {n_busy:,} ids keeps {len(st.seen)})")


def scenarios(units: int) -> list[tuple[str, Scenario]]:
    """The integrity scenarios, for :func:`bench.chaos.run`."""
    return [
        ("poison", lambda b, r: poison_definition(b, r, units // 3, 6)),
        ("held", lambda b, r: held_flood(b, r, units // 3, 7)),
        ("stop", lambda b, r: stop_freeze(b, r, units // 3, 8)),
        ("ids", lambda b, r: colliding_ids(b, r, units // 3, 9)),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes")
    ap.add_argument("--only", nargs="*", help="scenario names (poison, held, stop, ids)")
    args = ap.parse_args()
    units = 3000 if args.quick else 20_000
    tallies = run_scenarios((name, scenario) for name, scenario in scenarios(units)
                            if not args.only or name in args.only)
    return 0 if all(t.ok for t in tallies) else 1


if __name__ == "__main__":
    sys.exit(main())
