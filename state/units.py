"""Per-unit state, packed small for Redis listpack-encoded bucket hashes.

Layout (little endian), format 3 (flags bit ``FORMAT_3`` set, ``FORMAT_2`` clear)::

    variation (u8) | flags (u8) | counts | raw (f64 × k) | model versions (u32 × v) |
    seen (u64 × rest) | exposed_at

``counts`` is one byte ``k << 4 | v`` when both are below 16, else ``k (u16) | v (u16)`` with
flags bit ``WIDE_COUNTS`` (up to 65,535 columns). ``exposed_at`` is a u40 of milliseconds
since 2020-01-01T00:00Z when that is exact (``(EPOCH_MS + ms) / 1000 == exposed_at`` bit for
bit, for instants in 2020..2054: the common case, producers stamp milliseconds), else the f64
itself with flags bit ``F64_TIME`` (a microsecond timestamp, say): lossless either way.
32 bytes for one metric and one covariate with one remembered event id. The low four flags
bits are the state's own (``WITHDRAWN``), the high four the format's. ``model versions`` are
those of the frozen predictions ŷ. ``seen`` holds 64-bit BLAKE2b fingerprints of the ids of
events already counted, oldest first, so a producer's duplicate of an event that carries an
``id`` is counted once (the caller bounds how many are kept). Values are plain tuples: a unit
has few columns, and numpy's per-call overhead would dominate the ingest hot path.

Older formats are still read; a state read in one is written in format 3 when it next
changes. Format 2 (flags bit ``FORMAT_2``): ``variation (u8) | flags (u8) | exposed_at (f64)
| k (u16) | v (u16) | raw (f64 × k) | versions (u32 × v) | seen (u64 × rest)``. Format 1
(neither bit): ``variation (u8) | flags (u8) | exposed_at (f64) | k (u8) | v (u8) |
raw (f64 × k) | versions (u32 × v) | seen (u32 × rest)`` with CRC-32 fingerprints. Those are
not comparable with 64-bit ones and CRC-32 collides (``plumless``/``buckeroo``), so they are
dropped on reading; ``legacy_ids`` says how many were dropped, for the caller to count as
evictions.

>>> s = UnitState(1, 0, 1700000000.0, (2.0, 5.5), (7,), (3,))
>>> UnitState.unpack(s.pack()) == s
True
>>> UnitState.unpack(s.pack()).seen
(7,)
>>> len(s.pack()), len(pack_format_2(s))
(36, 42)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, fields
from functools import lru_cache

_HEADER_1 = struct.Struct("<BBdBB")
_HEADER = struct.Struct("<BBdHH")
_WIDE = struct.Struct("<HH")
WITHDRAWN = 1
FORMAT_2 = 0x80  # flags bit: the state is in format 2 (never set by format-1 writers)
FORMAT_3 = 0x40  # flags bit: the state is in format 3 (never set by format-1/2 writers)
WIDE_COUNTS = 0x20  # format 3: k and v are u16s, not one byte of nibbles
F64_TIME = 0x10  # format 3: exposed_at is an f64, not u40 milliseconds
_RESERVED = 0xF0  # the format's flags bits; a state's own flags fit the low four
MAX_COLUMNS = 65_535  # k and v are u16
EPOCH_MS = 1_577_836_800_000  # 2020-01-01T00:00Z: format 3 stores milliseconds from here
# Doubles in [2**52, 2**53) are the integers, so y = t * 1000 + _MAGIC rounds to 2**52 + ms
# (ms since EPOCH_MS) with no int() call; while _Y_LO <= y < _Y_HI (ms in [0, 2**40)) its
# little-endian bytes are the u40 ms then the constant 00 30 43, which pack drops.
# (y - _MAGIC) / 1000 == t is the exactness test: then unpack's (EPOCH_MS + ms) / 1000 is t.
_MAGIC = float(2**52 - EPOCH_MS)
_Y_LO, _Y_HI = float(2**52), float(2**52 + 2**40)


def exact_ms(t: float) -> int:
    """``t`` (epoch seconds) as the milliseconds since :data:`EPOCH_MS` a u40 stores when
    ``(EPOCH_MS + ms) / 1000 == t`` exactly, else -1 (also for NaN and infinities).

    >>> exact_ms(1577836800.001), exact_ms(1577836800.0000015), exact_ms(float("nan"))
    (1, -1, -1)
    """
    y = t * 1000.0 + _MAGIC
    if _Y_LO <= y < _Y_HI and (y - _MAGIC) / 1000.0 == t:
        return int(y - _Y_LO)
    return -1


@lru_cache(maxsize=256)
def _body_1(k: int, m: int) -> struct.Struct:
    return struct.Struct(f"<{k}d{m}I")


@lru_cache(maxsize=1024)
def _body(k: int, v: int, s: int) -> struct.Struct:
    return struct.Struct(f"<{k}d{v}I{s}Q")


@lru_cache(maxsize=1024)
def _whole(k: int, v: int, s: int) -> struct.Struct:
    """Header and body of a format-2 state as one struct (one pack call per state)."""
    return struct.Struct(f"<BBdHH{k}d{v}I{s}Q")


@lru_cache(maxsize=4096)
def _format_3(counts: str, time: str, k: int, v: int, s: int) -> struct.Struct:
    """A format-3 state as one struct: ``counts`` ``B`` (nibbles) or ``HH``, ``time`` ``d``
    (an f64, or the double 2**52 + ms whose three constant high bytes pack then drops) or
    ``IB`` (the u40 ms, unpacking)."""
    return struct.Struct(f"<BB{counts}{k}d{v}I{s}Q{time}")


# The common state's structs (counts byte c = k << 4 | v, u40 ms) by c and the number s of
# remembered ids: two list lookups on the hot path instead of an lru_cache call.
_PACK: list[list[struct.Struct | None]] = [[] for _ in range(256)]
_UNPACK: list[list[struct.Struct | None]] = [[] for _ in range(256)]


def _common(table: list[list[struct.Struct | None]], time: str, c: int, s: int
            ) -> struct.Struct:
    """``_format_3("B", time, …)`` for counts byte ``c``, kept in ``table``."""
    if s < 0:
        raise struct.error(f"unit state: {s} remembered ids (a blob too short)")
    row = table[c]
    if len(row) <= s:
        row.extend([None] * (s + 1 - len(row)))
    built = row[s]
    if built is None:
        built = row[s] = _format_3("B", time, c >> 4, c & 15, s)
    return built


@dataclass(frozen=True, slots=True)
class UnitState:
    variation: int
    flags: int
    exposed_at: float
    raw: tuple[float, ...]
    seen: tuple[int, ...] = ()
    versions: tuple[int, ...] = ()
    # format-1 CRC-32 fingerprints dropped when this state was read (not stored)
    legacy_ids: int = field(default=0, compare=False)

    def __init__(self, variation: int, flags: int, exposed_at: float, raw: tuple[float, ...],
                 seen: tuple[int, ...] = (), versions: tuple[int, ...] = (),
                 legacy_ids: int = 0) -> None:
        """The generated frozen ``__init__``, through the slots directly (a state is built
        several times per message; this is about twice as fast)."""
        _SET_VARIATION(self, variation)
        _SET_FLAGS(self, flags)
        _SET_EXPOSED_AT(self, exposed_at)
        _SET_RAW(self, raw)
        _SET_SEEN(self, seen)
        _SET_VERSIONS(self, versions)
        _SET_LEGACY_IDS(self, legacy_ids)

    @property
    def withdrawn(self) -> bool:
        return bool(self.flags & WITHDRAWN)

    def pack(self) -> bytes:
        """This state in format 3 (the module docstring)."""
        raw, versions, seen, flags = self.raw, self.versions, self.seen, self.flags
        k, v = len(raw), len(versions)
        t = self.exposed_at
        y = t * 1000.0 + _MAGIC  # see exact_ms (inlined: this is the ingest hot path)
        exact = _Y_LO <= y < _Y_HI and (y - _MAGIC) / 1000.0 == t
        if (k | v | flags) < 16:  # one byte of counts, no reserved flags bit
            c = k << 4 | v
            if exact:  # the common case
                try:
                    st = _PACK[c][len(seen)]
                except IndexError:
                    st = None
                return (st or _common(_PACK, "d", c, len(seen))).pack(
                    self.variation, flags | FORMAT_3, c, *raw, *versions, *seen, y)[:-3]
            return _format_3("B", "d", k, v, len(seen)).pack(
                self.variation, flags | (FORMAT_3 | F64_TIME), c, *raw, *versions, *seen, t)
        if not 0 <= flags < 16:
            raise ValueError(f"unit state flags {flags:#x}: bits {_RESERVED:#x} are the "
                             "stored format's")
        if k > MAX_COLUMNS or v > MAX_COLUMNS:
            raise ValueError(f"unit state: {k} columns and {v} model versions; at most "
                             f"{MAX_COLUMNS} each fit the stored format")
        wide = _format_3("HH", "d", k, v, len(seen))  # flags < 16 here, so k or v is 16 or more
        if exact:
            return wide.pack(self.variation, flags | (FORMAT_3 | WIDE_COUNTS), k, v, *raw,
                             *versions, *seen, y)[:-3]
        return wide.pack(self.variation, flags | (FORMAT_3 | WIDE_COUNTS | F64_TIME), k, v,
                         *raw, *versions, *seen, t)

    @classmethod
    def unpack(cls, blob: bytes) -> UnitState:
        """A state from any stored format (3, 2 or 1: told apart by the flags byte); a
        format-3 blob of the wrong length (its time is last) raises ``struct.error``."""
        f = blob[1]
        if f & FORMAT_3:
            if f & WIDE_COUNTS:
                return _unpack_wide(cls, blob, f)
            c = blob[2]
            k, v = c >> 4, c & 15
            i = 3 + k
            j = i + v
            if f & F64_TIME:
                s = (len(blob) - 11 - 8 * k - 4 * v) >> 3
                values = _format_3("B", "d", k, v, s).unpack(blob)
                return cls(values[0], f & 15, values[-1], values[3:i], values[j:-1],
                           values[i:j])
            s = (len(blob) - 8 - 8 * k - 4 * v) >> 3  # the common case
            try:
                st = _UNPACK[c][s]
            except IndexError:
                st = None
            values = (st or _common(_UNPACK, "IB", c, s)).unpack(blob)
            return cls(values[0], f & 15, ((values[-2] | values[-1] << 32) + EPOCH_MS) / 1000.0,
                       values[3:i], values[j:-2], values[i:j])
        if f & FORMAT_2:
            variation, flags, exposed_at, k, v = _HEADER.unpack_from(blob)
            s = (len(blob) - _HEADER.size - 8 * k - 4 * v) // 8
            values = _body(k, v, s).unpack_from(blob, _HEADER.size)
            return cls(variation, flags & ~FORMAT_2, exposed_at, values[:k], values[k + v:],
                       values[k:k + v])
        variation, flags, exposed_at, k, v = _HEADER_1.unpack_from(blob)
        m = (len(blob) - _HEADER_1.size - 8 * k) // 4
        values = _body_1(k, m).unpack_from(blob, _HEADER_1.size)
        return cls(variation, flags, exposed_at, values[:k], (), values[k:k + v],
                   legacy_ids=m - v)


def _unpack_wide(cls: type[UnitState], blob: bytes, f: int) -> UnitState:
    """A format-3 state with u16 counts."""
    k, v = _WIDE.unpack_from(blob, 2)
    i = 4 + k
    j = i + v
    if f & F64_TIME:
        values = _format_3("HH", "d", k, v, (len(blob) - 14 - 8 * k - 4 * v) >> 3).unpack(blob)
        return cls(values[0], f & 15, values[-1], values[4:i], values[j:-1], values[i:j])
    values = _format_3("HH", "IB", k, v, (len(blob) - 11 - 8 * k - 4 * v) >> 3).unpack(
        blob)
    return cls(values[0], f & 15, ((values[-2] | values[-1] << 32) + EPOCH_MS) / 1000.0,
               values[4:i], values[j:-2], values[i:j])


_SET_VARIATION, _SET_FLAGS, _SET_EXPOSED_AT, _SET_RAW, _SET_SEEN, _SET_VERSIONS, \
    _SET_LEGACY_IDS = (getattr(UnitState, f.name).__set__ for f in fields(UnitState))


def pack_format_1(st: UnitState, crc_fingerprints: tuple[int, ...] = ()) -> bytes:
    """A state as releases before format 2 wrote it (for compatibility tests)."""
    k, v = len(st.raw), len(st.versions)
    return (_HEADER_1.pack(st.variation, st.flags, st.exposed_at, k, v)
            + _body_1(k, v + len(crc_fingerprints)).pack(*st.raw, *st.versions,
                                                         *crc_fingerprints))


def pack_format_2(st: UnitState) -> bytes:
    """A state as releases before format 3 wrote it (for compatibility tests)."""
    k, v = len(st.raw), len(st.versions)
    return _whole(k, v, len(st.seen)).pack(st.variation, st.flags | FORMAT_2, st.exposed_at, k,
                                           v, *st.raw, *st.versions, *st.seen)
