"""Stored offsets checked against the log: a reset broker or topic, or retention, is detected.

The next offset stored in Redis per topic-partition is ingest's durable position (DESIGN §2).
It is valid only inside the partition's log range ``begin ≤ offset ≤ end`` (end = high
watermark). Outside it, applying from there would silently skip data: after a memory broker
restarts or a topic is recreated every log starts again at 0 (the stored offsets lie beyond
its end, and new records below them would be skipped); after retention deleted records never
applied, the stored offset lies before the log's beginning.

Such a partition is *held*: nothing of it is applied, the condition ``offsets_out_of_range``
is set in Redis (every live result document shows it) until the operator accepts the gap with
``liftstream offsets reset`` (or ``LIFTSTREAM_OFFSET_RESET=earliest`` does so automatically):
:func:`reset_partition` moves the affected offsets to the log's beginning and records the gap
as the warning ``offsets_reset``. The condition is kept even when a reset log grows past the
stored offset again: being in range then does not mean nothing was skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from state.store import PartitionStore
from stream.kafka import LogRange

__all__ = ["OutOfRange", "ResetResult", "describe", "out_of_range", "reset_partition"]

RESET_ATTEMPTS = 5


@dataclass(frozen=True)
class OutOfRange:
    """One topic-partition whose stored next offset lies outside its log."""

    topic: str
    partition: int
    stored: int
    log: LogRange

    def describe(self) -> str:
        return (f"{self.topic} partition {self.partition}: stored offset {self.stored} "
                f"outside the log range {self.log.begin}..{self.log.end}")


def out_of_range(partition: int, stored: Mapping[str, int],
                 ranges: Mapping[tuple[str, int], LogRange]) -> list[OutOfRange]:
    """Stored offsets of ``partition`` outside their log; a topic without a stored offset or
    without a known range is not judged.

    >>> out_of_range(1, {"e": 90, "x": 3}, {("e", 1): LogRange(0, 10), ("x", 1): LogRange(0, 5)})
    [OutOfRange(topic='e', partition=1, stored=90, log=LogRange(begin=0, end=10))]
    """
    out = []
    for topic, offset in sorted(stored.items()):
        rng = ranges.get((topic, partition))
        if rng is not None and not rng.begin <= offset <= rng.end:
            out.append(OutOfRange(topic, partition, offset, rng))
    return out


def describe(found: Sequence[OutOfRange]) -> str:
    """The ``offsets_out_of_range`` detail: which offsets, which log, what it means."""
    return ("; ".join(f.describe() for f in found)
            + " (broker or topic reset, or retention): nothing of this partition is applied "
              "until `liftstream offsets reset`")


@dataclass(frozen=True)
class ResetResult:
    partition: int
    moves: list[tuple[str, int | None, int]]  # topic, old stored offset, new offset
    detail: str

    @property
    def changed(self) -> bool:
        return bool(self.moves)


def reset_partition(store: PartitionStore, partition: int, topics: Sequence[str],
                    ranges: Mapping[tuple[str, int], LogRange], by: str,
                    force: bool = False) -> ResetResult:
    """Move the stored offsets of ``partition`` that lie (or were found) outside the log to
    its beginning, atomically (compare-and-set, retried if a batch moved them meanwhile).

    ``force`` also moves in-range offsets (events without an id read twice count twice).
    ``by`` names who accepted the gap (the operator or the setting). Raises ``LookupError``
    when a needed log range is unknown.
    """
    for _ in range(RESET_ATTEMPTS):
        stored = store.stored_offsets(partition)
        flagged = store.flagged_topics(partition)
        bad = {f.topic for f in out_of_range(partition, stored, ranges)}
        move = [t for t in topics if t in stored and (force or t in bad or t in flagged)]
        if not move and "offsets_out_of_range" not in store.partition_flags(partition):
            return ResetResult(partition, [], "")
        missing = [t for t in move if (t, partition) not in ranges]
        if missing:
            raise LookupError(f"log range of {', '.join(missing)} partition {partition} "
                              f"unknown (broker unreachable?)")
        moves: list[tuple[str, int | None, int]] = [
            (t, stored.get(t), ranges[t, partition].begin) for t in move]
        detail = (f"offsets reset ({by}): " + ", ".join(
            f"{t} partition {partition} stored offset {old} -> {new} (log range "
            f"{ranges[t, partition].begin}..{ranges[t, partition].end})" for t, old, new in moves)
            + "; records the stored offsets had not reached before the reset were never "
              "counted")
        if not moves:
            detail = f"offsets reset ({by}): stored offsets kept (inside the log)"
        if store.reset_offsets(partition, moves, detail).applied:
            return ResetResult(partition, moves, detail)
    raise RuntimeError(f"partition {partition}: stored offsets kept moving; retry the reset")
