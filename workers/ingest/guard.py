"""The worker's guard of stored offsets against the log (:mod:`stream.offsets`).

Stored offsets outside the log (broker or topic reset, retention) are found on assignment,
when a fetch's high watermark falls below the offset the owner expects stored, and when a
batch does not continue from it; the partition is then held (nothing applied,
``offsets_out_of_range``) until an offsets reset, which it notices and seeks to.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import redis

from state.store import PartitionStore
from stream.batch import BatchBuilder, RawRecord, Topics
from stream.kafka import LogRange, TopicPartition, log_ranges
from stream.offsets import describe, out_of_range, reset_partition
from workers.settings import Settings

log = logging.getLogger("liftstream.worker")

RANGE_RECHECK_S = 2.0  # least time between two log-range checks of one partition
HELD_POLL_S = 1.0  # how often a held partition looks for an offsets reset
RANGE_TIMEOUT_S = 3.0  # budget of one log-range probe (well below max_poll_interval_ms)


class _RangeUnknown(RuntimeError):
    """A partition's log range could not be read (broker unreachable): check again later."""


class OffsetGuard:
    """Mixin of :class:`workers.ingest.worker.IngestWorker`: the log-range checks."""

    settings: Settings
    name: str
    store: PartitionStore
    builder: BatchBuilder
    topics: Topics
    consumer: Any
    stats: dict[str, float]
    owned: dict[int, int]
    held: dict[int, str]
    unchecked: set[int]
    expected: dict[tuple[str, int], int | None]
    _range_checked: dict[int, float]
    _range_tried: dict[int, float]
    _held_checked: float

    if TYPE_CHECKING:  # provided by the worker
        def _seek_stored(self, p: int) -> None: ...

    def _first_check(self, p: int, ranges: dict[tuple[str, int], LogRange] | None = None
                     ) -> None:
        """The check on assignment, tried again every RANGE_RECHECK_S until it succeeds
        (meanwhile the cheap checks guard: watermark and record offsets, see _rewound)."""
        self._range_tried[p] = time.monotonic()
        try:
            self._check_range(p, ranges)
        except (redis.RedisError, _RangeUnknown) as exc:  # again before the next apply
            log.warning("%s: offsets of partition %d not checked yet: %s", self.name, p, exc)
            return
        self.unchecked.discard(p)

    # -- stored offsets against the log (stream.offsets) --------------------------------
    def _tps(self, p: int) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t in (self.topics.exposures, self.topics.events)]

    def _log_ranges(self, partitions: list[int]) -> dict[tuple[str, int], LogRange]:
        s = self.settings
        try:
            return log_ranges(s.kafka_bootstrap,
                              [(t, p) for p in partitions
                               for t in (self.topics.exposures, self.topics.events)],
                              timeout_s=RANGE_TIMEOUT_S, **s.kafka_options())
        except Exception as exc:  # broker unreachable: judge again later
            log.warning("%s: log ranges of partitions %s unknown: %s", self.name, partitions,
                        exc)
            return {}

    def _check_range(self, p: int,
                     ranges: dict[tuple[str, int], LogRange] | None = None) -> bool:
        """Compare the stored offsets of ``p`` with its log; hold ``p`` (or, with
        ``LIFTSTREAM_OFFSET_RESET=earliest``, reset it) when they lie outside. True when
        ``p`` may be applied."""
        stored = self.store.stored_offsets(p)
        flags = self.store.partition_flags(p)
        if not stored and not flags:
            return True
        if ranges is None or any((t, p) not in ranges for t in stored):
            ranges = self._log_ranges([p])
        unknown = [t for t in stored if (t, p) not in ranges]
        if unknown:
            raise _RangeUnknown(f"log range of {', '.join(unknown)} partition {p} unknown")
        self._range_checked[p] = time.monotonic()
        found = out_of_range(p, stored, ranges)
        if not found and "offsets_out_of_range" not in flags:
            return True
        if found:
            detail = describe(found)
            if self.store.flag_out_of_range(p, detail, {f.topic: f.stored for f in found}):
                self.stats["offsets_out_of_range"] += 1
        else:
            detail = flags["offsets_out_of_range"]
        log.error("%s: stored offsets outside the log: %s", self.name, detail)
        if self.settings.offset_reset == "earliest":
            try:
                result = reset_partition(self.store, p, [t.topic for t in self._tps(p)],
                                         ranges, by="LIFTSTREAM_OFFSET_RESET=earliest")
            except (LookupError, RuntimeError) as exc:  # tried again while held
                log.error("%s: partition %d not reset yet: %s", self.name, p, exc)
            else:
                log.error("%s: %s", self.name, result.detail)
                self._resume(p)
                return True
        self._hold(p, detail)
        return False

    def _hold(self, p: int, detail: str) -> None:
        self.held[p] = detail
        self.builder.forget(p)
        assert self.consumer is not None
        try:
            self.consumer.pause(*self._tps(p))
        except Exception as exc:  # not assigned (any more): nothing is fetched anyway
            log.debug("pause %d: %s", p, exc)

    def _resume(self, p: int) -> None:
        """Continue ``p`` from the offsets Redis holds now (after an offsets reset)."""
        self.held.pop(p, None)
        self.builder.forget(p)
        self._seek_stored(p)
        assert self.consumer is not None
        try:
            self.consumer.resume(*self._tps(p))
        except Exception as exc:
            log.debug("resume %d: %s", p, exc)

    def _watch_offsets(self) -> None:
        """Before applying: resume held partitions that were reset; check the log range of
        any owned partition whose high watermark (from fetch responses) fell below the
        offset the owner expects stored, which only a reset log does."""
        assert self.consumer is not None
        now = time.monotonic()
        for p in sorted(self.unchecked):
            if p not in self.owned:
                self.unchecked.discard(p)
            elif now - self._range_tried.get(p, 0.0) >= RANGE_RECHECK_S:
                self._first_check(p)
        if self.held and now - self._held_checked >= HELD_POLL_S:
            self._held_checked = now
            for p in list(self.held):
                if p not in self.owned:
                    self.held.pop(p, None)
                elif "offsets_out_of_range" not in self.store.partition_flags(p):
                    log.info("%s: partition %d was reset; resuming from its stored offsets",
                             self.name, p)
                    self._resume(p)
                elif self.settings.offset_reset == "earliest":
                    self._recheck(p)
        for p in list(self.owned):
            if p in self.held or now - self._range_checked.get(p, 0.0) < RANGE_RECHECK_S:
                continue
            for tp in self._tps(p):
                try:
                    high = self.consumer.highwater(tp)
                except Exception:  # not assigned (any more)
                    break
                expected = self.expected.get((tp.topic, p))
                if high is not None and expected is not None and high < expected:
                    self._recheck(p)
                    break

    def _recheck(self, p: int) -> None:
        self._range_tried[p] = time.monotonic()
        try:
            self._check_range(p)
        except _RangeUnknown as exc:  # tried again every RANGE_RECHECK_S
            log.warning("%s: %s", self.name, exc)
            self.unchecked.add(p)

    def _rewound(self, p: int, records: list[RawRecord]) -> bool:
        """The batch does not continue from the offset the owner expects stored: a record
        below it (the log went back: the consumer re-read a reset log from its start), or a
        first record beyond it (the consumer jumped, e.g. to a beginning retention moved past
        it; also transaction markers and compaction, hence a range check at most every
        RANGE_RECHECK_S). True when the batch is dropped (``p`` held, or read again)."""
        firsts: dict[str, int] = {}
        for r in records:
            firsts[r.topic] = min(firsts.get(r.topic, r.offset), r.offset)
        back = forward = False
        for topic, first in firsts.items():
            expected = self.expected.get((topic, p))
            back = back or (expected is not None and first < expected)
            forward = forward or (expected is not None and first > expected)
        recent = time.monotonic() - self._range_checked.get(p, 0.0) < RANGE_RECHECK_S
        if not back and (not forward or recent):
            return False
        log.warning("%s: partition %d batch starts at %s, stored offsets expected %s",
                    self.name, p, firsts,
                    {t: self.expected.get((t, p)) for t in firsts})
        self._range_tried[p] = time.monotonic()
        try:
            ok = self._check_range(p)
        except _RangeUnknown as exc:  # not judged: read the batch again, judge again
            log.warning("%s: %s", self.name, exc)
            self.builder.forget(p)
            self._rewind(p)
            return True
        if ok and not back:
            return False
        if ok:
            self.builder.forget(p)
            self._seek_stored(p)
        return True

    def _rewind(self, p: int) -> None:
        """Seek ``p`` back to the offsets the owner expects stored (no Redis read)."""
        assert self.consumer is not None
        for tp in self._tps(p):
            expected = self.expected.get((tp.topic, p))
            if expected is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, expected)
