"""``liftstream learner``: train River models on the training topic, publish signed snapshots.

Ingest workers publish a :class:`~stream.batch.TrainingExample` when a unit's outcome window
closes — after its ŷ was frozen at exposure, so no unit trains the prediction it is analysed
with (Tang et al. 2020, CUPAC; Guo et al. 2021, MLRATE: the model must not see the unit).
The learner keeps one :class:`~workers.learner.online_model.OnlineModel` per model id, its kind
taken from the experiment definition (``"<experiment>/<metric>"`` → ``ExperimentDef.model``;
``linear`` for ids of no registered experiment, e.g. historical examples), and publishes
snapshots through :class:`~state.models.ModelRegistry` every
``learner_snapshot_examples`` examples or ``learner_snapshot_seconds`` seconds.

Consumption and exactly-once learning
-------------------------------------
* **Group-less consumer, explicit assignment** of every partition of the training topic. A
  model's examples are spread over all partitions (they are not keyed by model), so two
  learners sharing partitions through a consumer group would both own every model. Run one
  learner; a second one is detected (the registry's latest version of a model is not the
  one this learner published last) and stops with :class:`LearnerConflict`.
* **Offsets live in the snapshot.** Each snapshot header stores, per training-topic
  partition, the offset below which every example of *that model* is in the pickled state
  (``"<topic>:<partition>" → offset``). Model state and offsets are written together in one
  signed hash field, so they cannot disagree.
* **Restart.** The learner loads the latest verifiable snapshot of every model (a tampered
  one is refused and the previous version used: its offsets match its state) and seeks each
  partition to the *smallest* stored offset; an example below its own model's stored offset
  is skipped as already learned. A model that has no snapshot yet is published *first* in a
  checkpoint, so the smallest stored offset never passes an example that is only in memory.
  A model that gets no examples is re-published with current offsets every
  :data:`TOUCH_SECONDS`, so it does not pin the restart position forever.
* **Legacy ids.** Ids were ``<experiment>.<metric>`` before (ambiguous across experiments).
  At start-up a stored snapshot under such an id is *adopted* under the new id of every
  registered experiment-metric it names (:meth:`state.models.ModelRegistry.adopt`), and a
  training example still carrying it is learned by those models.
* Examples repeated by ingest (at-least-once publishing around a crash) carry the same
  ``id`` and are skipped by the model's window of recent ids.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis.exceptions

from state.definition import ExperimentDef
from state.models import ModelRegistry
from state.registry import Registry
from state.store import Client, connect
from stream.kafka import TopicPartition, ensure_topics, make_consumer, partition_counts
from workers.learner.checkpoint import (
    LearnerState,
)
from workers.settings import Settings, SettingsError

__all__ = ["Learner"]

log = logging.getLogger("liftstream.learner")

class Learner:
    """The ``liftstream learner`` process: a Kafka loop around :class:`LearnerState`."""

    def __init__(self, settings: Settings, name: str = "learner",
                 client: Client | None = None) -> None:
        if not settings.model_hmac_key:
            raise SettingsError("LIFTSTREAM_MODEL_HMAC_KEY: required by the learner (snapshots "
                                "are signed with it and workers verify them)")
        self.settings = settings
        self.name = name
        self.client = client or connect(settings.redis_url, settings.redis_cluster)
        self.experiments = Registry(self.client)
        self._definitions: dict[str, ExperimentDef] = {}
        self._registry_version = -1
        self._registry_checked = 0.0
        self.state = LearnerState(
            ModelRegistry(self.client, settings.model_hmac_key), settings.topic_training,
            snapshot_examples=settings.learner_snapshot_examples,
            snapshot_seconds=settings.learner_snapshot_seconds,
            dedupe_window=settings.learner_dedupe_window, definitions=self.definitions)
        self.stop_event = threading.Event()
        self.consumer: Any = None
        self.partitions: list[int] = []
        self.start_offsets: dict[int, int | None] = {}
        self.started = threading.Event()  # set once loaded and seeked

    def definitions(self) -> dict[str, ExperimentDef]:
        now = time.monotonic()
        if now - self._registry_checked >= 2.0:
            self._registry_checked = now
            try:
                version = self.experiments.version()
                if version != self._registry_version:
                    self._definitions = {d.id: d for d in self.experiments.list()}
                    self._registry_version = version
            except redis.exceptions.RedisError as exc:
                log.warning("%s: experiment registry unreadable (%s); using the last one",
                            self.name, exc)
        return self._definitions

    def _checkpoint(self) -> None:
        """Checkpoint; a Redis outage is logged and retried at the next occasion (the
        models stay dirty, nothing is lost: unsaved examples are re-read after a crash)."""
        try:
            self.state.checkpoint()
        except redis.exceptions.RedisError as exc:
            self.state.stats["checkpoint_errors"] += 1
            self.state.since_checkpoint = 0  # back off: retry after N examples or T seconds
            self.state.last_checkpoint = self.state.clock()
            log.error("%s: snapshot publish failed (%s); retrying", self.name, exc)

    def _assign(self) -> None:
        s = self.settings
        sec = s.kafka_options()
        ensure_topics(s.kafka_bootstrap, {s.topic_training: 1}, strict=False, **sec)
        n = partition_counts(s.kafka_bootstrap, [s.topic_training], **sec)[s.topic_training]
        self.partitions = list(range(n or 1))
        self.consumer = make_consumer(s.kafka_bootstrap, None, None, client_id=self.name,
                                      max_poll_records=s.batch_size, **sec)
        tps = [TopicPartition(s.topic_training, p) for p in self.partitions]
        self.consumer.assign(tps)
        starts = self.state.start_offsets(self.partitions)
        self.start_offsets = starts
        for tp in tps:
            start = starts[tp.partition]
            if start is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, start)
        log.info("%s: training topic %s, %d partition(s), start offsets %s", self.name,
                 s.topic_training, len(self.partitions), starts)

    def run(self) -> None:
        report = self.state.load()
        log.info("%s: loaded %d model(s); refused %s", self.name, report.models, report.refused)
        self._assign()
        self.started.set()
        t_log = time.monotonic()
        try:
            while not self.stop_event.is_set():
                polled = self.consumer.poll(timeout_ms=self.settings.batch_timeout_ms,
                                            max_records=self.settings.batch_size)
                for tp, records in polled.items():
                    for r in records:
                        self.state.handle(tp.partition, r.offset, r.value)
                        if self.state.since_checkpoint >= self.state.snapshot_examples:
                            self._checkpoint()
                if self.state.due():
                    self._checkpoint()
                if time.monotonic() - t_log >= 30.0:
                    t_log = time.monotonic()
                    log.info("%s: %s", self.name, dict(self.state.stats))
            self._checkpoint()
        finally:
            self.close()

    def close(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False)
            except Exception as exc:
                log.debug("consumer close: %s", exc)
            self.consumer = None

