"""Malformed and hostile input: nothing crashes, every bad message is dead-lettered (DESIGN §2).

10,000 invalid messages -- hypothesis draws whole messages (random bytes, text, JSON) and bad
field values or missing fields that a seeded random applies to valid messages, plus
hand-written cases (wrong types, huge strings, NaN/Infinity literals, unknown experiment and
variation, bad timestamps, invalid UTF-8, deep nesting, truncation) -- are interleaved with a
known valid stream. Every invalid message must come back exactly once on the dead-letter topic
with a reason, and the valid messages must be counted exactly: the live results equal the
batch analysis of the valid units. Each generated message is invalid by construction (see the
strategies), never by asking the parser under test.

Smaller tests: poison records (a tombstone, a 600 kB message) must not stop the worker; valid
but hostile traffic (events dated 2100, a flood of events for units never exposed) must not
make the worker drop held events or hold unboundedly many.
"""

from __future__ import annotations

import base64
import collections
import json
import math
import random
import re
import time
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from state.definition import parse_definition
from state.registry import Registry
from state.results import experiment_document
from state.store import PartitionStore, read_counters
from stream.messages import DEAD_LETTER_ORIGINAL_BYTES, MAX_TS, MIN_TS, Event, encode_event
from tests.support.workers import WorkerThread, read_dead_letters, wait_applied
from tests.support.workers import publish as publish_all
from workers.dev.embedded import Broker
from workers.settings import Settings

from .conftest import unique
from .streaming import (
    SYNTH_T0,
    SYNTH_VARIATIONS,
    assert_documents_equal,
    create_topics,
    event_accounting,
    messages_applied,
    redis_client,
    streaming_settings,
    synthetic_batch_document,
    synthetic_definition,
    synthetic_stream,
)

EXP = "hostile"
INVALID = 10_000
VALID_UNITS = 2_000
PIECES = 2_500  # drawn by hypothesis, then combined into INVALID messages
ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
REQUIRED = {"exposures": ("experiment", "unit", "variation", "ts"),
            "events": ("unit", "event", "ts")}
Message = tuple[str, bytes | None, bytes | None]  # (topic kind, key, value)

# ----------------------------------------------------------------------------- strategies

json_scalars = (st.none() | st.booleans() | st.integers() | st.floats()
                | st.text(max_size=20))
json_values = st.recursive(json_scalars,
                           lambda c: st.lists(c, max_size=4)
                           | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=10)
containers = (st.lists(st.integers(), max_size=3)
              | st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
# wrong JSON types for a string field (null is allowed where the field is optional)
not_string = st.booleans() | st.integers() | st.floats() | containers
not_number = st.none() | st.booleans() | st.text(max_size=12) | containers
out_of_range_number = (st.floats().filter(lambda x: not (math.isfinite(x) and abs(x) <= 1e15))
                       | st.integers().filter(lambda i: abs(i) > 10**15))
# longer than 256 characters: a short drawn text repeated (cheaper than drawing 257 characters)
too_long = st.builds(lambda t, n: (t * n)[:n], st.text(min_size=1, max_size=4),
                     st.integers(257, 400))
bad_id = st.none() | not_string | st.just("") | too_long
bad_experiment = (st.none() | not_string | st.just("")
                  | st.text(min_size=1, max_size=80).filter(lambda t: not ID.fullmatch(t))
                  | st.from_regex(ID, fullmatch=True).filter(lambda t: t != EXP))
bad_ts = (st.none() | st.booleans() | containers
          | st.floats().filter(lambda x: not MIN_TS <= x < MAX_TS)
          | st.integers().filter(lambda i: not MIN_TS <= i < MAX_TS)
          # no decimal digit: no year, so no ISO-8601 timestamp
          | st.text(st.characters(blacklist_categories=("Nd", "Cs")), max_size=30)
          # longer than 64 characters even after strip()
          | st.builds(lambda t, n: (t * n)[:n],
                      st.text(st.characters(blacklist_categories=("Zs", "Zl", "Zp", "Cc", "Cs")),
                              min_size=1, max_size=4), st.integers(65, 90))
          | st.sampled_from(["1999-12-31T23:59:59Z", "2101-01-01T00:00:00", "2024-02-30",
                             "2024-13-01T00:00:00", "2025-06-15T10:00:00+25:00"]))
bad_covariates = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
                  | st.lists(st.floats(), max_size=3)
                  | st.dictionaries(st.text(min_size=1, max_size=8),
                                    not_number | out_of_range_number, min_size=1, max_size=3)
                  | st.integers(65, 70).map(lambda n: {f"c{i}": 0.5 for i in range(n)})
                  | st.just({"": 1.0}) | too_long.map(lambda name: {name: 1.0}))
bad_field = {
    "exposures": {"experiment": bad_experiment, "unit": bad_id,
                  "variation": (st.none() | not_string
                                | st.text(max_size=30).filter(
                                    lambda t: t not in SYNTH_VARIATIONS)),
                  "ts": bad_ts, "covariates": bad_covariates},
    "events": {"unit": bad_id, "event": bad_id, "ts": bad_ts,
               "value": not_number | out_of_range_number,
               "experiment": bad_experiment.filter(lambda v: v is not None),
               "id": bad_id.filter(lambda v: v is not None)},
}


def has_required_fields(kind: str, raw: bytes) -> bool:
    """Whether ``raw`` is a JSON object holding every required field (maybe valid)."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except ValueError:
        return False
    return isinstance(doc, dict) and all(k in doc for k in REQUIRED[kind])


def valid_doc(kind: str, unit: str, rng: random.Random) -> dict[str, Any]:
    """A valid exposure or event (for a unit of the valid stream) to corrupt."""
    ts = SYNTH_T0 + rng.uniform(0.0, 240.0)
    if kind == "exposures":
        return {"experiment": EXP, "unit": unit, "variation": rng.choice(SYNTH_VARIATIONS),
                "ts": ts, "covariates": {"x": rng.gauss(0.0, 1.0)}}
    doc: dict[str, Any] = {"unit": unit, "event": rng.choice(["purchase", "signup"]),
                           "ts": ts, "value": rng.uniform(0.0, 50.0)}
    if rng.random() < 0.5:
        doc["experiment"] = EXP
    if rng.random() < 0.5:
        doc["id"] = f"{unit}:h{rng.randrange(10**9)}"
    return doc


# (topic kind, "raw", message bytes) | (kind, "field", (field, bad value)) | (kind, "missing",
# required field): a field piece corrupts one field of a valid message, a missing piece drops it
Piece = tuple[str, str, Any]


@st.composite
def hostile_piece(draw: Any) -> Piece:
    """A whole invalid message, or a way to make a valid message invalid."""
    kind = draw(st.sampled_from(["exposures", "events"]))
    how = draw(st.sampled_from(["bytes", "text", "json", "field", "field", "missing"]))
    if how == "bytes":
        raw = draw(st.binary(max_size=200).filter(lambda b: not has_required_fields(kind, b)))
    elif how == "text":
        raw = draw(st.text(max_size=200).map(str.encode).filter(
            lambda b: not has_required_fields(kind, b)))
    elif how == "json":
        raw = draw(json_values.map(lambda v: json.dumps(v).encode()).filter(
            lambda b: not has_required_fields(kind, b)))
    elif how == "missing":
        return kind, how, draw(st.sampled_from(REQUIRED[kind]))
    else:
        field = draw(st.sampled_from(sorted(bad_field[kind])))
        return kind, how, (field, draw(bad_field[kind][field]))
    return kind, "raw", raw


def draw_pieces(count: int) -> list[Piece]:
    """The distinct pieces among ``count`` drawn by hypothesis (deterministic: derandomized)."""
    out: list[Piece] = []
    per_example = 10

    @settings(max_examples=count // per_example + 20, database=None, derandomize=True,
              deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.lists(hostile_piece(), min_size=per_example, max_size=per_example,
                    unique_by=repr))
    def collect(batch: list[Piece]) -> None:
        out.extend(batch)

    collect()
    unique_pieces = list({repr(p): p for p in out[:count]}.values())
    assert len(unique_pieces) >= count // 2, f"hypothesis drew {len(unique_pieces)} pieces"
    return unique_pieces


def draw_hostile(count: int, units: list[str], rng: random.Random) -> list[tuple[str, bytes]]:
    """``count`` invalid messages: every whole message hypothesis drew, then valid messages
    of random units, each corrupted by a drawn bad field value or missing field."""
    pieces = draw_pieces(PIECES)
    out = [(kind, raw) for kind, how, raw in pieces if how == "raw"][:count]
    fixes = [p for p in pieces if p[1] != "raw"]
    while len(out) < count:
        kind, how, payload = rng.choice(fixes)
        doc = valid_doc(kind, rng.choice(units), rng)
        if how == "missing":
            del doc[payload]
        else:
            doc[payload[0]] = payload[1]
        out.append((kind, json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode()))
    return out


def hand_written(units: list[str]) -> list[tuple[str, bytes]]:
    """Invalid messages written by hand, one line per hostile idea."""
    u = units[0]
    exp = f'"experiment": "{EXP}", "unit": "{u}", "variation": "t1"'
    ev = f'"unit": "{u}", "event": "purchase"'
    huge = "h" * 70_000
    cases: list[tuple[str, str | bytes]] = [
        ("exposures", "{" + exp + ', "ts": NaN}'),
        ("exposures", "{" + exp + ', "ts": Infinity}'),
        ("exposures", "{" + exp + ', "ts": -Infinity}'),
        ("exposures", "{" + exp + ', "ts": 1e999}'),
        ("exposures", "{" + exp + ', "ts": 1750000000, "covariates": {"x": NaN}}'),
        ("exposures", "{" + exp + ', "ts": 1750000000, "covariates": {"x": 1e16}}'),
        ("exposures", "{" + exp + ', "ts": 1750000000, "covariates": [1, 2]}'),
        ("exposures", "{" + exp + ', "ts": 1.75e9, "attributes": {"country": 3}}'),
        ("exposures", "{" + exp + ', "ts": 1.75e9, "attributes": ["DE"]}'),
        ("exposures", "{" + exp + ', "ts": 1.75e9, "attributes": {"": "DE"}}'),
        ("exposures", "{" + exp + ', "ts": 1.75e9, "attributes": {"c": "' + "v" * 129 + '"}}'),
        ("exposures", "{" + exp + ', "ts": 1.75e9, "attributes": {'
                      + ", ".join(f'"a{i}": "x"' for i in range(33)) + "}}"),
        ("exposures", "{" + exp + ', "ts": "yesterday"}'),
        ("exposures", "{" + exp + ', "ts": 1750000000000}'),  # milliseconds
        ("exposures", "{" + exp + ', "ts": "1999-12-31T23:59:59Z"}'),
        ("exposures", "{" + exp + ', "ts": true}'),
        ("exposures", f'{{"experiment": "nope", "unit": "{u}", "variation": "t1", "ts": 1.75e9}}'),
        ("exposures", f'{{"experiment": "{EXP}", "unit": "{u}", "variation": "t9", '
                      '"ts": 1.75e9}'),
        ("exposures", f'{{"experiment": "{EXP}", "unit": "{u}", "variation": 1, "ts": 1.75e9}}'),
        ("exposures", f'{{"experiment": "{EXP}", "unit": 17, "variation": "t1", "ts": 1.75e9}}'),
        ("exposures", f'{{"experiment": "{EXP}", "unit": "", "variation": "t1", "ts": 1.75e9}}'),
        ("exposures", f'{{"experiment": "bad id!", "unit": "{u}", "variation": "t1", '
                      '"ts": 1.75e9}'),
        ("exposures", f'{{"experiment": "{EXP}", "unit": "{huge}", "variation": "t1", '
                      '"ts": 1.75e9}'),  # over 64 KiB
        ("exposures", f'{{"experiment": "{EXP}", "unit": "{"u" * 300}", "variation": "t1", '
                      '"ts": 1.75e9}'),
        ("exposures", "{" + exp + ', "ts": 1.75e9, "pad": "' + huge + '"}'),  # over 64 KiB
        ("exposures", ("{" + exp + ', "ts": 1.75e9}').encode().replace(b"t1", b"\xff\xfe")),
        ("exposures", b'{"experiment": "\xc0\xaf", "unit": "u", "variation": "t1", '
                      b'"ts": 1.75e9}'),  # overlong UTF-8
        ("exposures", b'{"experiment": "' + EXP.encode() + b'", "unit": "\xed\xa0\x80", '
                      b'"variation": "t1", "ts": 1.75e9}'),  # UTF-8 encoded surrogate
        ("exposures", f'{{"experiment": "{EXP}", "unit": "\\ud800", "variation": "t1", '
                      '"ts": 1.75e9}'),  # lone surrogate escape
        ("exposures", "[" * 30_000 + "]" * 30_000),
        ("exposures", '{"experiment": ' + "[" * 20_000 + "]" * 20_000 + "}"),
        ("exposures", "{" + exp + ', "ts": 1.75e9, "covariates": {"x": '
                      + "[" * 20_000 + "]" * 20_000 + "}}"),
        ("exposures", ("{" + exp + ', "ts": 1.75e9}')[:25]),  # truncated
        ("exposures", "{" + exp + ', "ts": 1.75e9}garbage'),
        ("exposures", "{" + exp + ', "ts": 1.75e9}{' + exp + ', "ts": 1.75e9}'),
        ("exposures", "[{" + exp + ', "ts": 1.75e9}]'),
        ("exposures", ""),
        ("exposures", "   "),
        ("exposures", "null"),
        ("events", "{" + ev + ', "ts": 1.75e9, "value": NaN}'),
        ("events", "{" + ev + ', "ts": 1.75e9, "value": Infinity}'),
        ("events", "{" + ev + ', "ts": 1.75e9, "value": 1e300}'),
        ("events", "{" + ev + ', "ts": 1.75e9, "value": "12.5"}'),
        ("events", "{" + ev + ', "ts": 1.75e9, "value": null}'),
        ("events", "{" + ev + ', "ts": "2024-02-30T00:00:00"}'),
        ("events", "{" + ev + ', "ts": -1}'),
        ("events", "{" + ev + ', "ts": 1.75e9, "experiment": "nope"}'),
        ("events", "{" + ev + ', "ts": 1.75e9, "experiment": "no pe"}'),
        ("events", "{" + ev + ', "ts": 1.75e9, "id": ""}'),
        ("events", "{" + ev + ', "ts": 1.75e9, "id": 5}'),
        ("events", "{" + ev + ', "ts": 1.75e9, "id": "' + "i" * 257 + '"}'),
        ("events", f'{{"unit": "{u}", "event": "", "ts": 1.75e9}}'),
        ("events", f'{{"unit": "{u}", "event": ["purchase"], "ts": 1.75e9}}'),
        ("events", f'{{"unit": "{u}", "ts": 1.75e9}}'),
        ("events", '{"unit": "' + huge + '", "event": "purchase", "ts": 1.75e9}'),
        ("events", b'{"unit": "\x80", "event": "purchase", "ts": 1.75e9}'),
        ("events", b"\x00\x01\x02\xff"),
        ("events", "[" * 30_000 + "]" * 30_000),
    ]
    return [(k, v if isinstance(v, bytes) else v.encode()) for k, v in cases]


def valid_extras(units: list[str], rng: random.Random) -> list[Message]:
    """Valid events no metric uses (unrouted): odd but legal timestamps and extra fields."""
    out: list[Message] = []
    for i in range(300):
        u = rng.choice(units)
        ts: float | str = (int(SYNTH_T0) + i if i % 3 == 0 else
                           "2025-06-15T15:06:40Z" if i % 3 == 1 else "2025-06-15T15:06:40+02:00")
        doc = {"unit": u, "event": "pageview", "ts": ts, "extra": {"a": [1, None, "b"]}}
        out.append(("events", u.encode(), json.dumps(doc).encode()))
    return out


# ----------------------------------------------------------------------------- plumbing


def reason_kind(reason: str) -> str:
    """The field a dead-letter reason names ("unknown experiment" etc. for worker checks)."""
    if reason.startswith("unknown "):
        return " ".join(reason.split()[:2])
    return reason.split(":")[0].split(".")[0]


def run_stream(s: Settings, messages: Sequence[Message]) -> WorkerThread:
    create_topics(s)
    publish_all(s, messages)
    worker = WorkerThread(s)
    worker.start()
    return worker


# ----------------------------------------------------------------------------- tests


def test_hostile_messages_are_dead_lettered_and_valid_ones_counted(broker: Broker,
                                                                   redis_url: str) -> None:
    s = streaming_settings(broker.bootstrap, redis_url, unique("hostile"), partitions=4)
    client = redis_client(s)
    Registry(client).create(parse_definition(synthetic_definition(EXP)))
    stream = synthetic_stream(EXP, VALID_UNITS, seed=11)
    units = list(stream.frame.index)
    rng = random.Random(11)
    t0 = time.monotonic()
    manual = hand_written(units)
    invalid = manual + draw_hostile(INVALID - len(manual), units, rng)
    drawn_in = time.monotonic() - t0
    assert len(invalid) == INVALID
    bad: list[Message] = []
    for kind, value in invalid:
        key = rng.choice([None, rng.choice(units).encode(), rng.randbytes(8)])
        bad.append((kind, key, value))
    valid: list[Message] = [(k, key, v) for k, key, v in stream.messages]
    valid += valid_extras(units, rng)
    # interleave: the valid messages keep their order, the invalid ones go anywhere
    slots = sorted(rng.sample(range(len(valid) + len(bad)), len(bad)))
    messages: list[Message] = []
    vi = iter(valid)
    bi = iter(bad)
    taken = set(slots)
    for i in range(len(valid) + len(bad)):
        messages.append(next(bi) if i in taken else next(vi))

    worker = run_stream(s, messages)
    try:
        wait_applied(client, len(messages), worker, timeout=120)
        assert worker.is_alive(), f"the worker stopped: {worker.error!r}"
    finally:
        worker.stop()
    assert worker.error is None
    letters = read_dead_letters(s, INVALID)

    topics = {"exposures": s.topic_exposures, "events": s.topic_events}
    # dead letters keep at most the first 64 KiB of an original, and its full size
    sent: collections.Counter[tuple[str, bytes, int]] = collections.Counter(
        (topics[k], (v or b"")[:DEAD_LETTER_ORIGINAL_BYTES], len(v or b"")) for k, _, v in bad)
    got: collections.Counter[tuple[str, bytes, int]] = collections.Counter(
        (d["topic"], base64.b64decode(d["original_b64"]), d["original_size"]) for d in letters)
    reasons = collections.Counter(reason_kind(d["reason"]) for d in letters)
    totals = read_counters(client, range(s.partitions))
    print(f"\n{len(bad)} invalid messages ({len(manual)} hand-written, drawn in "
          f"{drawn_in:.1f} s) among {len(valid)} valid; {len(letters)} dead letters; "
          f"reasons by field: {dict(reasons.most_common())}")
    assert len(letters) == INVALID
    assert all(isinstance(d["reason"], str) and d["reason"].strip() for d in letters)
    assert got == sent, (f"missing: {list((sent - got).elements())[:5]}, "
                         f"unexpected: {list((got - sent).elements())[:5]}")
    assert len({(d["topic"], d["partition"], d["offset"]) for d in letters}) == INVALID
    assert int(totals["dead_letters"]) == INVALID
    assert messages_applied(client) == len(messages)

    d = Registry(client).get(EXP)
    assert d is not None
    live = experiment_document(client, d)
    compared = assert_documents_equal(live, synthetic_batch_document(stream.frame), 1e-9)
    acc = event_accounting(client, EXP, stream, s.partitions, s.unit_buckets)
    print(f"valid events in / counted / lost / double-counted: {acc['events_in']} / "
          f"{acc['counted']} (of {acc['countable']} countable) / {acc['lost']} / "
          f"{acc['double_counted']}; {compared} estimator numbers equal the batch analysis")
    assert acc["lost"] == 0 and acc["double_counted"] == 0
    assert acc["wrong_units"] == 0 and acc["extra_units"] == 0
    assert compared > 50
    counters = live["slices"][0]["counters"]
    assert counters["exposures"] == VALID_UNITS
    assert counters.get("repeat_exposures", 0) == stream.duplicate_exposures
    assert int(totals["events_unrouted"]) == 300


@pytest.mark.parametrize("value", [None, b'{"unit": "u1", "event": "purchase", "ts": 1.75e9, '
                                   b'"pad": "' + b"p" * 600_000 + b'"}'],
                         ids=["tombstone", "600kB"])
def test_poison_records_do_not_stop_the_worker(broker: Broker, redis_url: str,
                                               value: bytes | None) -> None:
    """A null record value (a tombstone) and a 600 kB message are dead letters too: the
    worker goes on with the valid messages behind them."""
    s = streaming_settings(broker.bootstrap, redis_url, unique("poison"), partitions=4)
    client = redis_client(s)
    Registry(client).create(parse_definition(synthetic_definition(EXP)))
    stream = synthetic_stream(EXP, 200, seed=5, duplicate=0.0)
    bad: list[Message] = [("events", b"u1", value), ("exposures", b"u2", value)]
    messages: list[Message] = [*bad, *stream.messages]
    worker = run_stream(s, messages)
    try:
        wait_applied(client, len(messages), worker, timeout=60)
    finally:
        worker.stop()
    assert worker.error is None
    letters = read_dead_letters(s, len(bad))
    assert len(letters) == len(bad)
    assert all(d["reason"] for d in letters)
    d = Registry(client).get(EXP)
    assert d is not None
    live = experiment_document(client, d)
    assert_documents_equal(live, synthetic_batch_document(stream.frame), 1e-9)


def test_a_far_future_event_does_not_discard_held_events(broker: Broker,
                                                          redis_url: str) -> None:
    """Valid events with a timestamp late in 2100 (inside the accepted range) must not move
    the grace-period clock of the whole partition: events held for units whose exposure is
    still on its way would expire and be lost."""
    s = streaming_settings(broker.bootstrap, redis_url, unique("future"), partitions=4)
    client = redis_client(s)
    Registry(client).create(parse_definition(synthetic_definition(EXP)))
    stream = synthetic_stream(EXP, 400, seed=3, duplicate=0.0)
    events = [m for m in stream.messages if m[0] == "events"]
    exposures = [m for m in stream.messages if m[0] == "exposures"]
    future: list[Message] = [
        ("events", f"f{i}".encode(), encode_event(Event(f"f{i}", "signup", MAX_TS - 60.0)))
        for i in range(40)]
    # every event before any exposure: all held; then, in later batches, the far-future events
    worker = run_stream(s, events)
    try:
        wait_applied(client, len(events), worker, timeout=60)
        publish_all(s, future)
        wait_applied(client, len(events) + len(future), worker, timeout=60)
        publish_all(s, exposures)
        wait_applied(client, len(stream.messages) + len(future), worker, timeout=60)
    finally:
        worker.stop()
    assert worker.error is None
    totals = read_counters(client, range(s.partitions))
    acc = event_accounting(client, EXP, stream, s.partitions, s.unit_buckets)
    print(f"\nheld events expired by {len(future)} events from 2100: "
          f"{int(totals.get('held_expired', 0))} units; events counted / lost: "
          f"{acc['counted']} / {acc['lost']}")
    assert acc["lost"] == 0 and acc["double_counted"] == 0
    d = Registry(client).get(EXP)
    assert d is not None
    live = experiment_document(client, d)
    assert_documents_equal(live, synthetic_batch_document(stream.frame), 1e-9)


def test_events_held_for_never_exposed_units_are_bounded(broker: Broker,
                                                         redis_url: str) -> None:
    """A flood of valid events for units that are never exposed must not grow the held-event
    store beyond ``max_pending_events`` (DESIGN §2: held, bounded, with a grace period)."""
    s = streaming_settings(broker.bootstrap, redis_url, unique("flood"), partitions=4,
                           max_pending_events=25)
    client = redis_client(s)
    Registry(client).create(parse_definition(synthetic_definition(EXP)))
    flood: list[Message] = [
        ("events", f"ghost{i}".encode(),
         encode_event(Event(f"ghost{i}", "signup", SYNTH_T0 + i * 0.01)))
        for i in range(1000)]
    worker = run_stream(s, [])
    try:
        for k in range(0, len(flood), 100):  # in rounds, so in many batches
            publish_all(s, flood[k:k + 100])
            wait_applied(client, k + 100, worker, timeout=60)
    finally:
        worker.stop()
    assert worker.error is None
    store = PartitionStore(client)
    held = [store.pending_count(p) for p in range(s.partitions)]
    evicted = int(read_counters(client, range(s.partitions)).get("held_evicted", 0))
    print(f"\nunits with held events per partition {held} (max_pending_events "
          f"{s.max_pending_events}), held_evicted {evicted}")
    # the loosest reading of the bound: per partition; at the bound the oldest go (counted)
    assert max(held) <= s.max_pending_events
    assert evicted == len(flood) - sum(held)
