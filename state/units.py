"""Per-unit state, packed small for Redis listpack-encoded bucket hashes.

Layout (little endian): ``variation index (u8) | flags (u8) | exposed_at (f64) | k (u8) |
raw (f64 × k) | seen (u32 × rest)`` — 27 bytes for one metric and one covariate. ``seen`` holds
CRC-32 fingerprints of the ids of events already counted, so a producer's duplicate of an event
that carries an ``id`` is counted once.

>>> import numpy as np
>>> s = UnitState(1, 0, 1700000000.0, np.array([2.0, 5.5]))
>>> UnitState.unpack(s.pack()) == s
True
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from estimators.moments import FloatArray

_HEADER = struct.Struct("<BBdB")
WITHDRAWN = 1


@dataclass(frozen=True, eq=False)
class UnitState:
    variation: int
    flags: int
    exposed_at: float
    raw: FloatArray
    seen: tuple[int, ...] = ()

    @property
    def withdrawn(self) -> bool:
        return bool(self.flags & WITHDRAWN)

    def pack(self) -> bytes:
        return (_HEADER.pack(self.variation, self.flags, self.exposed_at, len(self.raw))
                + np.asarray(self.raw, dtype="<f8").tobytes()
                + np.asarray(self.seen, dtype="<u4").tobytes())

    @classmethod
    def unpack(cls, blob: bytes) -> UnitState:
        variation, flags, exposed_at, k = _HEADER.unpack_from(blob)
        raw = np.frombuffer(blob, dtype="<f8", count=k, offset=_HEADER.size).astype(np.float64)
        seen = np.frombuffer(blob, dtype="<u4", offset=_HEADER.size + 8 * k)
        return cls(variation, flags, exposed_at, raw, tuple(int(x) for x in seen))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, UnitState) and self.variation == other.variation
                and self.flags == other.flags and self.exposed_at == other.exposed_at
                and np.array_equal(self.raw, other.raw) and self.seen == other.seen)

    def __hash__(self) -> int:
        return hash((self.variation, self.flags, self.exposed_at, self.raw.tobytes()))
