"""The ingest rules as pure functions over plain values (DESIGN §2): no Kafka, no Redis.

:class:`stream.batch.BatchBuilder` composes these per batch; :func:`fold_unit` composes them
for one unit's messages in arrival order (the reference the order-independence property of
``tests/stream/test_rules.py`` checks). Each rule returns the new value and the *outcome*: the
name of the counter it adds one to (``<experiment>:<outcome>``), or :data:`COUNTED`.

* exposure (:func:`expose`): the first exposure inside the window of a running experiment
  creates the unit's state; a later one to a different variation withdraws the unit; a repeat
  (or any exposure of a withdrawn unit) is ignored; a stopped experiment takes nothing.
* counting (:func:`count_event`): an event counts when the unit is not withdrawn, its time is
  at or after the exposure and before the window's end (an event of a ``pre_period`` metric
  in ``[t₀ − L, t₀)`` counts in ``pre_<metric>`` only, :mod:`stream.preperiod`); an event
  carrying an ``id`` counts once while the unit remembers the id (64-bit fingerprints, the
  oldest forgotten first).
* held events (:func:`release_held`): events that arrived before their unit's exposure are
  counted when it arrives, by the same :func:`count_event`.
* maturity (:func:`window_end`): when a unit's outcome window closes.
* the statistics (:func:`shifted_delta`): ``Σ u'u'ᵀ − Σ uuᵀ`` of the units a batch changed,
  around the stored matrix's shift, re-centred when a mean drifted (:mod:`stream.shifts`).

Per-unit vector changes are computed here (:func:`unit_rows`), so features that keep more
statistics per unit (dimension slices, histograms) hook in one place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import msgspec
import numpy as np

from estimators.moments import FloatArray, MomentMatrix
from state.layout import ExperimentLayout
from state.units import WITHDRAWN, UnitState
from state.window import accepts, in_window
from stream.preperiod import pre_columns
from stream.shifts import initial_shift, next_shift, recentre_sums

COUNTED = ""  # outcome of a rule that changed the state as asked (no counter)
IGNORED = "ignored"  # outcome of an event for a withdrawn unit (no counter)
NEW_UNIT = "exposures"  # outcome of a first exposure


class HeldEvent(msgspec.Struct, array_like=True):
    """An event waiting for its unit's exposure (stored msgpack-encoded, per unit)."""

    event: str
    value: float
    ts: float
    experiment: str | None = None
    id: str | None = None


class Counted(NamedTuple):
    state: UnitState
    outcome: str  # COUNTED, IGNORED, "events_outside_window" or "duplicate_events"
    ids_evicted: int = 0  # remembered ids forgotten to make room (oldest first)


def fingerprint(event_id: str) -> int:
    """64-bit BLAKE2b fingerprint of an event id: two of ``n`` remembered ids collide with
    probability about ``n² / 2⁶⁵`` (3e-12 at 10,000)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


def new_unit(lay: ExperimentLayout, variation: int, ts: float,
             covariates: Mapping[str, float], predictions: Mapping[int, float] | None = None,
             versions: tuple[int, ...] = ()) -> UnitState:
    """A unit's state at its first exposure: covariates (and frozen predictions ŷ) set."""
    raw = [0.0] * lay.width
    for name, value in covariates.items():
        col = lay.covariate_columns.get(name)
        if col is not None:
            raw[col] = value
    for col, value in (predictions or {}).items():
        raw[col] = value
    return UnitState(variation, 0, ts, tuple(raw), (), versions)


def exposure_refusal(lay: ExperimentLayout, ts: float) -> str | None:
    """The counter of an exposure the experiment does not take (stopped or outside the
    window), else None (:func:`state.window.accepts`, the one predicate)."""
    d = lay.definition
    if accepts(d.status, d.start, d.end, ts):
        return None
    return "exposures_after_stop" if d.status != "running" else "exposures_outside_window"


def expose(st: UnitState | None, variation: int, created: UnitState | None
           ) -> tuple[UnitState | None, str]:
    """A (later) exposure of an existing unit, or the first (``st`` None: ``created``)."""
    if st is None:
        return created, NEW_UNIT
    if st.withdrawn or st.variation == variation:
        return st, "repeat_exposures"
    return (UnitState(st.variation, st.flags | WITHDRAWN, st.exposed_at, st.raw, st.seen,
                      st.versions), "withdrawn")


def count_event(lay: ExperimentLayout, st: UnitState, event: str, value: float, ts: float,
                event_id: str | None, max_ids: int) -> Counted:
    """One event (routed to this experiment) applied to an exposed unit."""
    if st.withdrawn:
        return Counted(st, IGNORED)
    pre = pre_columns(lay, event, ts, st.exposed_at) if ts < st.exposed_at else ()
    if not pre and (ts < st.exposed_at or not in_window(None, lay.definition.end, ts)):
        return Counted(st, "events_outside_window")
    seen = st.seen
    evicted = 0
    if event_id is not None:
        fp = fingerprint(event_id)
        if fp in seen:
            return Counted(st, "duplicate_events")
        seen = (*seen, fp)
        if len(seen) > max_ids:  # forget the oldest ids first
            evicted = len(seen) - max_ids
            seen = seen[evicted:]
    raw = list(st.raw)
    if len(raw) != lay.width:
        raise ValueError(f"stored unit state of {lay.definition.id!r} has {len(raw)} columns; "
                         f"the definition has {lay.width} (its layout changed)")
    counts = lay.counts_events
    for col in pre or lay.event_columns[event]:  # pre-period events: pre_<metric> only
        raw[col] += 1.0 if counts[col] else value
    return Counted(UnitState(st.variation, st.flags, st.exposed_at, tuple(raw), seen,
                             st.versions), COUNTED, evicted)


def waits_for(h: HeldEvent, experiment: str, lay: ExperimentLayout) -> bool:
    """Whether a held event is one for this experiment (tagged with it or untagged, and of an
    event the experiment counts)."""
    return h.experiment in (None, experiment) and h.event in lay.event_columns


def release_held(lay: ExperimentLayout, st: UnitState, held: Iterable[HeldEvent],
                 max_ids: int) -> tuple[UnitState, list[tuple[HeldEvent, Counted]]]:
    """The unit's held events applied at its exposure, in the order they were held."""
    outcomes: list[tuple[HeldEvent, Counted]] = []
    x = lay.definition.id
    for h in held:
        if waits_for(h, x, lay):
            c = count_event(lay, st, h.event, h.value, h.ts, h.id, max_ids)
            st = c.state
            outcomes.append((h, c))
    return st, outcomes


def window_end(lay: ExperimentLayout, exposed_at: float) -> float | None:
    """When the unit's outcome window closes (it matures): exposure + window, capped at the
    experiment's end; None when neither is set."""
    d = lay.definition
    if d.outcome_window_seconds is not None:
        end = exposed_at + d.outcome_window_seconds
        return min(end, d.end) if d.end is not None else end
    return d.end


Rows = dict[str, tuple[list[tuple[float, ...]], list[tuple[float, ...]]]]


def unit_rows(lay: ExperimentLayout, changes: Iterable[tuple[UnitState | None, UnitState]]
              ) -> Rows:
    """Per variation name, the raw rows to add (``new``) and to take out (``old``) for the
    changed units ``(before, after)``; a withdrawn unit contributes nothing."""
    names = lay.definition.variations
    rows: Rows = {}
    for before, st in changes:
        if before is not None and not before.withdrawn:
            rows.setdefault(names[before.variation], ([], []))[1].append(before.raw)
        if not st.withdrawn:
            rows.setdefault(names[st.variation], ([], []))[0].append(st.raw)
    return rows


def vectors(lay: ExperimentLayout, raws: Sequence[tuple[float, ...]]) -> FloatArray:
    """Unit vectors (capped, binary) of raw rows (:meth:`ExperimentLayout.unit_vectors`)."""
    return lay.unit_vectors(np.asarray(raws, dtype=np.float64).reshape(-1, lay.width))


def outer_sum(vectors: FloatArray, shift: FloatArray) -> FloatArray:
    """``Σ ũũᵀ`` with ``ũ = (1, u − shift)``."""
    d = len(shift)
    if not len(vectors):
        return np.zeros((d + 1, d + 1))
    u = np.empty((len(vectors), d + 1))
    u[:, 0] = 1.0
    u[:, 1:] = vectors - shift
    out: FloatArray = u.T @ u
    return out


class ShiftedDelta(NamedTuple):
    shift: FloatArray  # the shift the delta is around (stored with the matrix)
    delta: FloatArray
    base: FloatArray | None  # the stored shift it re-centres from (None: unchanged)
    matrix: MomentMatrix  # the stored matrix after the delta


def shifted_delta(columns: Sequence[str], stored: MomentMatrix | None, new_u: FloatArray,
                  old_u: FloatArray) -> ShiftedDelta:
    """A batch's change of one stored matrix around the shift it is stored with, re-centred
    when a column's mean drifted (:mod:`stream.shifts`; Welford-style shifted sums)."""
    cols = tuple(columns)
    if stored is None:
        shift = initial_shift(new_u if len(new_u) else old_u)
        delta = outer_sum(new_u, shift) - outer_sum(old_u, shift)
        return ShiftedDelta(shift, delta, None, MomentMatrix(cols, shift, delta))
    delta = outer_sum(new_u, stored.shift) - outer_sum(old_u, stored.shift)
    moved = next_shift(stored.shift, stored.sums + delta)
    if moved is None:
        return ShiftedDelta(stored.shift, delta, None,
                            MomentMatrix(cols, stored.shift, stored.sums + delta))
    delta = outer_sum(new_u, moved) - outer_sum(old_u, moved)
    sums = recentre_sums(stored.sums, stored.shift, moved) + delta
    return ShiftedDelta(moved, delta, stored.shift, MomentMatrix(cols, moved, sums))


# -- one unit, in arrival order (the reference composition) ---------------------------------
class UnitMessage(NamedTuple):
    """One message of a unit: an exposure (``variation`` set) or an event."""

    ts: float
    variation: int | None = None
    covariates: Mapping[str, float] = {}
    event: str = ""
    value: float = 0.0
    id: str | None = None


def fold_unit(lay: ExperimentLayout, messages: Iterable[UnitMessage], max_ids: int
              ) -> tuple[UnitState | None, list[HeldEvent]]:
    """One unit's final state (and events still held) after ``messages`` in this order, all
    within the grace period: events before the exposure are held, then released by it."""
    st: UnitState | None = None
    held: list[HeldEvent] = []
    for m in messages:
        if m.variation is not None:
            if exposure_refusal(lay, m.ts) is not None:
                continue
            created = None
            if st is None:
                created, _ = release_held(lay, new_unit(lay, m.variation, m.ts, m.covariates),
                                          held, max_ids)
                held = [h for h in held if not waits_for(h, lay.definition.id, lay)]
            st, _ = expose(st, m.variation, created)
        elif m.event in lay.event_columns:
            if st is None:
                held.append(HeldEvent(m.event, m.value, m.ts, None, m.id))
            else:
                st = count_event(lay, st, m.event, m.value, m.ts, m.id, max_ids).state
    return st, held
