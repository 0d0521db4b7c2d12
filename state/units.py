"""Per-unit state, packed small for Redis listpack-encoded bucket hashes.

Layout (little endian), format 2 (flag bit ``FORMAT_2`` set)::

    variation (u8) | flags (u8) | exposed_at (f64) | k (u16) | v (u16) |
    raw (f64 × k) | model versions (u32 × v) | seen (u64 × rest)

— 34 bytes for one metric and one covariate, up to 65,535 columns. ``model versions`` are those
of the frozen predictions ŷ. ``seen`` holds 64-bit BLAKE2b fingerprints of the ids of events
already counted, oldest first, so a producer's duplicate of an event that carries an ``id``
is counted once (the caller bounds how many are kept). Values are plain tuples: a unit has
few columns, and numpy's per-call overhead would dominate the ingest hot path.

Format 1 (written before; still read): ``variation (u8) | flags (u8) | exposed_at (f64) |
k (u8) | v (u8) | raw (f64 × k) | versions (u32 × v) | seen (u32 × rest)`` with CRC-32
fingerprints. Its fingerprints are not comparable with 64-bit ones and CRC-32 collides
(``plumless``/``buckeroo``), so they are dropped on reading; ``legacy_ids`` says how many were
dropped, for the caller to count as evictions.

>>> s = UnitState(1, 0, 1700000000.0, (2.0, 5.5), (7,), (3,))
>>> UnitState.unpack(s.pack()) == s
True
>>> UnitState.unpack(s.pack()).seen
(7,)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, fields
from functools import lru_cache

_HEADER_1 = struct.Struct("<BBdBB")
_HEADER = struct.Struct("<BBdHH")
WITHDRAWN = 1
FORMAT_2 = 0x80  # flags bit: the state is in format 2 (never set by format-1 writers)
MAX_COLUMNS = 65_535  # k and v are u16


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
        k, v = len(self.raw), len(self.versions)
        if k > MAX_COLUMNS or v > MAX_COLUMNS:
            raise ValueError(f"unit state: {k} columns and {v} model versions; at most "
                             f"{MAX_COLUMNS} each fit the stored format")
        return _whole(k, v, len(self.seen)).pack(
            self.variation, (self.flags | FORMAT_2) & 0xFF, self.exposed_at, k, v, *self.raw,
            *self.versions, *self.seen)

    @classmethod
    def unpack(cls, blob: bytes) -> UnitState:
        if blob[1] & FORMAT_2:
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


_SET_VARIATION, _SET_FLAGS, _SET_EXPOSED_AT, _SET_RAW, _SET_SEEN, _SET_VERSIONS, \
    _SET_LEGACY_IDS = (getattr(UnitState, f.name).__set__ for f in fields(UnitState))


def pack_format_1(st: UnitState, crc_fingerprints: tuple[int, ...] = ()) -> bytes:
    """A state as releases before format 2 wrote it (for compatibility tests)."""
    k, v = len(st.raw), len(st.versions)
    return (_HEADER_1.pack(st.variation, st.flags, st.exposed_at, k, v)
            + _body_1(k, v + len(crc_fingerprints)).pack(*st.raw, *st.versions,
                                                         *crc_fingerprints))
