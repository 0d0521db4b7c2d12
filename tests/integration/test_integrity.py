"""Integrity under operator faults (issue 10, items 1, 3, 5, 6), through the real broker and Redis.

* poison definition: a ≥ 256-column experiment counts; an experiment whose rules raise has its
  messages dead-lettered with the reason while the others on the partition count exactly;
* held store: a flood of untagged events of never-exposed units cannot crowd out the early
  events of real members (oldest evicted first, counted, warned); mis-keyed events are dead
  letters naming the key;
* stop freezes: after ``stop`` no exposure, tagged, untagged or held event changes the
  statistics; the window is half-open ``[start, end)``;
* event ids: ids with the same CRC-32 both count; a unit's remembered ids stay bounded; a
  format-1 stored state still loads.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from state import keys
from state.definition import parse_definition
from state.limits import CEILINGS
from state.registry import REGISTRY_KEY, VERSION_KEY, Registry
from state.results import experiment_document, experiment_matrices
from state.store import Client, read_counters
from state.units import FORMAT_2, FORMAT_3, UnitState, pack_format_1
from state.warnings import experiment_warnings
from stream.messages import Event, Exposure, encode_event, encode_exposure
from tests.support.workers import WorkerThread as Worker
from tests.support.workers import read_dead_letters as dead_letters
from tests.support.workers import wait_applied
from workers.dev.embedded import Broker
from workers.settings import Settings

from .conftest import unique
from .streaming import (
    SYNTH_T0,
    assert_documents_equal,
    create_topics,
    event_accounting,
    publish,
    read_unit_states,
    redis_client,
    streaming_settings,
    synthetic_batch_document,
    synthetic_definition,
    synthetic_stream,
)

Message = tuple[str, bytes, bytes]
NORMAL = "normal"


def wait_until(cond: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise TimeoutError(what)


def exposure(experiment: str, unit: str, variation: str, ts: float, **cov: float) -> Message:
    return ("exposures", unit.encode(),
            encode_exposure(Exposure(experiment, unit, variation, ts, cov)))


def event(unit: str, name: str, ts: float, value: float = 1.0, x: str | None = None,
          event_id: str | None = None, key: str | None = None) -> Message:
    return ("events", (key or unit).encode(),
            encode_event(Event(unit, name, ts, value, x, event_id)))


def scrape_metrics(s: Settings) -> dict[str, float]:
    """``GET /metrics`` of a real API app on the test's Redis."""
    from fastapi.testclient import TestClient

    from workers.api.app import create_app, resolve_auth

    s = replace(s, api_read_tokens=("read-1",), api_admin_tokens=("admin-1",))
    with TestClient(create_app(s, auth=resolve_auth(s)[0], lag_interval=None)) as api:
        r = api.get("/metrics", headers={"Authorization": "Bearer read-1"})
    assert r.status_code == 200
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in r.text.splitlines() if line and not line.startswith("#")}


def counters(client: Client, s: Settings) -> dict[str, float]:
    return read_counters(client, range(s.partitions))


def codes(doc: dict[str, Any]) -> set[str]:
    return {w["code"] for w in doc["warnings"]}


def metric_totals(client: Client, x: str) -> dict[str, float]:
    """Σ over units of every column, from the merged moment matrices."""
    d = Registry(client).get(x)
    assert d is not None
    arms = experiment_matrices(client, d)
    out: dict[str, float] = {}
    for m in arms.values():
        if m.n:
            for i, name in enumerate(m.names):
                out[name] = out.get(name, 0.0) + m.n * float(m.mean[i])
    return out


# ----------------------------------------------------------------------------- item 1


def wide_definition(x: str) -> dict[str, Any]:
    """128 metrics + a model + 1 covariate = 257 columns (the issue's poison before the fix)."""
    return {"id": x, "variations": ["a", "b"],
            "metrics": [{"name": f"m{i}", "event": f"e{i}", "aggregate": "count"}
                        for i in range(128)],
            "covariates": ["x"], "model": "linear"}


def store_definition(client: Client, d: dict[str, Any]) -> None:
    """Write a definition as the registry of today does (``Registry.create`` without its
    newer checks), so a definition a later release refuses can still be stored."""
    client.hset(REGISTRY_KEY, d["id"], parse_definition(d, CEILINGS).to_json())
    client.incr(VERSION_KEY)


def test_a_257_column_definition_counts_next_to_a_normal_one(broker: Broker,
                                                               redis_url: str) -> None:
    s = streaming_settings(broker.bootstrap, redis_url, unique("wide"), partitions=2)
    client = redis_client(s)
    store_definition(client, wide_definition("wide"))
    Registry(client).create(parse_definition(synthetic_definition(NORMAL)))
    stream = synthetic_stream(NORMAL, 300, seed=11, duplicate=0.0)
    rng = np.random.default_rng(11)
    wide: list[Message] = []
    truth = np.zeros(128)
    for i in range(200):
        u = f"u{i}"  # the same units as the normal experiment: same partitions
        wide.append(exposure("wide", u, "ab"[i % 2], SYNTH_T0 + i, x=float(i % 7)))
        for k in rng.choice(128, 5, replace=False):
            wide.append(event(u, f"e{k}", SYNTH_T0 + i + 1.0))
            truth[k] += 1
    create_topics(s)
    publish(s, [*wide, *stream.messages])
    w = Worker(s)
    w.start()
    try:
        wait_applied(client, len(wide) + len(stream.messages), w)
    finally:
        w.stop()
    c = counters(client, s)
    assert c.get("dead_letters", 0) == 0
    assert c["wide:exposures"] == 200
    states = read_unit_states(client, "wide", s.partitions, s.unit_buckets)
    assert len(states) == 200 and all(len(st.raw) == 257 for st in states.values())
    per_metric = np.sum([st.raw[:128] for st in states.values()], axis=0)
    assert per_metric.tolist() == truth.tolist()  # every event counted once, exactly
    totals = metric_totals(client, "wide")  # and in the moment matrices
    assert np.allclose([totals[f"m{k}"] for k in range(128)], truth, rtol=1e-12)
    acc = event_accounting(client, NORMAL, stream, s.partitions, s.unit_buckets)
    assert acc["lost"] == 0 and acc["double_counted"] == 0 and acc["wrong_units"] == 0


def test_an_experiment_whose_rules_raise_is_dead_lettered_and_the_rest_counts(
        broker: Broker, redis_url: str) -> None:
    """The poison: a definition whose layout changed under stored state (written past the
    registry's check). Every batch building it raises; before, the worker crash-looped and
    stalled every experiment of the partition."""
    s = streaming_settings(broker.bootstrap, redis_url, unique("poison"), partitions=2)
    client = redis_client(s)
    first = {"id": "poison", "variations": ["a", "b"],
             "metrics": [{"name": "clicks", "event": "poke", "aggregate": "count"}]}
    Registry(client).create(parse_definition(first))
    Registry(client).create(parse_definition(synthetic_definition(NORMAL)))
    create_topics(s)
    before: list[Message] = []
    for i in range(50):
        before += [exposure("poison", f"u{i}", "ab"[i % 2], SYNTH_T0 + i),
                   event(f"u{i}", "poke", SYNTH_T0 + i + 1.0, x="poison")]
    publish(s, before)
    w = Worker(s, "w1")
    w.start()
    try:
        wait_applied(client, len(before), w)
    finally:
        w.stop()
    # the layout changes under the stored unit states and matrices
    changed = {**first, "metrics": [*first["metrics"],
                                    {"name": "spend", "event": "pay", "aggregate": "sum"}]}
    store_definition(client, changed)

    stream = synthetic_stream(NORMAL, 400, seed=12, duplicate=0.0)
    poison: list[Message] = []
    for i in range(50, 120):  # new units' exposures; events of units exposed before
        poison += [exposure("poison", f"u{i}", "ab"[i % 2], SYNTH_T0 + i),
                   event(f"u{i % 50}", "poke", SYNTH_T0 + i + 1.0, x="poison"),
                   event(f"u{i % 50}", "pay", SYNTH_T0 + i + 2.0, 3.0)]  # untagged
    publish(s, [m for pair in zip(poison, stream.messages, strict=False) for m in pair]
            + stream.messages[len(poison):])
    total = len(before) + len(poison) + len(stream.messages)
    w = Worker(s, "w2")
    w.start()
    try:
        wait_applied(client, total, w)
        assert w.is_alive()
    finally:
        w.stop()
    letters = dead_letters(s, len(poison))
    assert len(letters) == len(poison)
    assert all("'poison'" in d["reason"] and "failed" in d["reason"] and "layout" in d["reason"]
               for d in letters), letters[0]["reason"]
    c = counters(client, s)
    assert c["poison:build_failed"] == len(poison)
    assert c["dead_letters"] == len(poison)
    assert c["poison:exposures"] == 50  # before the change only
    acc = event_accounting(client, NORMAL, stream, s.partitions, s.unit_buckets)
    assert acc["lost"] == 0 and acc["double_counted"] == 0 and acc["wrong_units"] == 0
    d = Registry(client).get(NORMAL)
    assert d is not None
    live = experiment_document(client, d)
    assert_documents_equal(live, synthetic_batch_document(stream.frame), 1e-9)
    assert live["warnings"] == []
    p = Registry(client).get("poison")
    assert p is not None
    warned = [x for x in experiment_warnings("poison", c, {}) if x["code"] == "build_failed"]
    assert len(warned) == 1 and str(len(poison)) in warned[0]["detail"]
    m = scrape_metrics(s)
    assert m['liftstream_experiment_counter_total{counter="build_failed",'
             'experiment="poison"}'] == len(poison)


# ----------------------------------------------------------------------------- item 3


def test_a_flood_of_never_exposed_units_cannot_crowd_out_members(broker: Broker,
                                                                 redis_url: str) -> None:
    """Flood untagged events of non-members at ten times the held store's capacity, then send
    members' events before their exposures, then the exposures: every member event counts;
    the evictions are counted and warned about."""
    capacity = 40  # units held per partition
    s = streaming_settings(broker.bootstrap, redis_url, unique("held"), partitions=2,
                           max_pending_events=capacity)
    client = redis_client(s)
    Registry(client).create(parse_definition(synthetic_definition(NORMAL)))
    create_topics(s)
    flood = [event(f"ghost{i}", "signup", SYNTH_T0 + i * 0.01)
             for i in range(10 * capacity * s.partitions)]
    members = [f"m{i}" for i in range(capacity)]  # fits any one partition
    early = [event(u, name, SYNTH_T0 + 100.0 + k, 2.0, x=NORMAL if k % 2 else None,
                   event_id=f"{u}:{k}")
             for k, name in enumerate(["purchase", "signup", "purchase"]) for u in members]
    exposures = [exposure(NORMAL, u, "control", SYNTH_T0 + 50.0, x=0.5) for u in members]
    mis_keyed = [event("m0", "purchase", SYNTH_T0 + 120.0, 5.0, key="someone-else")]
    w = Worker(s)
    w.start()
    try:
        sent = 0
        for k in range(0, len(flood), 100):  # in rounds: many batches, the store fills up
            publish(s, flood[k:k + 100])
            sent += len(flood[k:k + 100])
            wait_applied(client, sent, w)
        for batch in (early, mis_keyed, exposures):
            publish(s, batch)
            sent += len(batch)
            wait_applied(client, sent, w)
    finally:
        w.stop()
    held = [client.hlen(keys.pending(p)) for p in range(s.partitions)]
    assert max(held) <= capacity
    states = read_unit_states(client, NORMAL, s.partitions, s.unit_buckets)
    assert sorted(states) == sorted(members)
    for u in members:  # purchase 2 + purchase 2 (revenue), signup (converted)
        assert states[u].raw[:2] == (4.0, 1.0), (u, states[u].raw)
    c = counters(client, s)
    assert c.get("held_overflow", 0) == 0
    assert c["held_evicted"] >= len(flood) - capacity * s.partitions
    assert c[f"{NORMAL}:held_evicted"] == c["held_evicted"]  # the ghosts waited for NORMAL
    d = Registry(client).get(NORMAL)
    assert d is not None
    doc = experiment_document(client, d)
    assert "held_events_evicted" in codes(doc)
    m = scrape_metrics(s)
    assert m['liftstream_ingest_counter_total{counter="held_evicted"}'] == c["held_evicted"]
    assert m[f'liftstream_experiment_counter_total{{counter="held_evicted",'
             f'experiment="{NORMAL}"}}'] == c["held_evicted"]
    letters = dead_letters(s, 1)
    assert len(letters) == 1 and "key" in letters[0]["reason"]
    assert "someone-else" in letters[0]["reason"] and "'m0'" in letters[0]["reason"]
    print(f"\nflood {len(flood)} ghost events at capacity {capacity}/partition: "
          f"held_evicted {int(c['held_evicted'])}; members' early events counted "
          f"{len(early)} of {len(early)}")


# ----------------------------------------------------------------------------- item 5


def test_stop_freezes_and_the_window_is_half_open(broker: Broker, redis_url: str) -> None:
    s = streaming_settings(broker.bootstrap, redis_url, unique("stop"), partitions=2)
    client = redis_client(s)
    reg = Registry(client)
    reg.create(parse_definition(synthetic_definition("frozen")))
    end = SYNTH_T0 + 1000.0
    reg.create(parse_definition({**synthetic_definition("ending"), "end": end}))
    create_topics(s)
    stream = synthetic_stream("frozen", 200, seed=21, duplicate=0.0)
    waiting = [f"late{i}" for i in range(20)]  # held before the stop, exposed after
    held = [event(u, "purchase", SYNTH_T0 + 500.0, 3.0, x="frozen") for u in waiting]
    held += [event(u, "signup", SYNTH_T0 + 500.0) for u in waiting]
    edge = [exposure("ending", "e1", "control", end - 10.0, x=1.0),
            exposure("ending", "e2", "t1", end, x=1.0),  # ts == end: outside
            event("e1", "purchase", end - 0.001, 2.0, x="ending"),
            event("e1", "purchase", end, 7.0, x="ending")]  # ts == end: outside
    w = Worker(s)
    w.start()
    try:
        publish(s, [*stream.messages, *held, *edge])
        sent = len(stream.messages) + len(held) + len(edge)
        wait_applied(client, sent, w)
        d = reg.get("frozen")
        assert d is not None
        doc_before = experiment_document(client, d)
        mats_before = {v: client.hget(keys.matrices(p, "frozen"), v)
                       for p in range(s.partitions) for v in ("control", "t1", "t2")}
        units_before = read_unit_states(client, "frozen", s.partitions, s.unit_buckets)
        reg.stop("frozen")
        wait_until(lambda: w.worker.builder.layouts["frozen"].definition.status == "stopped",
                   "the worker did not see the stop")
        after: list[Message] = []
        for i in range(200):  # tagged and untagged events of exposed units
            u = f"u{i}"
            after.append(event(u, "purchase", SYNTH_T0 + 300.0, 1.0, x="frozen"))
            after.append(event(u, "signup", SYNTH_T0 + 300.0))
        after += [exposure("frozen", u, "t1", SYNTH_T0 + 400.0, x=0.0) for u in waiting]
        after += [exposure("frozen", f"new{i}", "t2", SYNTH_T0 + 400.0, x=0.0)
                  for i in range(10)]
        publish(s, after)
        sent += len(after)
        wait_applied(client, sent, w)
    finally:
        w.stop()
    mats_after = {v: client.hget(keys.matrices(p, "frozen"), v)
                  for p in range(s.partitions) for v in ("control", "t1", "t2")}
    assert mats_after == mats_before
    assert read_unit_states(client, "frozen", s.partitions, s.unit_buckets) == units_before
    d = reg.get("frozen")
    assert d is not None
    doc = experiment_document(client, d)
    assert doc["slices"][0]["metrics"] == doc_before["slices"][0]["metrics"]
    assert doc["window"]["phase"] == "stopped"
    c = counters(client, s)
    assert c["frozen:events_after_stop"] == 200
    assert c["frozen:exposures_after_stop"] == 30
    assert {"events_after_stop", "exposures_after_stop"} <= codes(doc)
    # half-open [start, end): ts == end neither exposes nor counts
    ending = read_unit_states(client, "ending", s.partitions, s.unit_buckets)
    assert sorted(ending) == ["e1"] and ending["e1"].raw[0] == 2.0
    assert c["ending:exposures_outside_window"] == 1
    assert c["ending:events_outside_window"] == 1


# ----------------------------------------------------------------------------- item 6


def test_event_ids_colliding_in_crc32_both_count_and_memory_is_bounded(
        broker: Broker, redis_url: str) -> None:
    cap = 300
    s = streaming_settings(broker.bootstrap, redis_url, unique("ids"), partitions=2,
                           event_ids_per_unit=cap)
    client = redis_client(s)
    Registry(client).create(parse_definition(synthetic_definition("ids")))
    create_topics(s)
    first: list[Message] = [exposure("ids", u, "control", SYNTH_T0, x=0.0)
                            for u in ("c1", "busy", "old")]
    first.append(event("old", "purchase", SYNTH_T0 + 1.0, 1.0, event_id="before-upgrade"))
    publish(s, first)
    w = Worker(s, "w1")
    w.start()
    try:
        wait_applied(client, len(first), w)
    finally:
        w.stop()
    # rewrite "old" as a release before format 2 stored it: CRC-32 fingerprints
    bucket = keys.units(next(p for p in range(s.partitions)
                             if client.hexists(keys.units(p, "ids", keys.bucket_of(
                                 "old", s.unit_buckets)), "old")),
                        "ids", keys.bucket_of("old", s.unit_buckets))
    blob = client.hget(bucket, "old")
    assert isinstance(blob, bytes)
    st = UnitState.unpack(blob)
    client.hset(bucket, "old", pack_format_1(st, (123, 456)))

    n_busy = 1000
    rest: list[Message] = [
        event("c1", "purchase", SYNTH_T0 + 2.0, 1.0, event_id="plumless"),
        event("c1", "purchase", SYNTH_T0 + 3.0, 1.0, event_id="buckeroo"),
        event("c1", "purchase", SYNTH_T0 + 4.0, 1.0, event_id="plumless"),  # a duplicate
        event("old", "purchase", SYNTH_T0 + 5.0, 1.0, event_id="after-upgrade")]
    rest += [event("busy", "signup", SYNTH_T0 + 10.0 + i, 1.0, event_id=f"busy:{i}")
             for i in range(n_busy)]
    rest.append(event("busy", "signup", SYNTH_T0 + 5000.0, 1.0,
                      event_id=f"busy:{n_busy - 1}"))  # a recent duplicate: still known
    publish(s, rest)
    w = Worker(s, "w2")
    w.start()
    try:
        wait_applied(client, len(first) + len(rest), w)
    finally:
        w.stop()
    states = read_unit_states(client, "ids", s.partitions, s.unit_buckets)
    assert states["c1"].raw[0] == 2.0  # plumless and buckeroo: both; the repeat: once
    assert states["old"].raw[0] == 2.0  # the format-1 state loaded and went on
    assert states["busy"].raw[1] == n_busy
    assert len(states["busy"].seen) == cap
    c = counters(client, s)
    assert c["ids:duplicate_events"] == 2
    assert c["ids:event_ids_evicted"] == n_busy - cap + 2  # + the 2 format-1 CRC ids
    blob_busy = next(client.hget(keys.units(p, "ids", keys.bucket_of("busy", s.unit_buckets)),
                                 "busy") for p in range(s.partitions)
                     if client.hexists(keys.units(p, "ids", keys.bucket_of(
                         "busy", s.unit_buckets)), "busy"))
    # format 3: 3 B header, 3 columns, the cap of 64-bit ids, the u40 millisecond time
    assert blob_busy is not None and len(blob_busy) == 3 + 8 * 3 + 8 * cap + 5
    blob_old = client.hget(bucket, "old")  # the format-1 state, written back in format 3
    assert isinstance(blob_old, bytes) and blob_old[1] & (FORMAT_3 | FORMAT_2) == FORMAT_3
    d = Registry(client).get("ids")
    assert d is not None
    assert "event_ids_evicted" in codes(experiment_document(client, d))
