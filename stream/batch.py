"""Turn one partition's batch of raw messages into one atomic :class:`BatchWrite`.

Rules (DESIGN §2, "Time"):

* Held events wait at most ``grace_seconds`` of processing time for their exposure (a
  timestamp, however far in the future, cannot expire them); at most ``max_pending`` units
  are held per partition.
* A unit's first exposure creates its state; a later exposure to a *different* variation
  withdraws the unit from the statistics (counted); a repeat to the same variation is ignored.
* An event counts for an experiment when its timestamp is at or after the unit's exposure and
  inside the experiment's window. An event for a unit not yet exposed is held in Redis
  (bounded, grace period) and applied when the exposure arrives, so arrival order does not
  change results. An event that carries an ``id`` counts once per unit however often it is
  delivered.
* Malformed or unknown input becomes a dead letter with its reason; nothing raises.

The statistics change by ``Σ u'u'ᵀ − Σ uuᵀ`` over the units the batch touched, accumulated in
the stored matrix's shifted coordinates.
"""

from __future__ import annotations

import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import msgspec
import numpy as np

from estimators.moments import FloatArray
from state import keys
from state.layout import ExperimentLayout
from state.store import BatchWrite, PartitionStore
from state.units import WITHDRAWN, UnitState
from stream.messages import Event, Exposure, Rejected, parse_event, parse_exposure


class RawRecord(NamedTuple):
    topic: str
    offset: int
    value: bytes


@dataclass(frozen=True)
class DeadLetter:
    record: RawRecord
    reason: str


@dataclass
class PreparedBatch:
    write: BatchWrite
    dead_letters: list[DeadLetter] = field(default_factory=list)
    events_in: int = 0
    training: list[bytes] = field(default_factory=list)  # matured units, for the learner


class HeldEvent(msgspec.Struct, array_like=True):
    event: str
    value: float
    ts: float
    experiment: str | None = None
    id: str | None = None


CLOCK_SKEW_SECONDS = 60.0  # event times beyond now + this count as now (freshness, maturity)
_HELD = msgspec.msgpack.Encoder()
_HELD_DECODE = msgspec.msgpack.Decoder(list[HeldEvent])


def fingerprint(event_id: str) -> int:
    return zlib.crc32(event_id.encode())


class Predictor(Protocol):
    def predict(self, model_id: str, features: Mapping[str, float]) -> tuple[float, int]: ...


class TrainingExample(msgspec.Struct, frozen=True):
    """One labelled example for the learner (wire format of the training topic)."""

    model: str
    features: dict[str, float]
    target: float
    id: str | None = None


_TRAINING = msgspec.json.Encoder()


@dataclass(frozen=True)
class Topics:
    exposures: str
    events: str


class BatchBuilder:
    """Builds batches for the partitions one worker owns."""

    def __init__(self, store: PartitionStore, topics: Topics, buckets: int,
                 grace_seconds: float, max_pending: int,
                 predictor: Predictor | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.predictor = predictor
        self.clock = clock
        self.topics = topics
        self.buckets = buckets
        self.grace = grace_seconds
        self.max_pending = max_pending
        self.layouts: dict[str, ExperimentLayout] = {}
        self._routes: dict[str, list[str]] = {}
        self._shifts: dict[tuple[int, str], dict[str, FloatArray]] = {}

    def set_experiments(self, layouts: Mapping[str, ExperimentLayout]) -> None:
        self.layouts = dict(layouts)
        routes: dict[str, list[str]] = defaultdict(list)
        for x, lay in self.layouts.items():
            if lay.definition.status == "running":
                for name in lay.event_columns:
                    routes[name].append(x)
        self._routes = dict(routes)

    def forget(self, partition: int) -> None:
        """Drop cached shifts of a partition (after losing it or a refused batch)."""
        for key in [k for k in self._shifts if k[0] == partition]:
            del self._shifts[key]

    # ------------------------------------------------------------------------------------
    def build(self, partition: int, epoch: int, records: Sequence[RawRecord],
              stored: Mapping[str, int | None] | None = None) -> PreparedBatch:
        """``stored``: per topic the offset the owner believes Redis holds (default: the
        batch's first offset, for callers that feed contiguous batches from the start)."""
        w = BatchWrite(partition, epoch)
        out = PreparedBatch(w)
        firsts: dict[str, int] = {}
        nexts: dict[str, int] = {}
        exposures: list[Exposure] = []
        events: list[Event] = []
        for r in records:
            firsts.setdefault(r.topic, r.offset)
            firsts[r.topic] = min(firsts[r.topic], r.offset)
            nexts[r.topic] = max(nexts.get(r.topic, 0), r.offset + 1)
            if r.topic == self.topics.exposures:
                msg: Exposure | Event | Rejected = parse_exposure(r.value)
            else:
                msg = parse_event(r.value)
                out.events_in += 1
            reason = self._reject_reason(msg)
            if reason is not None:
                out.dead_letters.append(DeadLetter(r, reason))
                continue
            if isinstance(msg, Exposure):
                exposures.append(msg)
            elif isinstance(msg, Event):
                events.append(msg)
        w.offsets = [(t, stored[t] if stored is not None and t in stored else
                      (firsts[t] or None), nexts[t]) for t in sorted(firsts)]
        w.counters["dead_letters"] += len(out.dead_letters)
        w.counters["messages"] += len(records)
        self._apply(partition, w, exposures, events)
        self._mature(partition, w, out, exposures, events)
        return out

    def _reject_reason(self, msg: Exposure | Event | Rejected) -> str | None:
        if isinstance(msg, Rejected):
            return msg.reason
        if isinstance(msg, Exposure):
            lay = self.layouts.get(msg.experiment)
            if lay is None:
                return f"unknown experiment {msg.experiment!r}"
            if msg.variation not in lay.definition.variations:
                return (f"unknown variation {msg.variation!r} for experiment "
                        f"{msg.experiment!r}")
        elif msg.experiment is not None and msg.experiment not in self.layouts:
            return f"unknown experiment {msg.experiment!r}"
        return None

    def _targets(self, e: Event) -> list[str]:
        if e.experiment is not None:
            lay = self.layouts[e.experiment]
            return [e.experiment] if e.event in lay.event_columns else []
        return self._routes.get(e.event, [])

    def _apply(self, p: int, w: BatchWrite, exposures: list[Exposure],
               events: list[Event]) -> None:
        need: dict[str, set[str]] = defaultdict(set)
        for ex in exposures:
            need[ex.experiment].add(ex.unit)
        targets = [self._targets(e) for e in events]
        for e, ts in zip(events, targets, strict=True):
            for name in ts:
                need[name].add(e.unit)
        pending_units = sorted({x.unit for x in exposures} | {e.unit for e in events})
        found, held_blobs = self.store.read_batch_state(
            p, {name: sorted(units) for name, units in need.items()}, pending_units,
            self.buckets)
        initial: dict[tuple[str, str], UnitState | None] = {
            (name, u): found.get((name, u)) for name, units in need.items() for u in units}
        current: dict[tuple[str, str], UnitState | None] = dict(initial)
        held_stored = {u: _HELD_DECODE.decode(b) for u, b in held_blobs.items()}
        held: dict[str, list[HeldEvent]] = {u: list(v) for u, v in held_stored.items()}
        held_changed: set[str] = set()
        last_ts: float | None = None

        for x in exposures:
            lay = self.layouts[x.experiment]
            d = lay.definition
            if (d.start is not None and x.ts < d.start) or (d.end is not None and x.ts > d.end) \
                    or d.status != "running":
                w.counters[f"{x.experiment}:exposures_outside_window"] += 1
                continue
            key = (x.experiment, x.unit)
            st = current.get(key)
            v = d.variations.index(x.variation)
            if st is None:
                raw = [0.0] * lay.width
                for name, value in x.covariates.items():
                    col = lay.covariate_columns.get(name)
                    if col is not None:
                        raw[col] = value
                versions: tuple[int, ...] = ()
                if lay.prediction_columns:
                    versions = self._freeze_predictions(lay, raw)
                    window = self._window_end(lay, x.ts)
                    if window is not None:
                        w.zadd.append((keys.maturity(p), window, f"{x.experiment}\x00{x.unit}"))
                st = UnitState(v, 0, x.ts, tuple(raw), (), versions)
                for h in held.get(x.unit, []):
                    if h.experiment in (None, x.experiment):
                        st = self._count(lay, st, h.event, h.value, h.ts, h.id, w, x.experiment)
                current[key] = st
                w.counters[f"{x.experiment}:exposures"] += 1
            elif st.withdrawn:
                w.counters[f"{x.experiment}:repeat_exposures"] += 1
            elif st.variation != v:
                current[key] = UnitState(st.variation, st.flags | WITHDRAWN, st.exposed_at,
                                         st.raw, st.seen, st.versions)
                w.counters[f"{x.experiment}:withdrawn"] += 1
            else:
                w.counters[f"{x.experiment}:repeat_exposures"] += 1

        stored_held: int | None = None
        for e, ts in zip(events, targets, strict=True):
            last_ts = e.ts if last_ts is None else max(last_ts, e.ts)
            missing = False
            for name in ts:
                ekey = (name, e.unit)
                est = current.get(ekey)
                if est is None:
                    missing = True
                    continue
                current[ekey] = self._count(self.layouts[name], est, e.event, e.value, e.ts,
                                            e.id, w, name)
            if missing:
                if e.unit not in held:
                    if stored_held is None:
                        stored_held = self.store.pending_count(p)
                    if stored_held + len(held) - len(held_stored) >= self.max_pending:
                        w.counters["held_overflow"] += 1
                        continue
                lst = held.setdefault(e.unit, [])
                if len(lst) >= 1000:
                    w.counters["held_overflow"] += 1
                else:
                    lst.append(HeldEvent(e.event, e.value, e.ts, e.experiment, e.id))
                    held_changed.add(e.unit)
            elif not ts:
                w.counters["events_unrouted"] += 1
        w.counters["events"] += len(events)
        if last_ts is not None:
            # freshness: a far-future timestamp must not claim data newer than it is
            last_ts = min(last_ts, self.clock() + CLOCK_SKEW_SECONDS)
        w.last_event_ts = last_ts
        w.experiment_last_ts = {name: min(ts, self.clock() + CLOCK_SKEW_SECONDS)
                                for name, ts in w.experiment_last_ts.items()}

        now = self.clock()
        for u in held_changed:
            w.pending_set[u] = _HELD.encode(held[u])
            if u not in held_stored:  # the grace period runs from when a unit was first held
                w.pending_queue_add[u] = now
        if held_stored or held_changed or exposures or events:
            for u in self.store.expired_pending(p, now - self.grace):
                if u not in held_changed:
                    w.pending_del.add(u)
                    w.counters["held_expired"] += 1
        self._deltas(p, w, initial, current)

    def _count(self, lay: ExperimentLayout, st: UnitState, event: str, value: float, ts: float,
               event_id: str | None, w: BatchWrite, experiment: str) -> UnitState:
        d = lay.definition
        if st.withdrawn:
            return st
        if ts < st.exposed_at or (d.end is not None and ts > d.end):
            w.counters[f"{experiment}:events_outside_window"] += 1
            return st
        seen = st.seen
        if event_id is not None:
            fp = fingerprint(event_id)
            if fp in seen:
                w.counters[f"{experiment}:duplicate_events"] += 1
                return st
            seen = (*seen, fp)
        raw = list(st.raw)
        for col in lay.event_columns[event]:
            raw[col] += 1.0 if lay.counts_events[col] else value
        if ts > w.experiment_last_ts.get(experiment, ts - 1.0):  # the experiment's freshness
            w.experiment_last_ts[experiment] = ts
        return UnitState(st.variation, st.flags, st.exposed_at, tuple(raw), seen, st.versions)

    def _freeze_predictions(self, lay: ExperimentLayout, raw: list[float]) -> tuple[int, ...]:
        """ŷ for each metric from the latest verified model, frozen at exposure."""
        features = {name: raw[col] for name, col in lay.covariate_columns.items()}
        versions = []
        for metric, col in lay.prediction_columns.items():
            if self.predictor is None:
                value, version = 0.0, 0
            else:
                value, version = self.predictor.predict(lay.model_ids[metric], features)
            raw[col] = value
            versions.append(version)
        return tuple(versions)

    @staticmethod
    def _window_end(lay: ExperimentLayout, exposed_at: float) -> float | None:
        d = lay.definition
        if d.outcome_window_seconds is not None:
            end = exposed_at + d.outcome_window_seconds
            return min(end, d.end) if d.end is not None else end
        return d.end

    def _mature(self, p: int, w: BatchWrite, out: PreparedBatch, exposures: list[Exposure],
                events: list[Event]) -> None:
        """Units whose outcome window closed become training examples (exposure features →
        outcome); they were predicted at exposure, so no unit trains its own prediction."""
        if not any(lay.prediction_columns for lay in self.layouts.values()):
            return
        times = [x.ts for x in exposures] + [e.ts for e in events]
        if not times:
            return
        members = self.store.matured(p, min(max(times), self.clock() + CLOCK_SKEW_SECONDS))
        if not members:
            return
        wanted: dict[str, list[str]] = defaultdict(list)
        for m in members:
            experiment, _, unit = m.partition("\x00")
            if experiment in self.layouts:
                wanted[experiment].append(unit)
            w.zrem.append((keys.maturity(p), m))
        found, _ = self.store.read_batch_state(p, wanted, [], self.buckets)
        pending_units = {(x, u): st for (x, u), st in w.unit_states.items()}
        for (experiment, unit), st in {**found, **pending_units}.items():
            if experiment not in wanted or unit not in wanted[experiment] or st.withdrawn:
                continue
            lay = self.layouts[experiment]
            y = lay.unit_vectors(np.asarray([st.raw], dtype=np.float64))[0]
            features = {name: st.raw[col] for name, col in lay.covariate_columns.items()}
            for metric in lay.prediction_columns:
                col = lay.columns.index(metric)
                out.training.append(_TRAINING.encode(TrainingExample(
                    lay.model_ids[metric], features, float(y[col]),
                    f"{experiment}:{unit}")))
        w.counters["training_examples"] += len(out.training)

    def _deltas(self, p: int, w: BatchWrite, initial: Mapping[tuple[str, str], UnitState | None],
                current: Mapping[tuple[str, str], UnitState | None]) -> None:
        rows: dict[tuple[str, str], tuple[list[tuple[float, ...]], list[tuple[float, ...]]]] = {}
        for key, st in current.items():
            before = initial.get(key)
            if st is None or st == before:
                continue
            x, unit = key
            w.units[(x, keys.bucket_of(unit, self.buckets), unit)] = st.pack()
            w.unit_states[(x, unit)] = st
            names = self.layouts[x].definition.variations
            if before is not None and not before.withdrawn:
                rows.setdefault((x, names[before.variation]), ([], []))[1].append(before.raw)
            if not st.withdrawn:
                rows.setdefault((x, names[st.variation]), ([], []))[0].append(st.raw)
        for (x, variation), (new, old) in rows.items():
            lay = self.layouts[x]
            new_u = lay.unit_vectors(np.asarray(new, dtype=np.float64).reshape(-1, lay.width))
            old_u = lay.unit_vectors(np.asarray(old, dtype=np.float64).reshape(-1, lay.width))
            shift = self._shift(p, x, variation, new_u if len(new_u) else old_u)
            w.matrices[(x, variation)] = (shift, _outer_sum(new_u, shift)
                                          - _outer_sum(old_u, shift))

    def _shift(self, p: int, experiment: str, variation: str, vectors: FloatArray
               ) -> FloatArray:
        cache = self._shifts.get((p, experiment))
        width = self.layouts[experiment].width
        if cache is None:
            cache = self.store.matrix_shifts(p, experiment, width)
            self._shifts[(p, experiment)] = cache
        if variation not in cache:
            cache[variation] = np.mean(vectors, axis=0)
        return cache[variation]


def _outer_sum(vectors: FloatArray, shift: FloatArray) -> FloatArray:
    d = len(shift)
    if not len(vectors):
        return np.zeros((d + 1, d + 1))
    u = np.empty((len(vectors), d + 1))
    u[:, 0] = 1.0
    u[:, 1:] = vectors - shift
    out: FloatArray = u.T @ u
    return out
