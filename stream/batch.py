"""Turn one partition's batch of raw messages into one atomic :class:`BatchWrite`.

Rules (DESIGN §2, "Time"):

* Held events wait at most ``grace_seconds`` of processing time for their exposure (a
  timestamp, however far in the future, cannot expire them); at most ``max_pending`` units
  are held per partition (at most :data:`MAX_HELD_PER_UNIT` events per unit). At the bound
  the units held longest are evicted first (the newest are the likeliest to meet their
  exposure), counted ``held_evicted`` and ``<experiment>:held_evicted`` per experiment the
  events were held for.
* Messages are keyed by unit id: one whose Kafka key (when it has one) is not its unit id
  would be held on the wrong partition and is a dead letter naming the mismatch.
* A unit's first exposure creates its state; a later exposure to a *different* variation
  withdraws the unit from the statistics (counted); a repeat to the same variation is ignored.
* An event counts for an experiment when its timestamp is at or after the unit's exposure and
  inside the experiment's half-open window ``[start, end)``; a stopped experiment takes
  nothing (:mod:`state.window`, the one predicate). An event for a unit not yet exposed is
  held in Redis (bounded, grace period) and applied when the exposure arrives, so arrival
  order does not change results. An event that carries an ``id`` counts once per unit
  however often it is delivered while the unit remembers it: the last ``max_ids_per_unit``
  ids per unit and experiment, as 64-bit BLAKE2b fingerprints (older ones are forgotten,
  oldest first, counted ``<experiment>:event_ids_evicted``).
* Malformed or unknown input becomes a dead letter with its reason; nothing raises. If
  building one experiment's part of a batch raises (any rule of that experiment), its
  messages of the batch become dead letters with the reason, counted
  ``<experiment>:build_failed``, and the rest of the batch applies.

The statistics change by ``Σ u'u'ᵀ − Σ uuᵀ`` over the units the batch touched, accumulated in
the stored matrix's shifted coordinates.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import msgspec
import numpy as np

from estimators.moments import FloatArray, MomentMatrix
from estimators.quantiles import DEFAULT_ACCURACY, histogram_delta
from state import keys
from state.layout import ExperimentLayout
from state.store import BatchReads, BatchWrite, PartitionStore, StoreError
from state.units import UnitState
from stream import rules
from stream.messages import Event, Exposure, Rejected, parse_event, parse_exposure
from stream.preperiod import hold_extension
from stream.rules import COUNTED, IGNORED, HeldEvent, fingerprint, outer_sum
from stream.slices import SliceDeltas

__all__ = ["BatchBuilder", "DeadLetter", "HeldEvent", "PreparedBatch", "RawRecord", "Topics",
           "TrainingExample", "fingerprint", "outer_sum"]

log = logging.getLogger("liftstream.batch")


class RawRecord(NamedTuple):
    topic: str
    offset: int
    value: bytes
    key: bytes | None = None  # the Kafka key (None: unkeyed, not checked)


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


CLOCK_SKEW_SECONDS = 60.0  # event times beyond now + this count as now (freshness, maturity)
MAX_HELD_PER_UNIT = 1000  # held events per unit; beyond, its oldest held event is evicted
DEFAULT_IDS_PER_UNIT = 1000  # remembered event ids per unit and experiment (settings default)
_HELD = msgspec.msgpack.Encoder()
_HELD_DECODE = msgspec.msgpack.Decoder(list[HeldEvent])
_NO_ROUTES: list[str] = []  # shared, never mutated
Parsed = tuple[RawRecord, Exposure | Event | None, str | None]  # record, message, reject reason


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
                 clock: Callable[[], float] = time.time,
                 max_ids_per_unit: int = DEFAULT_IDS_PER_UNIT) -> None:
        self.store = store
        self.predictor = predictor
        self.clock = clock
        self.topics = topics
        self.buckets = buckets
        self.grace = grace_seconds
        self.max_pending = max_pending
        self.max_ids = max_ids_per_unit
        self.layouts: dict[str, ExperimentLayout] = {}
        self._routes: dict[str, list[str]] = {}
        # (partition, experiment) → variation → the stored matrix as this builder last wrote it
        self._shifts: dict[tuple[int, str], dict[str, MomentMatrix]] = {}
        self._failing: dict[int, set[str]] = {}  # partition → experiments failing last batch
        self.slices = SliceDeltas(store, buckets)  # dimension slices (stream/slices.py)
        self._stored_matrices: Mapping[str, Mapping[str, bytes]] = {}  # of the current read

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
        self.slices.forget(partition)

    # ------------------------------------------------------------------------------------
    def build(self, partition: int, epoch: int, records: Sequence[RawRecord],
              stored: Mapping[str, int | None] | None = None) -> PreparedBatch:
        """``stored``: per topic the offset the owner believes Redis holds (default: the
        batch's first offset, for callers that feed contiguous batches from the start).

        Redis errors propagate (the owner retries); any other error is pinned on the
        experiments whose part of the batch raises alone, and the batch is built without them
        (their messages become dead letters)."""
        try:
            out = self._build(partition, epoch, records, stored, {})
            self._failing.pop(partition, None)
            return out
        except StoreError:
            raise
        except Exception as exc:
            log.debug("partition %d: building a batch failed (%s); isolating the experiment",
                      partition, _describe(exc))
        self.forget(partition)
        involved = self._involved(records)
        # a poison usually persists: try the experiments that failed last time first
        failed = self._isolate(partition, epoch, records, stored,
                               involved & self._failing.get(partition, set()))
        if failed:
            try:
                out = self._build(partition, epoch, records, stored, failed)
                return self._failed_batch(partition, failed, out)
            except StoreError:
                raise
            except Exception:
                self.forget(partition)
        failed = self._isolate(partition, epoch, records, stored, involved)
        try:
            out = self._build(partition, epoch, records, stored, failed)
        except StoreError:
            raise
        except Exception as exc:  # no experiment fails alone: hold every one of the batch
            self.forget(partition)
            failed = {x: failed.get(x, _describe(exc)) for x in involved}
            out = self._build(partition, epoch, records, stored, failed)
        return self._failed_batch(partition, failed, out)

    def _failed_batch(self, p: int, failed: Mapping[str, str], out: PreparedBatch
                      ) -> PreparedBatch:
        self._failing[p] = set(failed)
        for x, reason in sorted(failed.items()):
            log.error("partition %d: building experiment %r's part of a batch failed (%s); "
                      "its messages of the batch go to the dead-letter topic", p, x, reason)
        return out

    def _isolate(self, p: int, epoch: int, records: Sequence[RawRecord],
                 stored: Mapping[str, int | None] | None, candidates: Collection[str]
                 ) -> dict[str, str]:
        """Experiments of ``candidates`` whose part of the batch raises when built alone →
        the reason."""
        failed: dict[str, str] = {}
        for x in sorted(candidates):
            others = {y: "" for y in self.layouts if y != x}
            try:
                self._build(p, epoch, records, stored, others)
            except StoreError:
                raise
            except Exception as exc:
                failed[x] = _describe(exc)
            finally:
                self.forget(p)
        return failed

    def _involved(self, records: Sequence[RawRecord]) -> set[str]:
        out = {x for x, lay in self.layouts.items() if lay.prediction_columns}  # maturity
        for _, msg, reason in map(self._parse, records):
            if reason is not None or msg is None:
                continue
            if msg.experiment is not None:
                out.add(msg.experiment)
            elif isinstance(msg, Event):
                out.update(self._routes.get(msg.event, []))
        return out

    def _parse(self, r: RawRecord) -> Parsed:
        if r.topic == self.topics.exposures:
            msg: Exposure | Event | Rejected = parse_exposure(r.value)
        else:
            msg = parse_event(r.value)
        reason = self._reject_reason(msg)
        if isinstance(msg, Rejected) or reason is not None:
            return r, None, reason or "invalid message"
        if r.key is not None and r.key != msg.unit.encode():
            return r, None, _key_mismatch(r.key, msg.unit)
        return r, msg, None

    def _build(self, partition: int, epoch: int, records: Sequence[RawRecord],
               stored: Mapping[str, int | None] | None,
               failed: Mapping[str, str]) -> PreparedBatch:
        """One attempt; experiments in ``failed`` take no part (their messages are dead
        letters with the reason, counted ``<experiment>:build_failed``)."""
        w = BatchWrite(partition, epoch)
        out = PreparedBatch(w)
        firsts: dict[str, int] = {}
        nexts: dict[str, int] = {}
        exposures: list[Exposure] = []
        events: list[Event] = []
        for r in records:
            _, msg, reason = self._parse(r)
            firsts.setdefault(r.topic, r.offset)
            firsts[r.topic] = min(firsts[r.topic], r.offset)
            nexts[r.topic] = max(nexts.get(r.topic, 0), r.offset + 1)
            if r.topic != self.topics.exposures:
                out.events_in += 1
            if reason is not None or msg is None:
                out.dead_letters.append(DeadLetter(r, reason or "invalid message"))
                continue
            held_out = self._failed_targets(msg, failed)
            for x in held_out:
                out.dead_letters.append(DeadLetter(r, _build_failed(x, failed[x])))
                w.counters[keys.experiment_counter(x, "build_failed")] += 1
            if isinstance(msg, Exposure):
                if not held_out:
                    exposures.append(msg)
            elif msg.experiment is None or not held_out:
                events.append(msg)
        w.offsets = [(t, stored[t] if stored is not None and t in stored else
                      (firsts[t] or None), nexts[t]) for t in sorted(firsts)]
        w.counters["dead_letters"] += len(out.dead_letters)
        w.counters["messages"] += len(records)
        reads, initial = self._apply(partition, w, exposures, events, failed)
        self._mature(partition, w, out, reads, initial, failed)
        return out

    def _failed_targets(self, msg: Exposure | Event, failed: Mapping[str, str]) -> list[str]:
        if not failed:
            return []
        if msg.experiment is not None:
            return [msg.experiment] if msg.experiment in failed else []
        assert isinstance(msg, Event)
        return [x for x in self._routes.get(msg.event, []) if x in failed]

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

    def _targets(self, e: Event, w: BatchWrite, failed: Collection[str]) -> list[str]:
        if e.experiment is not None:
            lay = self.layouts[e.experiment]
            if lay.definition.status != "running":  # stopped: frozen, whatever the time
                w.counters[keys.experiment_counter(e.experiment, "events_after_stop")] += 1
                return []
            return [e.experiment] if e.event in lay.event_columns else []
        routes = self._routes.get(e.event, _NO_ROUTES)
        return [x for x in routes if x not in failed] if failed else routes

    def _held_targets(self, h: HeldEvent) -> list[str]:
        """Running experiments a held event waits for."""
        if h.experiment is not None:
            lay = self.layouts.get(h.experiment)
            if lay is None or lay.definition.status != "running":
                return []
            return [h.experiment] if h.event in lay.event_columns else []
        return list(self._routes.get(h.event, []))

    def _apply(self, p: int, w: BatchWrite, exposures: list[Exposure],
               events: list[Event], failed: Collection[str] = ()
               ) -> tuple[BatchReads, Mapping[tuple[str, str], UnitState | None]]:
        """The batch's rules over what one read returned: unit states, held events, matrix
        deltas; returns the read and the states before the batch (for maturity)."""
        need: dict[str, set[str]] = defaultdict(set)
        for ex in exposures:
            need[ex.experiment].add(ex.unit)
        targets = [self._targets(e, w, failed) for e in events]
        for e, ts in zip(events, targets, strict=True):
            for name in ts:
                need[name].add(e.unit)
        pending_units = sorted({x.unit for x in exposures} | {e.unit for e in events})
        now = self.clock()
        touched = bool(exposures or events)
        reads = self.store.read_batch(
            p, {name: sorted(units) for name, units in need.items()}, pending_units,
            self.buckets, expired_before=now - self.grace if touched else None,
            max_pending=self.max_pending, matured_by=self._maturity_cutoff(exposures, events),
            matrices_of=[x for x in need if (p, x) not in self._shifts])
        self._stored_matrices = reads.matrices
        initial: dict[tuple[str, str], UnitState | None] = dict.fromkeys(
            (name, u) for name, units in need.items() for u in units)
        initial.update(reads.states)  # the units read: all of them in ``need``
        current: dict[tuple[str, str], UnitState | None] = dict(initial)
        held_stored = {u: _HELD_DECODE.decode(b) for u, b in reads.held.items()}
        held: dict[str, list[HeldEvent]] = {u: list(v) for u, v in held_stored.items()}
        held_changed: set[str] = set()
        last_ts: float | None = None

        for x in exposures:
            lay = self.layouts[x.experiment]
            refused = rules.exposure_refusal(lay, x.ts)
            if refused is not None:
                w.counters[keys.experiment_counter(x.experiment, refused)] += 1
                continue
            key = (x.experiment, x.unit)
            st = current.get(key)
            v = lay.definition.variations.index(x.variation)
            created = None
            if st is None:
                created = self._new_unit(p, w, lay, x, v)
                created, outcomes = rules.release_held(lay, created, held.get(x.unit, ()),
                                                       self.max_ids)
                for h, c in outcomes:
                    self._counted(w, x.experiment, c, h.ts)
            after, outcome = rules.expose(st, v, created)
            current[key] = after
            w.counters[keys.experiment_counter(x.experiment, outcome)] += 1

        for e, ts in zip(events, targets, strict=True):
            last_ts = e.ts if last_ts is None else max(last_ts, e.ts)
            missing = False
            for name in ts:
                ekey = (name, e.unit)
                est = current.get(ekey)
                if est is None:
                    missing = True
                    continue
                c = rules.count_event(self.layouts[name], est, e.event, e.value, e.ts, e.id,
                                      self.max_ids)
                self._counted(w, name, c, e.ts)
                current[ekey] = c.state
            if missing:
                lst = held.setdefault(e.unit, [])
                lst.append(HeldEvent(e.event, e.value, e.ts, e.experiment, e.id))
                held_changed.add(e.unit)
                if len(lst) > MAX_HELD_PER_UNIT:  # the unit's oldest held event goes first
                    self._count_evicted(w, e.unit, [lst.pop(0)], current)
            elif not ts and not self._frozen(e) and not self._failed_only(e, failed):
                w.counters["events_unrouted"] += 1
        w.counters["events"] += len(events)
        if last_ts is not None:
            # freshness: a far-future timestamp must not claim data newer than it is
            last_ts = min(last_ts, self.clock() + CLOCK_SKEW_SECONDS)
        w.last_event_ts = last_ts
        w.experiment_last_ts = {name: min(ts, self.clock() + CLOCK_SKEW_SECONDS)
                                for name, ts in w.experiment_last_ts.items()}
        self._settle_held(p, w, reads, now, held, held_stored, held_changed, current)
        self._deltas(p, w, initial, current, reads.buckets)
        self.slices.add(p, w, self.layouts, exposures, initial, current)
        return reads, initial

    def _failed_only(self, e: Event, failed: Collection[str]) -> bool:
        return bool(failed) and any(x in failed for x in self._routes.get(e.event, []))

    def _frozen(self, e: Event) -> bool:
        """A tagged event of a stopped experiment (counted ``events_after_stop``)."""
        return (e.experiment is not None
                and self.layouts[e.experiment].definition.status != "running")

    def _settle_held(self, p: int, w: BatchWrite, reads: BatchReads, now: float,
                     held: dict[str, list[HeldEvent]],
                     held_stored: Mapping[str, Sequence[HeldEvent]], held_changed: set[str],
                     current: Mapping[tuple[str, str], UnitState | None]) -> None:
        """Prune held events every target already took, expire those past the grace period,
        then keep at most ``max_pending`` units held: evict the units held longest."""
        for u, lst in held.items():
            keep = [h for h in lst if not self._taken(u, h, current)]
            if len(keep) < len(lst):
                held[u] = keep
                held_changed.add(u)
        for u in sorted(held_changed):
            if held[u]:
                w.pending_set[u] = _HELD.encode(held[u])
                if u not in held_stored:  # the grace period runs from when first held
                    w.pending_queue_add[u] = now + hold_extension(
                        self.layouts, self._held_targets, held[u], self.grace)
            else:
                held_changed.discard(u)
                if u in held_stored:
                    w.pending_del.add(u)
        for u in reads.expired:
            if u not in held_changed and u not in w.pending_del:
                w.pending_del.add(u)
                w.counters["held_expired"] += 1
        new_units = [u for u in held if u in w.pending_queue_add]  # arrival order
        if not new_units:
            return
        excess = reads.pending_count - len(w.pending_del) + len(new_units) - self.max_pending
        if excess <= 0:
            return
        victims = [u for u in reads.oldest[:excess + len(w.pending_del)]
                   if u not in w.pending_del][:excess]
        victims += new_units[:excess - len(victims)]
        missing = [u for u in victims if u not in held]
        for u, blob in self.store.read_pending(p, missing).items():  # at the bound only
            held[u] = list(_HELD_DECODE.decode(blob))
        for u in victims:
            self._count_evicted(w, u, held.get(u, []), current)
            w.pending_set.pop(u, None)
            if u in w.pending_queue_add:
                del w.pending_queue_add[u]
            else:
                w.pending_del.add(u)

    def _taken(self, unit: str, h: HeldEvent, current: Mapping[tuple[str, str],
                                                                   UnitState | None]) -> bool:
        """Whether every experiment the held event waits for has the unit exposed (so it
        has counted it, or will never)."""
        wanted = self._held_targets(h)
        return bool(wanted) and all(current.get((x, unit)) is not None for x in wanted)

    def _count_evicted(self, w: BatchWrite, unit: str, dropped: Sequence[HeldEvent],
                       current: Mapping[tuple[str, str], UnitState | None]) -> None:
        for h in dropped:
            w.counters["held_evicted"] += 1
            for x in self._held_targets(h):
                if current.get((x, unit)) is None:
                    w.counters[keys.experiment_counter(x, "held_evicted")] += 1

    def _new_unit(self, p: int, w: BatchWrite, lay: ExperimentLayout, x: Exposure, v: int
                  ) -> UnitState:
        """A first exposure's state: covariates, predictions ŷ frozen, maturity scheduled."""
        if not lay.prediction_columns:
            return rules.new_unit(lay, v, x.ts, x.covariates)
        raw = list(rules.new_unit(lay, v, x.ts, x.covariates).raw)
        versions = self._freeze_predictions(lay, raw)
        window = rules.window_end(lay, x.ts)
        if window is not None:
            w.zadd.append((keys.maturity(p), window, keys.maturity_member(x.experiment, x.unit)))
        return UnitState(v, 0, x.ts, tuple(raw), (), versions)

    @staticmethod
    def _counted(w: BatchWrite, experiment: str, c: rules.Counted, ts: float) -> None:
        """The counters (and the experiment's freshness) of one counting outcome."""
        if c.ids_evicted:
            w.counters[keys.experiment_counter(experiment, "event_ids_evicted")] += c.ids_evicted
        if c.outcome == COUNTED:
            if ts > w.experiment_last_ts.get(experiment, ts - 1.0):
                w.experiment_last_ts[experiment] = ts
        elif c.outcome != IGNORED:
            w.counters[keys.experiment_counter(experiment, c.outcome)] += 1

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

    def _maturity_cutoff(self, exposures: Sequence[Exposure], events: Sequence[Event]
                         ) -> float | None:
        """Units whose outcome window closed by the batch's newest time mature (None: no
        experiment predicts, or an empty batch)."""
        if not any(lay.prediction_columns for lay in self.layouts.values()):
            return None
        times = [x.ts for x in exposures] + [e.ts for e in events]
        if not times:
            return None
        return min(max(times), self.clock() + CLOCK_SKEW_SECONDS)

    def _mature(self, p: int, w: BatchWrite, out: PreparedBatch, reads: BatchReads,
                initial: Mapping[tuple[str, str], UnitState | None],
                failed: Collection[str] = ()) -> None:
        """Units whose outcome window closed become training examples (exposure features →
        outcome); they were predicted at exposure, so no unit trains its own prediction."""
        members = reads.matured
        if not members:
            return
        wanted: dict[str, list[str]] = defaultdict(list)
        for m in members:
            experiment, unit = keys.parse_maturity_member(m)
            if experiment in failed:  # left for a later batch
                continue
            if experiment in self.layouts:
                wanted[experiment].append(unit)
            w.zrem.append((keys.maturity(p), m))
        unknown = {x: [u for u in units if (x, u) not in initial]
                   for x, units in wanted.items()}
        found, _ = self.store.read_batch_state(  # only the matured units the batch did not read
            p, {x: units for x, units in unknown.items() if units}, [], self.buckets)
        found.update({k: st for k, st in initial.items() if st is not None})
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
                current: Mapping[tuple[str, str], UnitState | None],
                known: Mapping[str, int]) -> None:
        """Changed unit states to write and their matrix changes; ``known``: unit → bucket
        already hashed by the read."""
        changes: dict[str, list[tuple[UnitState | None, UnitState]]] = {}
        buckets = self.buckets
        for key, st in current.items():
            before = initial.get(key)
            if st is None or st == before:
                continue
            x, unit = key
            if before is not None and before.legacy_ids:  # format-1 CRC-32 ids, dropped
                w.counters[keys.experiment_counter(x, "event_ids_evicted")] += before.legacy_ids
            b = known.get(unit)
            w.units[(x, keys.bucket_of(unit, buckets) if b is None else b, unit)] = st.pack()
            w.unit_states[(x, unit)] = st
            changes.setdefault(x, []).append((before, st))
        for x, pairs in changes.items():
            lay = self.layouts[x]
            for variation, (new, old) in rules.unit_rows(lay, pairs).items():
                new_u, old_u = rules.vectors(lay, new), rules.vectors(lay, old)
                shift, delta, base = self._shifted_delta(p, x, variation, new_u, old_u)
                w.matrices[(x, variation)] = (shift, delta)
                self._histogram_deltas(w, x, variation, new_u, old_u)
                if base is not None:
                    w.matrix_bases[(x, variation)] = base

    def _histogram_deltas(self, w: BatchWrite, experiment: str, variation: str,
                          new_u: FloatArray, old_u: FloatArray) -> None:
        """Quantile metrics: each touched unit's count moves from its old value's bucket to
        its new one (estimators.quantiles), in the same atomic batch."""
        lay = self.layouts[experiment]
        for m in lay.definition.metrics:
            if m.aggregate != "quantile":
                continue
            col = lay.columns.index(m.name)
            delta = histogram_delta(new_u[:, col], old_u[:, col],
                                    m.accuracy or DEFAULT_ACCURACY)
            if delta:
                fields = w.histograms.setdefault((experiment, variation), {})
                for b, n in delta.items():
                    name = keys.histogram_field(m.name, b)
                    fields[name] = fields.get(name, 0) + n

    def _shifted_delta(self, p: int, experiment: str, variation: str, new_u: FloatArray,
                       old_u: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray | None]:
        """The batch's change of one stored matrix around its shift (rules.shifted_delta),
        from the matrices as this builder last wrote them."""
        columns = self.layouts[experiment].columns
        cache = self._shifts.get((p, experiment))
        if cache is None:
            raw = self._stored_matrices.get(experiment)
            cache = (self.store.matrix_states(p, experiment, columns) if raw is None else
                     self.store.parse_matrices(columns, raw))
            self._shifts[(p, experiment)] = cache
        out = rules.shifted_delta(columns, cache.get(variation), new_u, old_u)
        cache[variation] = out.matrix
        return out.shift, out.delta, out.base


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _build_failed(experiment: str, reason: str) -> str:
    return (f"experiment {experiment!r}: building its part of the batch failed ({reason}); "
            f"not applied to it")


def _key_mismatch(key: bytes, unit: str) -> str:
    shown = key[:70].decode("utf-8", "replace")
    return (f"key: the Kafka key {shown!r} is not the unit id {unit[:70]!r} (messages must "
            f"be keyed by unit id so they reach the unit's partition)")
