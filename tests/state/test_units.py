"""state.units: packed unit states round-trip bit for bit in format 3; formats 1 and 2 are
still read (and written back in format 3)."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from state.units import (
    EPOCH_MS,
    F64_TIME,
    FORMAT_2,
    FORMAT_3,
    MAX_COLUMNS,
    WIDE_COUNTS,
    WITHDRAWN,
    UnitState,
    exact_ms,
    pack_format_1,
    pack_format_2,
)

LAST_MS = EPOCH_MS + 2**40 - 1  # the last instant a u40 of ms holds (in 2054)
CEILING = 1024  # state.limits.CEILINGS.max_columns


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def same(a: UnitState, b: UnitState) -> bool:
    """Equal bit for bit (``==`` takes -0.0 for 0.0)."""
    return (a == b and bits(a.exposed_at) == bits(b.exposed_at)
            and all(bits(x) == bits(y) for x, y in zip(a.raw, b.raw, strict=True)))


def size(s: UnitState) -> int:
    """Format 3's length: 2 + counts (1 or 4) + values + time (5 or 8)."""
    k, v = len(s.raw), len(s.versions)
    return (2 + (1 if k < 16 and v < 16 else 4) + 8 * k + 4 * v + 8 * len(s.seen)
            + (5 if exact_ms(s.exposed_at) >= 0 else 8))


def test_round_trip_keeps_every_field() -> None:
    s = UnitState(2, WITHDRAWN, 1_700_000_000.25, (1.0, -2.5, 1e15), (2**64 - 1, 7), (3, 4))
    back = UnitState.unpack(s.pack())
    assert same(back, s) and back.withdrawn


def test_the_bench_unit_is_32_bytes_against_38_in_format_2() -> None:
    """1 metric + 1 covariate, one remembered event id, a millisecond exposure time."""
    s = UnitState(1, 0, 1.7e9 + 0.123, (12.5, 3.25), (2**63 + 5,))
    assert len(s.pack()) == 32 and len(pack_format_2(s)) == 38


def test_format_3_is_pinned() -> None:
    """The stored bytes of one state (a change here is a new format, not a refactoring)."""
    s = UnitState(1, WITHDRAWN, 1577836800.001, (2.0,), (5,), (3,))
    assert s.pack() == bytes.fromhex("01 41 11 0000000000000040 03000000 0500000000000000"
                                     "0100000000")
    wide = UnitState(0, 0, 1577836800.0000005, (0.0,) * 16)
    blob = wide.pack()
    assert blob[:6] == bytes([0, FORMAT_3 | WIDE_COUNTS | F64_TIME, 16, 0, 0, 0])
    assert blob[-8:] == bits(1577836800.0000005) and len(blob) == 6 + 128 + 8


def test_one_byte_tells_the_format() -> None:
    s = UnitState(3, WITHDRAWN, 1.7e9, (1.0,))
    assert s.pack()[1] & (FORMAT_3 | FORMAT_2) == FORMAT_3
    assert pack_format_2(s)[1] & (FORMAT_3 | FORMAT_2) == FORMAT_2
    assert pack_format_1(s)[1] & (FORMAT_3 | FORMAT_2) == 0


@pytest.mark.parametrize(("t", "ms"), [
    (EPOCH_MS / 1000, 0),  # the epoch
    (1577836800.001, 1),
    (LAST_MS / 1000, 2**40 - 1),
    (1_700_000_000.123, 1_700_000_000_123 - EPOCH_MS),
    ((EPOCH_MS - 1) / 1000, -1),  # before 2020
    ((LAST_MS + 1) / 1000, -1),  # after the u40
    (1_700_000_000.000001, -1),  # a microsecond timestamp
    (1_700_000_000.0005, -1),  # half a millisecond
    (0.0, -1), (-0.0, -1), (math.inf, -1), (-math.inf, -1), (math.nan, -1),
])
def test_exact_ms_only_when_the_double_comes_back_bit_for_bit(t: float, ms: int) -> None:
    assert exact_ms(t) == ms
    if ms >= 0:
        assert bits((EPOCH_MS + ms) / 1000.0) == bits(t)


@pytest.mark.parametrize("t", [1_700_000_000.000001, 1_700_000_000.123456, 1.0, -5.5, 1e300,
                               -0.0, math.inf, (LAST_MS + 1) / 1000, (EPOCH_MS - 1) / 1000])
def test_times_off_the_millisecond_grid_are_stored_as_f64(t: float) -> None:
    s = UnitState(0, 0, t, (1.0,))
    blob = s.pack()
    assert blob[1] & F64_TIME and blob[-8:] == bits(t)
    assert same(UnitState.unpack(blob), s)


def test_the_flags_bits_of_the_format_are_refused() -> None:
    for flags in (0x10, 0x40, 0x80, 0x100):
        for raw in ((1.0,), (1.0,) * 16):
            with pytest.raises((ValueError, struct.error)):
                UnitState(0, flags, 1.7e9, raw).pack()


def test_format_1_is_read_and_its_fingerprints_dropped() -> None:
    s = UnitState(1, 0, 5.0, (2.0,), (), (9,))
    back = UnitState.unpack(pack_format_1(s, (11, 12, 13)))
    assert back == s and back.seen == () and back.legacy_ids == 3
    assert UnitState.unpack(back.pack()) == s and back.pack()[1] & FORMAT_3


def test_too_many_columns_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at most 65535"):
        UnitState(0, 0, 0.0, (0.0,) * (MAX_COLUMNS + 1)).pack()
    with pytest.raises(ValueError, match="at most 65535"):
        UnitState(0, 0, 1.7e9, (), (), (0,) * (MAX_COLUMNS + 1)).pack()


# --- property: any state round-trips bit for bit -------------------------------------------

FLOATS = st.floats(allow_nan=False)  # any finite or infinite double, -0.0 and subnormals too
MS = st.integers(EPOCH_MS - 10**6, LAST_MS + 10**6)  # on the ms grid, in and out of the u40
TIMES = st.one_of(
    MS.map(lambda m: m / 1000.0),
    st.integers(1_500_000_000_000_000, 2_800_000_000_000_000).map(lambda us: us / 1e6),
    st.sampled_from([EPOCH_MS / 1000.0, LAST_MS / 1000.0, 0.0, -0.0]),
    FLOATS,
)
COUNTS = st.one_of(st.integers(0, 17), st.sampled_from([255, 256, CEILING]))


@st.composite
def states(draw: st.DrawFn) -> UnitState:
    k, v, n = draw(COUNTS), draw(COUNTS), draw(st.integers(0, 40))
    fill = draw(st.lists(FLOATS, min_size=1, max_size=8))
    # a few drawn values, tiled up to k (drawing 1,024 floats per example is slow)
    raw = tuple(draw(st.lists(FLOATS, min_size=min(k, 16), max_size=min(k, 16)))
                + [fill[i % len(fill)] for i in range(max(k - 16, 0))])
    return UnitState(draw(st.integers(0, 255)), draw(st.sampled_from([0, WITHDRAWN])),
                     draw(TIMES), raw,
                     tuple(draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n))),
                     tuple(draw(st.integers(0, 2**32 - 1)) for _ in range(v)))


@settings(max_examples=600, deadline=None, derandomize=True)
@given(states())
def test_format_3_round_trips_any_state_bit_for_bit(s: UnitState) -> None:
    blob = s.pack()
    assert len(blob) == size(s) and blob[1] & (FORMAT_3 | FORMAT_2) == FORMAT_3
    back = UnitState.unpack(blob)
    assert same(back, s) and back.withdrawn == s.withdrawn and back.legacy_ids == 0


@settings(max_examples=300, deadline=None, derandomize=True)
@given(states())
def test_format_2_blobs_read_the_same_and_are_rewritten_in_format_3(s: UnitState) -> None:
    back = UnitState.unpack(pack_format_2(s))
    assert same(back, s)
    again = back.pack()
    assert again[1] & FORMAT_3 and same(UnitState.unpack(again), s)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(states().filter(lambda s: len(s.raw) < 256 and len(s.versions) < 256),
       st.lists(st.integers(0, 2**32 - 1), max_size=5))
def test_format_1_blobs_read_the_same_without_their_crc_ids(s: UnitState,
                                                            crcs: list[int]) -> None:
    st1 = UnitState(s.variation, s.flags, s.exposed_at, s.raw, (), s.versions)
    back = UnitState.unpack(pack_format_1(st1, tuple(crcs)))
    assert same(back, st1) and back.legacy_ids == len(crcs)
    assert same(UnitState.unpack(back.pack()), st1)


def test_a_format_3_blob_of_the_wrong_length_is_refused_not_misread() -> None:
    for s in (UnitState(1, 0, 1.7e9, (1.0, 2.0), (7,)), UnitState(1, 0, 1.7e9 + 1e-6, (1.0,) * 20)):
        blob = s.pack()
        for bad in (blob[:-1], blob + b"\x00", blob[:-4]):
            with pytest.raises(struct.error):
                UnitState.unpack(bad)
    with pytest.raises(struct.error):  # shorter than its own header and columns
        UnitState.unpack(bytes([0, FORMAT_3, 0x30, 0, 0]))
