"""Pure rules behind issue 10: unit-state format, the window predicate, event-id fingerprints,
and the warnings the new counters raise."""

from __future__ import annotations

import zlib

import pytest

from state.units import MAX_COLUMNS, UnitState, pack_format_1
from state.warnings import experiment_warnings
from state.window import accepts, in_window, phase
from stream.batch import fingerprint


@pytest.mark.parametrize("k", [1, 255, 256, 257, 1000])
def test_unit_state_round_trips_any_column_count(k: int) -> None:
    st = UnitState(2, 1, 1.7e9, tuple(float(i) for i in range(k)),
                   (2**64 - 1, 0, 12345678901234567), tuple(range(k // 2)))
    back = UnitState.unpack(st.pack())
    assert back == st and back.withdrawn and back.legacy_ids == 0


def test_unit_state_refuses_more_columns_than_the_format_holds() -> None:
    with pytest.raises(ValueError, match="65535"):
        UnitState(0, 0, 1.7e9, (0.0,) * (MAX_COLUMNS + 1)).pack()


def test_format_1_states_still_load_and_their_crc_ids_are_dropped() -> None:
    st = UnitState(1, 1, 1.7e9, (2.0, 5.5, -1.0), (), (7,))
    old = pack_format_1(st, (zlib.crc32(b"a"), zlib.crc32(b"b")))
    back = UnitState.unpack(old)
    assert back == st  # raw, versions, flags (withdrawn), variation
    assert back.seen == () and back.legacy_ids == 2
    assert UnitState.unpack(back.pack()) == st


def test_plumless_and_buckeroo_collide_in_crc32_not_in_the_fingerprint() -> None:
    assert zlib.crc32(b"plumless") == zlib.crc32(b"buckeroo")
    assert fingerprint("plumless") != fingerprint("buckeroo")
    assert 0 <= fingerprint("plumless") < 2**64


def test_no_collision_among_many_ids() -> None:
    fps = {fingerprint(f"unit-7:event-{i}") for i in range(100_000)}
    assert len(fps) == 100_000


def test_window_is_half_open_everywhere() -> None:
    assert in_window(10.0, 20.0, 10.0) and in_window(10.0, 20.0, 19.999)
    assert not in_window(10.0, 20.0, 20.0) and not in_window(10.0, 20.0, 9.999)
    assert in_window(None, None, -1e18)
    assert accepts("running", 10.0, 20.0, 15.0)
    assert not accepts("stopped", 10.0, 20.0, 15.0)
    assert not accepts("running", 10.0, 20.0, 20.0)


def test_phase() -> None:
    assert phase("running", 10.0, 20.0, 5.0) == "scheduled"
    assert phase("running", 10.0, 20.0, 10.0) == "running"
    assert phase("running", 10.0, 20.0, 20.0) == "ended"
    assert phase("stopped", 10.0, 20.0, 15.0) == "stopped"


def test_registry_and_window_agree() -> None:
    from state.definition import parse_definition

    d = parse_definition({"id": "w", "variations": ["a", "b"], "start": 100.0 + 1.7e9,
                          "end": 200.0 + 1.7e9,
                          "metrics": [{"name": "m", "event": "e", "aggregate": "count"}]})
    for ts in (d.start, d.end, (d.start or 0) - 1, (d.end or 0) - 1e-3):
        assert ts is not None
        assert d.is_active(ts) == in_window(d.start, d.end, ts)


@pytest.mark.parametrize("counter,code", [
    ("build_failed", "build_failed"), ("held_evicted", "held_events_evicted"),
    ("event_ids_evicted", "event_ids_evicted"), ("events_after_stop", "events_after_stop"),
    ("exposures_after_stop", "exposures_after_stop")])
def test_new_counters_raise_warnings(counter: str, code: str) -> None:
    out = experiment_warnings("shop", {f"shop:{counter}": 4.0, f"other:{counter}": 1.0}, {})
    assert [w["code"] for w in out] == [code]
    assert "4" in out[0]["detail"] and "shop" in out[0]["detail"]
    assert experiment_warnings("shop", {f"shop:{counter}": 0.0}, {}) == []
