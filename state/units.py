"""Per-unit state, packed small for Redis listpack-encoded bucket hashes.

Layout (little endian): ``variation index (u8) | flags (u8) | exposed_at (f64) | k (u8) |
v (u8) | raw (f64 × k) | model versions (u32 × v) | seen (u32 × rest)`` — 28 bytes for one
metric and one covariate. ``model versions`` are those of the frozen predictions ŷ. ``seen`` holds
CRC-32 fingerprints of the ids of events already counted, so a producer's duplicate of an event
that carries an ``id`` is counted once. Values are plain tuples: a unit has few columns, and
numpy's per-call overhead would dominate the ingest hot path.

>>> s = UnitState(1, 0, 1700000000.0, (2.0, 5.5), (7,), (3,))
>>> UnitState.unpack(s.pack()) == s
True
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache

_HEADER = struct.Struct("<BBdBB")
WITHDRAWN = 1


@lru_cache(maxsize=256)
def _body(k: int, m: int) -> struct.Struct:
    return struct.Struct(f"<{k}d{m}I")


@dataclass(frozen=True, slots=True)
class UnitState:
    variation: int
    flags: int
    exposed_at: float
    raw: tuple[float, ...]
    seen: tuple[int, ...] = ()
    versions: tuple[int, ...] = ()

    @property
    def withdrawn(self) -> bool:
        return bool(self.flags & WITHDRAWN)

    def pack(self) -> bytes:
        k, v = len(self.raw), len(self.versions)
        return (_HEADER.pack(self.variation, self.flags, self.exposed_at, k, v)
                + _body(k, v + len(self.seen)).pack(*self.raw, *self.versions, *self.seen))

    @classmethod
    def unpack(cls, blob: bytes) -> UnitState:
        variation, flags, exposed_at, k, v = _HEADER.unpack_from(blob)
        m = (len(blob) - _HEADER.size - 8 * k) // 4
        values = _body(k, m).unpack_from(blob, _HEADER.size)
        return cls(variation, flags, exposed_at, values[:k], values[k + v:], values[k:k + v])
