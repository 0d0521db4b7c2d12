"""Dimension slices of a batch (DESIGN §2 "Slices and pre-periods").

A definition's ``dimensions`` name exposure attributes. A unit's value of each dimension is
fixed at its first exposure: the attribute's value when the dimension still has room for it
or already kept it (first come, first kept, one global registry per experiment and dimension,
:func:`state.slices.assign`), ``(other)`` beyond ``max_values``, ``(none)`` when the attribute
is missing. The values are stored with the unit, so later events update the same slice. Each
(dimension, value, variation) gets its own moment matrix, changed by ``Σ u'u'ᵀ − Σ uuᵀ`` in
the same atomic batch as the whole experiment's, so a slice is exact like the whole.

The registry is written before the batch (a partition's batch script can only touch its own
Redis Cluster slot): a batch refused or rebuilt afterwards finds the values already kept,
which is the same answer (the assignment is idempotent).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from estimators.moments import FloatArray, MomentMatrix
from state import keys
from state import slices as stored
from state.layout import ExperimentLayout
from state.store import BatchWrite, PartitionStore
from state.units import UnitState
from stream.messages import Exposure
from stream.rules import shifted_delta, vectors

NONE = stored.NONE
OTHER = stored.OTHER
UnitKey = tuple[str, str]  # experiment, unit


class SliceDeltas:
    """Per-batch slice matrices and unit values, for the partitions one worker owns."""

    def __init__(self, store: PartitionStore, buckets: int) -> None:
        self.store = store
        self.buckets = buckets
        # (partition, experiment, dimension) → field → the stored matrix as last written
        self._cache: dict[tuple[int, str, str], dict[bytes, MomentMatrix]] = {}

    def forget(self, partition: int) -> None:
        for key in [k for k in self._cache if k[0] == partition]:
            del self._cache[key]

    def add(self, p: int, w: BatchWrite, layouts: Mapping[str, ExperimentLayout],
            exposures: Sequence[Exposure], initial: Mapping[UnitKey, UnitState | None],
            current: Mapping[UnitKey, UnitState | None]) -> None:
        """Add the batch's slice changes to ``w`` (nothing for experiments without
        dimensions)."""
        sliced = {x for x, lay in layouts.items() if lay.definition.dimensions}
        if not sliced:
            return
        changed = [k for k, st in current.items()
                   if k[0] in sliced and st is not None and st != initial.get(k)]
        if not changed:
            return
        values = self._values(p, w, layouts, exposures,
                              [k for k in changed if initial.get(k) is None],
                              [k for k in changed if initial.get(k) is not None])
        rows: dict[tuple[str, int, str, str], tuple[list[tuple[float, ...]],
                                                    list[tuple[float, ...]]]] = {}
        for key in changed:
            vals = values.get(key)
            if vals is None:  # exposed before the experiment had these dimensions
                continue
            x = key[0]
            st, before = current[key], initial.get(key)
            assert st is not None
            names = layouts[x].definition.variations
            for i, value in enumerate(vals):
                if before is not None and not before.withdrawn:
                    rows.setdefault((x, i, names[before.variation], value),
                                    ([], []))[1].append(before.raw)
                if not st.withdrawn:
                    rows.setdefault((x, i, names[st.variation], value),
                                    ([], []))[0].append(st.raw)
        for (x, i, variation, value), (new, old) in rows.items():
            lay = layouts[x]
            dim = lay.definition.dimensions[i].name
            new_u, old_u = vectors(lay, new), vectors(lay, old)
            fld = stored.matrix_field(variation, value)
            shift, delta, base = self._shifted(p, lay, dim, fld, new_u, old_u)
            w.slice_matrices[(x, dim, fld)] = (shift, delta)
            if base is not None:
                w.slice_matrix_bases[(x, dim, fld)] = base

    def _values(self, p: int, w: BatchWrite, layouts: Mapping[str, ExperimentLayout],
                exposures: Sequence[Exposure], new: Sequence[UnitKey],
                old: Sequence[UnitKey]) -> dict[UnitKey, list[str]]:
        """Each changed unit's dimension values: kept now for new units (stored with them),
        read back for the others."""
        first: dict[UnitKey, Mapping[str, str]] = {}
        for ex in exposures:
            first.setdefault((ex.experiment, ex.unit), ex.attributes)
        out: dict[UnitKey, list[str]] = {}
        wanted = set(new)
        by_exp: dict[str, list[str]] = defaultdict(list)
        for x, u in new:
            by_exp[x].append(u)
        for x, units in by_exp.items():
            dims = layouts[x].definition.dimensions
            kept: list[set[str]] = []
            for dim in dims:
                seen = [first.get((x, u), {}).get(dim.name) for u in units]
                arrival = list(dict.fromkeys(v for v in seen if v is not None))
                kept.append(stored.assign(self.store.client, x, dim.name, dim.max_values,
                                          arrival))
            for u in units:
                attrs = first.get((x, u), {})
                vals = [_value(attrs.get(dim.name), kept[i]) for i, dim in enumerate(dims)]
                out[(x, u)] = vals
                w.unit_slices[(x, keys.bucket_of(u, self.buckets), u)] = \
                    stored.pack_values(vals)
        old_by: dict[str, list[str]] = defaultdict(list)
        for x, u in old:
            if (x, u) not in wanted:
                old_by[x].append(u)
        for x, units in old_by.items():
            n = len(layouts[x].definition.dimensions)
            for u, vals in stored.read_unit_values(self.store.client, p, x, units,
                                                   self.buckets).items():
                if len(vals) == n:  # the definition's dimensions changed: leave it out
                    out[(x, u)] = vals
        return out

    def _shifted(self, p: int, lay: ExperimentLayout, dim: str, fld: bytes, new_u: FloatArray,
                 old_u: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray | None]:
        """The batch's change of one stored slice matrix around its stored shift, re-centred
        when a column's mean drifted (:func:`stream.rules.shifted_delta`)."""
        columns = lay.columns
        ck = (p, lay.definition.id, dim)
        cache = self._cache.get(ck)
        if cache is None:
            cache = {stored.matrix_field(v, val): m for (v, val), m in stored.matrix_states(
                self.store.client, p, lay.definition.id, dim, columns).items()}
            self._cache[ck] = cache
        out = shifted_delta(columns, cache.get(fld), new_u, old_u)
        cache[fld] = out.matrix
        return out.shift, out.delta, out.base


def _value(raw: str | None, kept: set[str]) -> str:
    if raw is None:
        return NONE
    return raw if raw in kept else OTHER
