"""state.units: packed unit states round-trip; format 1 is still read."""

from __future__ import annotations

import pytest

from state.units import MAX_COLUMNS, WITHDRAWN, UnitState, pack_format_1


def test_round_trip_keeps_every_field() -> None:
    s = UnitState(2, WITHDRAWN, 1_700_000_000.25, (1.0, -2.5, 1e15), (2**64 - 1, 7), (3, 4))
    back = UnitState.unpack(s.pack())
    assert back == s and back.withdrawn
    assert len(UnitState(0, 0, 0.0, (1.0, 2.0)).pack()) == 14 + 16


def test_format_1_is_read_and_its_fingerprints_dropped() -> None:
    s = UnitState(1, 0, 5.0, (2.0,), (), (9,))
    back = UnitState.unpack(pack_format_1(s, (11, 12, 13)))
    assert back == s and back.seen == () and back.legacy_ids == 3


def test_too_many_columns_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at most 65535"):
        UnitState(0, 0, 0.0, (0.0,) * (MAX_COLUMNS + 1)).pack()
