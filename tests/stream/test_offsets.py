"""Pure logic of the offset checks: ranges, lag that is never 0 outside the log, settings,
Redis refusal kinds."""

from __future__ import annotations

import doctest

import pytest
import redis

import stream.lag
import stream.offsets
from stream.kafka import LogRange
from stream.lag import lag_reading
from stream.offsets import describe, out_of_range
from workers.ingest import redis_error_kind
from workers.settings import SettingsError, load_settings


@pytest.mark.parametrize("module", [stream.offsets, stream.lag])
def test_doctests(module: object) -> None:
    assert doctest.testmod(module).failed == 0  # type: ignore[arg-type]


@pytest.mark.parametrize(("stored", "rng", "outside"), [
    (0, LogRange(0, 0), False), (10, LogRange(0, 10), False), (11, LogRange(0, 10), True),
    (4, LogRange(5, 10), True), (5, LogRange(5, 10), False)])
def test_out_of_range_bounds(stored: int, rng: LogRange, outside: bool) -> None:
    found = out_of_range(3, {"t": stored}, {("t", 3): rng})
    assert bool(found) is outside
    if found:
        text = describe(found)
        assert f"t partition 3: stored offset {stored}" in text
        assert f"log range {rng.begin}..{rng.end}" in text


def test_unknown_range_is_not_judged() -> None:
    assert out_of_range(0, {"t": 99}, {}) == []


def test_lag_is_unknown_not_zero_outside_the_log() -> None:
    ranges = {("e", 0): LogRange(0, 100), ("e", 1): LogRange(0, 0), ("x", 0): LogRange(0, 7),
              ("x", 1): LogRange(0, 7)}
    r = lag_reading(["e", "x"], ranges, {0: {"e": 100, "x": 7}, 1: {"e": 500, "x": 7}}, set())
    assert r.by_topic == {"e": None, "x": 0}
    assert [(t, p, s) for t, p, s, _ in r.out_of_range] == [("e", 1, 500)]
    # a flagged partition stays unknown even once the reset log grew past the stored offset
    r = lag_reading(["e"], {("e", 0): LogRange(0, 900)}, {0: {"e": 500}}, {0})
    assert r.by_topic == {"e": None} and r.as_dict()["out_of_range"][0]["stored"] == 500
    r = lag_reading(["e"], {("e", 0): LogRange(0, 900)}, {0: {"e": 500}}, set())
    assert r.by_topic == {"e": 400} and r.out_of_range == []


def test_offset_reset_setting() -> None:
    assert load_settings({}).offset_reset == "refuse"
    assert load_settings({"LIFTSTREAM_OFFSET_RESET": "earliest"}).offset_reset == "earliest"
    with pytest.raises(SettingsError, match="LIFTSTREAM_OFFSET_RESET: expected one of refuse"):
        load_settings({"LIFTSTREAM_OFFSET_RESET": "latest"})


@pytest.mark.parametrize(("exc", "kind"), [
    (redis.exceptions.OutOfMemoryError("OOM command not allowed"), "oom"),
    (redis.ResponseError("Error running script (call to f_1): @user_script:72: -OOM command "
                         "not allowed when used memory > 'maxmemory'."), "oom"),
    (redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
     "readonly"),
    (redis.ResponseError("BUSY Redis is busy running a script."), "busy"),
    (redis.ResponseError("Error running script (call to f_1): attempt to compare nil"),
     "script"),
    (redis.ResponseError("WRONGTYPE Operation against a key"), "other")])
def test_redis_error_kind(exc: redis.RedisError, kind: str) -> None:
    assert redis_error_kind(exc) == kind
