"""Redis access for dimension slices (DESIGN §2 "Slices and pre-periods"), via state.keys.

A dimension's values are kept first come, first kept in one global hash per (experiment,
dimension) (``assign_values.lua``, called before a batch is built: a partition's batch script
can touch only its own slot); beyond ``max_values`` a value is ``(other)``, a missing
attribute ``(none)``. A unit's kept values are stored with the unit (bucketed hashes), so a
unit stays in its slice. Moment matrices per (partition, experiment, dimension, variation,
value) are written by the batch script like the whole experiment's, so slices are exact.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from importlib import resources
from typing import Any

import msgspec
import numpy as np

from estimators.moments import MomentMatrix
from state import keys
from state.store import Client

OTHER = "(other)"
NONE = "(none)"
_ENC = msgspec.msgpack.Encoder()
_FIELD = msgspec.msgpack.Decoder(tuple[str, str])
_VALUES = msgspec.msgpack.Decoder(list[str])


@lru_cache(maxsize=1)
def _script_text() -> str:
    return resources.files("state").joinpath("assign_values.lua").read_text()


def matrix_field(variation: str, value: str) -> bytes:
    """The hash field of one (variation, value) matrix."""
    return _ENC.encode((variation, value))


def parse_field(raw: bytes) -> tuple[str, str]:
    """(variation, value) of a stored matrix field."""
    return _FIELD.decode(raw)


def pack_values(values: Sequence[str]) -> bytes:
    return _ENC.encode(list(values))


def unpack_values(raw: bytes) -> list[str]:
    return _VALUES.decode(raw)


def assign(client: Client, experiment: str, dimension: str, max_values: int,
           values: Sequence[str]) -> set[str]:
    """Which of ``values`` (arrival order) are kept: already kept, or kept now under the cap."""
    if not values:
        return set()
    script = client.register_script(_script_text())
    res = script(keys=[keys.dimension_values(experiment, dimension)], args=[max_values, *values])
    return {v for v, k in zip(values, res, strict=True) if int(k) == 1}


def kept_values(client: Client, experiment: str, dimension: str) -> list[str]:
    """The kept values of a dimension, in the order they were kept."""
    raw: Any = client.hgetall(keys.dimension_values(experiment, dimension))
    pairs = sorted((int(n), v.decode() if isinstance(v, bytes) else str(v))
                   for v, n in raw.items())
    return [v for _, v in pairs]


def read_unit_values(client: Client, partition: int, experiment: str, units: Sequence[str],
                     buckets: int) -> dict[str, list[str]]:
    """The stored dimension values of ``units`` (absent: exposed before slices existed)."""
    by_bucket: dict[int, list[str]] = defaultdict(list)
    for u in units:
        by_bucket[keys.bucket_of(u, buckets)].append(u)
    pipe = client.pipeline(transaction=False)
    order = list(by_bucket.items())
    for b, us in order:
        pipe.hmget(keys.unit_slices(partition, experiment, b), us)
    out: dict[str, list[str]] = {}
    for (_, us), blobs in zip(order, pipe.execute(), strict=True):
        for u, blob in zip(us, blobs, strict=True):
            if blob is not None:
                out[u] = unpack_values(blob)
    return out


def _decode(columns: Sequence[str], raw: Mapping[Any, Any], where: str
            ) -> dict[tuple[str, str], MomentMatrix]:
    out = {}
    need = MomentMatrix.array_length(len(columns))
    for f, blob in raw.items():
        flat = np.frombuffer(blob, dtype="<f8").astype(np.float64)
        if flat.size != need:
            raise ValueError(f"slice matrix of {where} has {flat.size} values; the "
                             f"definition's {len(columns)} columns need {need}")
        out[parse_field(f)] = MomentMatrix.from_array(columns, flat)
    return out


def matrix_states(client: Client, partition: int, experiment: str, dimension: str,
                  columns: Sequence[str]) -> dict[tuple[str, str], MomentMatrix]:
    """One partition's stored slice matrices of a dimension, per (variation, value)."""
    raw: Any = client.hgetall(keys.slice_matrices(partition, experiment, dimension))
    return _decode(columns, raw, f"{experiment!r}/{dimension!r}")


def read_slice_matrices(client: Client, experiment: str, dimension: str,
                        columns: Sequence[str], partitions: Iterable[int]
                        ) -> dict[str, dict[str, MomentMatrix]]:
    """Every partition's matrices of one dimension merged with ``+``: value → variation →
    matrix."""
    pipe = client.pipeline(transaction=False)
    for p in partitions:
        pipe.hgetall(keys.slice_matrices(p, experiment, dimension))
    merged: dict[str, dict[str, MomentMatrix]] = defaultdict(dict)
    for raw in pipe.execute():
        for (variation, value), m in _decode(columns, raw,
                                             f"{experiment!r}/{dimension!r}").items():
            arms = merged[value]
            arms[variation] = arms[variation] + m if variation in arms else m
    return dict(merged)
