"""Message validation: valid input parses, invalid input is rejected with a reason, never raises."""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.messages import (
    MAX_TS,
    MIN_TS,
    Event,
    Exposure,
    Rejected,
    dead_letter,
    encode_event,
    encode_exposure,
    parse_event,
    parse_exposure,
)

TS = 1_700_000_000.0


def exposure(**fields: Any) -> bytes:
    doc: dict[str, Any] = {"experiment": "exp-1", "unit": "u1", "variation": "control",
                           "ts": TS}
    doc.update(fields)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def event(**fields: Any) -> bytes:
    doc: dict[str, Any] = {"unit": "u1", "event": "purchase", "ts": TS}
    doc.update(fields)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def reason(result: object) -> str:
    assert isinstance(result, Rejected), result
    assert result.reason and "\n" not in result.reason
    return result.reason


# ----------------------------------------------------------------------------- valid input


def test_valid_exposure() -> None:
    e = parse_exposure(exposure(covariates={"recency": 3, "history": 120.5}))
    assert e == Exposure("exp-1", "u1", "control", TS, {"recency": 3.0, "history": 120.5})
    assert isinstance(e, Exposure)
    assert all(isinstance(v, float) for v in e.covariates.values())


def test_valid_event_defaults_and_extras_ignored() -> None:
    e = parse_event(event(extra={"nested": [1, 2]}, other="x"))
    assert e == Event("u1", "purchase", TS, 1.0, None)
    e2 = parse_event(event(value=-2.5, experiment="exp-1", ts=int(TS)))
    assert e2 == Event("u1", "purchase", TS, -2.5, "exp-1")
    assert isinstance(e2, Event) and isinstance(e2.ts, float)
    assert parse_event(event(experiment=None)) == Event("u1", "purchase", TS)


@pytest.mark.parametrize(("text", "expected"), [
    ("2023-11-14T22:13:20Z", TS),
    ("2023-11-14T22:13:20+00:00", TS),
    ("2023-11-14T22:13:20", TS),  # naive = UTC
    ("2023-11-14 22:13:20", TS),
    ("2023-11-15T00:13:20+02:00", TS),
    ("2023-11-14T17:13:20-05:00", TS),
    ("2023-11-14T22:13:20.250Z", TS + 0.25),
    ("2023-11-14", TS - (22 * 3600 + 13 * 60 + 20)),
])
def test_iso_timestamps(text: str, expected: float) -> None:
    e = parse_event(event(ts=text))
    assert isinstance(e, Event)
    assert e.ts == pytest.approx(expected, abs=1e-6)


def test_timestamp_range_is_years_2000_to_2100() -> None:
    assert isinstance(parse_event(event(ts="2000-01-01T00:00:00Z")), Event)
    assert isinstance(parse_event(event(ts="2100-12-31T23:59:59Z")), Event)
    assert isinstance(parse_event(event(ts=MIN_TS)), Event)
    assert "2000-2100" in reason(parse_event(event(ts="1999-12-31T23:59:59Z")))
    assert "2000-2100" in reason(parse_event(event(ts="2101-01-01T00:00:00Z")))
    assert "2000-2100" in reason(parse_event(event(ts=MAX_TS)))
    assert "milliseconds" in reason(parse_event(event(ts=TS * 1000)))
    assert "ts" in reason(parse_event(event(ts=0)))


def test_limits_are_inclusive() -> None:
    assert isinstance(parse_event(event(value=1e15)), Event)
    assert isinstance(parse_event(event(value=-1e15)), Event)
    assert isinstance(parse_exposure(exposure(unit="u" * 256, variation="v" * 256)), Exposure)
    assert isinstance(parse_exposure(exposure(experiment="e" * 64)), Exposure)
    covs = {f"c{i}": float(i) for i in range(64)}
    assert isinstance(parse_exposure(exposure(covariates=covs)), Exposure)


# ----------------------------------------------------------------------------- rejections

BAD_EXPOSURES: list[tuple[bytes, str]] = [
    (b"\xff\xfe{}", "UTF-8"),
    (b'{"experiment":"e","unit":"u","variation":"v","ts":1700000000,"x":"\xc3"}', "UTF-8"),
    (b"", "empty"),
    (b"not json", "not JSON"),
    (b'{"experiment": "e"', "not JSON"),
    (b"[1, 2]", "object"),
    (b'"text"', "object"),
    (b"null", "object"),
    (b'{"experiment":"e","unit":"u","variation":"v","ts":NaN}', "JSON"),
    (b'{"experiment":"e","unit":"u","variation":"v","ts":Infinity}', "JSON"),
    (exposure(ts=...), "ts"),
    (exposure(unit=...), "unit"),
    (exposure(variation=...), "variation"),
    (exposure(experiment=...), "experiment"),
    (exposure(unit=12), "unit"),
    (exposure(unit=None), "unit"),
    (exposure(unit=""), "unit"),
    (exposure(variation=""), "variation"),
    (exposure(unit="u" * 257), "unit"),
    (exposure(variation="v" * 257), "variation"),
    (exposure(experiment="e" * 65), "experiment"),
    (exposure(experiment="has space"), "experiment"),
    (exposure(experiment="ünïcode"), "experiment"),
    (exposure(experiment=""), "experiment"),
    (exposure(ts=True), "ts"),
    (exposure(ts="yesterday"), "ts"),
    (exposure(ts=""), "ts"),
    (exposure(ts=[1]), "ts"),
    (exposure(ts="2023-13-45T00:00:00"), "ts"),
    (exposure(ts="9" * 100), "ts"),
    (exposure(ts=-1), "ts"),
    (b'{"experiment":"e","unit":"u","variation":"v","ts":1e400}', "ts"),
    (b'{"experiment":"e","unit":"u","variation":"v","ts":' + b"9" * 400 + b"}", "ts"),
    (exposure(covariates=[1, 2]), "covariates"),
    (exposure(covariates={"a": True}), "covariates"),
    (exposure(covariates={"a": "1"}), "covariates"),
    (exposure(covariates={"a": None}), "covariates"),
    (exposure(covariates={"a": 1e16}), "covariates.a"),
    (exposure(covariates={"": 1}), "covariates"),
    (exposure(covariates={"c" * 257: 1}), "covariates"),
    (exposure(covariates={f"c{i}": 1 for i in range(65)}), "covariates"),
    (b'{"experiment":"e","unit":"u","variation":"v","ts":1700000000,"covariates":{"a":1e999}}',
     "covariates"),
    (exposure(pad="x" * 70_000), "limit"),
    (exposure(deep=None).replace(b'"deep": null', b'"deep": ' + b"[" * 5000 + b"]" * 5000),
     "nested"),
]


@pytest.mark.parametrize(("raw", "needle"), BAD_EXPOSURES)
def test_rejected_exposures_name_the_problem(raw: bytes, needle: str) -> None:
    assert needle.lower() in reason(parse_exposure(raw)).lower()


BAD_EVENTS: list[tuple[bytes, str]] = [
    (event(value=True), "value"),
    (event(value=None), "value"),
    (event(value="3"), "value"),
    (event(value=-1e15 * 1.5), "value"),
    (b'{"unit":"u","event":"e","ts":1700000000,"value":1e309}', "value"),
    (event(event=""), "event"),
    (event(event=...), "event"),
    (event(event="e" * 257), "event"),
    (event(unit=["u"]), "unit"),
    (event(experiment=""), "experiment"),
    (event(experiment="bad/id"), "experiment"),
    (event(experiment=7), "experiment"),
    (event(ts=None), "ts"),
    (event(ts=False), "ts"),
    (event(ts="2023-11-14T22:13:20Zjunk"), "ts"),
    (b"{}", "missing"),
]


@pytest.mark.parametrize(("raw", "needle"), BAD_EVENTS)
def test_rejected_events_name_the_problem(raw: bytes, needle: str) -> None:
    assert needle.lower() in reason(parse_event(raw)).lower()


def test_non_bytes_input_is_rejected_not_raised() -> None:
    assert reason(parse_event("{}"))  # type: ignore[arg-type]
    assert reason(parse_exposure(None))  # type: ignore[arg-type]


def test_bytearray_and_memoryview_are_accepted() -> None:
    raw = event()
    assert parse_event(bytearray(raw)) == parse_event(raw)  # type: ignore[arg-type]
    assert parse_event(memoryview(raw)) == parse_event(raw)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- encode / DLQ


def test_round_trip() -> None:
    x = Exposure("exp.1", "u-9", "Mens E-Mail", TS + 0.123456, {"recency": 3.0, "h": -1.5})
    assert parse_exposure(encode_exposure(x)) == x
    y = Event("u-9", "visit", TS, 2.5, "exp.1")
    assert parse_event(encode_event(y)) == y
    z = Event("u-9", "visit", TS)
    assert parse_event(encode_event(z)) == z


def test_dead_letter_keeps_the_original_bytes() -> None:
    raw = b"\xff\x00not utf-8"
    doc = json.loads(dead_letter(raw, "liftstream.events", 3, 42, "message: invalid UTF-8"))
    assert doc["reason"] == "message: invalid UTF-8"
    assert (doc["topic"], doc["partition"], doc["offset"]) == ("liftstream.events", 3, 42)
    assert base64.b64decode(doc["original_b64"]) == raw
    assert "original" not in doc

    text = '{"unit": "ü"}'.encode()
    doc = json.loads(dead_letter(text, "t", 0, 0, "r"))
    assert doc["original"] == '{"unit": "ü"}'
    assert base64.b64decode(doc["original_b64"]) == text


# ----------------------------------------------------------------------------- properties

FIELDS = ["experiment", "unit", "variation", "ts", "covariates", "event", "value"]
scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
           | st.text(max_size=20) | st.sampled_from(["2024-01-01T00:00:00Z", "exp_1", ""]))
json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.sampled_from(FIELDS), kids, max_size=5),
    max_leaves=20,
)
objects = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), json_values,
                          max_size=8)


def _check(result: object, kind: type) -> None:
    if isinstance(result, Rejected):
        assert isinstance(result.reason, str) and result.reason.strip()
        assert "\n" not in result.reason
        return
    assert isinstance(result, kind)
    if isinstance(result, Exposure):
        assert result.experiment and result.unit and result.variation
        assert len(result.covariates) <= 64
        assert all(math.isfinite(v) and abs(v) <= 1e15 for v in result.covariates.values())
    if isinstance(result, Event):
        assert result.unit and result.event
        assert math.isfinite(result.value) and abs(result.value) <= 1e15
    assert isinstance(result.ts, float) and MIN_TS <= result.ts < MAX_TS  # type: ignore[attr-defined]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    _check(parse_exposure(raw), Exposure)
    _check(parse_event(raw), Event)


@settings(max_examples=400, deadline=None)
@given(json_values | objects)
def test_arbitrary_json_never_raises(value: Any) -> None:
    raw = json.dumps(value, allow_nan=True).encode()
    _check(parse_exposure(raw), Exposure)
    _check(parse_event(raw), Event)


ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)
exp_ids = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)
finite = st.floats(min_value=-1e15, max_value=1e15, allow_nan=False)
stamps = st.floats(min_value=MIN_TS, max_value=MAX_TS, exclude_max=True)


@settings(max_examples=300, deadline=None)
@given(exp_ids, ids, ids, stamps, st.dictionaries(ids, finite, max_size=64))
def test_exposure_round_trip(exp: str, unit: str, variation: str, ts: float,
                             covs: dict[str, float]) -> None:
    x = Exposure(exp, unit, variation, ts, covs)
    assert parse_exposure(encode_exposure(x)) == x


@settings(max_examples=300, deadline=None)
@given(ids, ids, stamps, finite, st.none() | exp_ids)
def test_event_round_trip(unit: str, name: str, ts: float, value: float,
                          exp: str | None) -> None:
    x = Event(unit, name, ts, value, exp)
    assert parse_event(encode_event(x)) == x


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 12, 31)),
       st.integers(min_value=-14 * 60, max_value=14 * 60))
def test_iso_and_epoch_agree(naive: datetime, offset_minutes: int) -> None:
    aware = naive.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    epoch = aware.timestamp()
    if not MIN_TS <= epoch < MAX_TS:
        return
    by_iso = parse_event(event(ts=aware.isoformat()))
    by_epoch = parse_event(event(ts=epoch))
    assert isinstance(by_iso, Event) and isinstance(by_epoch, Event)
    assert by_iso.ts == pytest.approx(by_epoch.ts, abs=1e-6)
    naive_utc = aware.astimezone(UTC).replace(tzinfo=None)
    by_naive = parse_event(event(ts=naive_utc.isoformat()))
    assert isinstance(by_naive, Event)
    assert by_naive.ts == pytest.approx(epoch, abs=1e-6)


@pytest.mark.parametrize(("value", "why"), [
    (1e16, "covariates.a: magnitude above 1e+15 (1e+16)"),
    (-1e16, "covariates.a: magnitude above 1e+15 (-1e+16)"),
    (1e15, None),
    (-1e15, None),
])
def test_covariate_bounds_reason_exactly(value: float, why: str | None) -> None:
    got = parse_exposure(exposure(covariates={"a": value}))
    assert (got.reason if isinstance(got, Rejected) else None) == why


def test_experiment_ids_checked_every_time_once_seen() -> None:
    """Remembering valid ids never lets an invalid one through, before or after."""
    bad = "bad/id"
    for _ in range(3):
        assert isinstance(parse_exposure(exposure(experiment="exp-1")), Exposure)
        assert reason(parse_exposure(exposure(experiment=bad))) == (
            "experiment: 'bad/id' does not match [A-Za-z0-9_.-]{1,64}")
        assert isinstance(parse_event(event(experiment=bad)), Rejected)


def test_size_limit_is_exact() -> None:
    """At the limit a message passes the size check; one byte more is refused, saying so."""
    head = exposure(pad="")
    at = head.replace(b'"pad": ""', b'"pad": "' + b"x" * (64 * 1024 - len(head)) + b'"')
    assert len(at) == 64 * 1024
    assert isinstance(parse_exposure(at), Exposure)
    over = at.replace(b'"x', b'"xx', 1)
    assert reason(parse_exposure(over)) == "message: 65537 bytes, over the 65536 byte limit"
