"""The learner's checkpoint: models, their training offsets (the offset-key codec), kinds."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from state import keys
from state.definition import ExperimentDef
from state.models import LoadedModel, ModelRegistry, SignatureError
from state.naming import legacy_targets, parse_model_id, resolve_model_id
from state.naming import model_id as make_model_id
from stream.batch import TrainingExample
from workers.learner.online_model import DEFAULT_KIND, KINDS, OnlineModel

log = logging.getLogger("liftstream.learner")

TOUCH_SECONDS: Final = 300.0
KEEP_VERSIONS: Final = 5  # as state.models: how far back a refused latest snapshot may fall
_DECODE = msgspec.json.Decoder(TrainingExample)


class LearnerConflict(RuntimeError):
    """Another process published a model this learner owns (two learners running?)."""


# a topic-partition's key in a snapshot header's offsets (the format lives in state.keys)
offset_key = keys.snapshot_offset
parse_offset_key = keys.parse_snapshot_offset


def resolve_kind(mid: str, definitions: Mapping[str, ExperimentDef]) -> str:
    """The model kind of ``"<experiment>/<metric>"`` (or of a legacy dotted id)."""
    target = resolve_model_id(mid, definitions)
    if target is not None:
        kind = definitions[target[0]].model
        if kind in KINDS:
            return kind
    return DEFAULT_KIND


@dataclass
class _Slot:
    """One model the learner owns."""

    model: OnlineModel
    version: int = 0  # the registry's latest version as far as this learner knows
    floor: dict[int, int] = field(default_factory=dict)  # partition → all below is learned
    dirty: int = 0  # examples learned since the last publish
    published_at: float = 0.0  # time.monotonic() of the last publish


@dataclass
class LoadReport:
    models: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # model id → refused versions
    foreign: list[str] = field(default_factory=list)  # snapshots that are not OnlineModels


class LearnerState:
    """Everything but Kafka: models, per-model offsets, checkpoints (testable alone)."""

    def __init__(self, registry: ModelRegistry, topic: str, *, snapshot_examples: int = 5000,
                 snapshot_seconds: float = 10.0, dedupe_window: int = 50_000,
                 definitions: Callable[[], Mapping[str, ExperimentDef]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.topic = topic
        self.snapshot_examples = snapshot_examples
        self.snapshot_seconds = snapshot_seconds
        self.dedupe_window = dedupe_window
        self._definitions = definitions or (lambda: {})
        self.clock = clock
        self.slots: dict[str, _Slot] = {}
        self.foreign: set[str] = set()  # ids whose snapshots are not OnlineModels: left alone
        self.processed: dict[int, int] = {}  # partition → next offset after the last handled
        self.stats: Counter[str] = Counter()
        self.since_checkpoint = 0
        self.last_checkpoint = clock()

    # -- start-up -------------------------------------------------------------------------
    def load(self, model_ids: Iterable[str] | None = None) -> LoadReport:
        """Load the latest verifiable snapshot of every model in the registry."""
        report = LoadReport()
        ids = model_ids if model_ids is not None else self._registered_ids()
        definitions = self._definitions()
        legacy: dict[str, list[str]] = {}  # legacy id → the new ids it names
        for mid in sorted(ids):
            targets = legacy_targets(mid, definitions) if parse_model_id(mid) is None else []
            if targets:
                legacy[mid] = [make_model_id(*t) for t in targets]
            else:
                self._load_one(mid, report)
        for old, news in legacy.items():
            for new in news:
                if new not in self.slots and new not in self.foreign:
                    self._adopt(old, new, report)
        return report

    def _latest_verifiable(self, mid: str, report: LoadReport) -> tuple[int, LoadedModel | None]:
        latest = self.registry.latest_version(mid)
        for version in range(latest, max(latest - KEEP_VERSIONS, 0), -1):
            try:
                loaded = self.registry.load(mid, version)
            except SignatureError as exc:
                report.refused[mid] = report.refused.get(mid, 0) + 1
                self.stats["refused_snapshots"] += 1
                self.registry.count_refusal(mid)
                log.error("learner: refused snapshot (%s); trying an older version", exc)
                continue
            if loaded is not None:
                return latest, loaded
        return latest, None

    def _adopt(self, legacy_id: str, mid: str, report: LoadReport) -> None:
        """Continue a legacy-id snapshot under the new id ``mid`` (published at once)."""
        _, loaded = self._latest_verifiable(legacy_id, report)
        if loaded is None or not isinstance(loaded.model, OnlineModel):
            log.warning("learner: legacy snapshot %s not adopted as %s (none verifiable, or "
                        "not an OnlineModel)", legacy_id, mid)
            return
        version = self.registry.adopt(legacy_id, mid, loaded)
        log.info("learner: adopted legacy snapshot %s as %s v%d", legacy_id, mid, version)
        self.slots[mid] = _Slot(loaded.model, version, self._floor(loaded), 0, self.clock())
        report.models += 1

    def _floor(self, loaded: LoadedModel) -> dict[int, int]:
        floor = {}
        for key, off in loaded.header.offsets.items():
            parsed = keys.parse_snapshot_offset(key)
            if parsed is not None and parsed[0] == self.topic:
                floor[parsed[1]] = int(off)
        return floor

    def _load_one(self, model_id: str, report: LoadReport) -> None:
        latest, loaded = self._latest_verifiable(model_id, report)
        if loaded is None:
            if latest > 0:
                log.error("learner: no verifiable snapshot of %s: it restarts empty and "
                          "re-learns the topic from the beginning", model_id)
                self.slots[model_id] = _Slot(self._new_model(model_id), latest)
            return
        if not isinstance(loaded.model, OnlineModel):
            report.foreign.append(model_id)
            self.foreign.add(model_id)
            log.warning("learner: snapshot of %s is a %s, not an OnlineModel: not managed",
                        model_id, type(loaded.model).__name__)
            return
        self.slots[model_id] = _Slot(loaded.model, latest, self._floor(loaded), 0,
                                     self.clock())
        report.models += 1

    def _registered_ids(self) -> list[str]:
        raw: Any = self.registry.client.smembers(keys.MODEL_INDEX)
        return [r.decode() if isinstance(r, bytes) else str(r) for r in raw]

    def start_offsets(self, partitions: Iterable[int]) -> dict[int, int | None]:
        """Per partition: the smallest stored offset over all models (None = beginning)."""
        out: dict[int, int | None] = {}
        stored = [s for s in self.slots.values() if s.version > 0]
        for p in partitions:
            if not stored or any(p not in s.floor for s in stored):
                out[p] = None
            else:
                out[p] = min(s.floor[p] for s in stored)
        return out

    # -- examples -------------------------------------------------------------------------
    def handle(self, partition: int, offset: int, value: bytes | None) -> bool:
        """Learn one training-topic record; True if a model learned it."""
        self.processed[partition] = offset + 1
        try:
            ex = _DECODE.decode(value or b"")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.stats["invalid_messages"] += 1
            log.debug("learner: invalid training message at %d/%d: %s", partition, offset, exc)
            return False
        if not ex.model or len(ex.model) > 512:
            self.stats["invalid_messages"] += 1
            return False
        learned = False
        for mid in self._targets(ex.model):
            learned = self._learn(mid, partition, offset, ex) or learned
        return learned

    def _targets(self, mid: str) -> list[str]:
        """The models an example's id trains: itself, or those a legacy id names."""
        if parse_model_id(mid) is not None:
            return [mid]
        targets = legacy_targets(mid, self._definitions())
        return [make_model_id(*t) for t in targets] if targets else [mid]

    def _learn(self, mid: str, partition: int, offset: int, ex: TrainingExample) -> bool:
        slot = self.slots.get(mid)
        if slot is None and mid in self.foreign:
            self.stats["foreign_model_examples"] += 1
            return False
        if slot is None:
            slot = self.slots[mid] = _Slot(self._new_model(mid))
        if offset < slot.floor.get(partition, 0):
            self.stats["already_learned"] += 1
            return False
        if not slot.model.learn(ex.features, ex.target, ex.id):
            self.stats["skipped_examples"] += 1
            return False
        slot.dirty += 1
        self.since_checkpoint += 1
        self.stats["learned"] += 1
        return True

    def _new_model(self, model_id: str) -> OnlineModel:
        kind = resolve_kind(model_id, self._definitions())
        log.info("learner: new model %s (%s)", model_id, kind)
        return OnlineModel(kind, dedupe_window=self.dedupe_window)

    # -- checkpoints ----------------------------------------------------------------------
    def due(self) -> bool:
        if self.since_checkpoint >= self.snapshot_examples:
            return True
        return self.clock() - self.last_checkpoint >= self.snapshot_seconds

    def checkpoint(self) -> int:
        """Publish every model that learned something (new models first); returns how many."""
        now = self.clock()
        order = sorted(self.slots.items(), key=lambda kv: (kv[1].version > 0, kv[0]))
        published = 0
        for model_id, slot in order:
            stale = (slot.version > 0 and now - slot.published_at >= TOUCH_SECONDS
                     and any(slot.floor.get(p, 0) < off for p, off in self.processed.items()))
            if slot.dirty or stale:
                self.publish(model_id, slot)
                published += 1
        self.since_checkpoint = 0
        self.last_checkpoint = now
        return published

    def publish(self, model_id: str, slot: _Slot) -> int:
        current = self.registry.own_latest_version(model_id)  # not a legacy id's fallback
        if current != slot.version:
            raise LearnerConflict(
                f"model {model_id!r} is at version {current} in the registry, but this learner "
                f"last saw version {slot.version}: another learner is publishing it")
        for p, off in self.processed.items():
            slot.floor[p] = max(slot.floor.get(p, 0), off)
        offsets = {keys.snapshot_offset(self.topic, p): off
                   for p, off in sorted(slot.floor.items())}
        m = slot.model
        slot.version = self.registry.publish(model_id, m, m.examples, m.kind, m.metrics(),
                                             offsets)
        slot.dirty = 0
        slot.published_at = self.clock()
        self.stats["snapshots"] += 1
        log.info("learner: published %s v%d (%s, %d examples)", model_id, slot.version, m.kind,
                 m.examples)
        return slot.version
