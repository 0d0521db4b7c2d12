"""The commit sequence of one partition batch, as an object with named states.

Modelled on Quix Streams' ``checkpointing/checkpoint.py`` (a checkpoint that produces, then
commits state, then commits offsets, refusing steps out of order). A batch goes::

    BUILT ─side outputs acked─▶ SIDE_OUTPUTS_ACKED ─fenced apply─▶ APPLIED ─▶ LAG_COMMITTED
      │                            │
      └▶ REFUSED (not acked)       └▶ REFUSED (fence: epoch or offsets; the partition re-seeks)

* **build** (:meth:`stream.batch.BatchBuilder.build`): one read, the rules, one immutable
  :class:`state.store.BatchWrite` (sealed: nothing changes it after).
* **side outputs** (dead letters, training examples) are sent and must be acknowledged by the
  broker *before* the apply, so a crash between the two re-sends them (at least once) and
  never loses them.
* **fenced apply**: one Lua call (``state/apply_batch.lua``) checks the owner epoch and the
  stored offsets, then writes everything or nothing. Stored offsets in Redis are the truth.
* **lag commit**: Kafka offsets are committed only so lag can be monitored, never read back.

An apply may run in the background (:class:`stream.commit.Applier`) while the owner polls the
next batch; the owner settles it before anything else reads or writes the partition, so the
next batch of a partition is built on the outcome of this one (a refused batch sends the
partition back to its stored offsets, and nothing built after it is applied).
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from state.store import ApplyOutcome, BatchWrite, PartitionStore
from stream.batch import PreparedBatch


class Step(enum.Enum):
    BUILT = "built"
    SIDE_OUTPUTS_ACKED = "side outputs acknowledged"
    APPLIED = "applied"
    LAG_COMMITTED = "lag committed"
    REFUSED = "refused"


class StepError(RuntimeError):
    """A step asked for out of order (a bug in the owner, never data)."""


@dataclass
class BatchCommit:
    """One partition batch on its way from built to lag-committed."""

    partition: int
    batch: PreparedBatch
    records: int
    step: Step = Step.BUILT
    outcome: ApplyOutcome | None = None
    errors: list[str] = field(default_factory=list)  # side outputs not acknowledged

    @property
    def write(self) -> BatchWrite:
        return self.batch.write

    def _expect(self, step: Step) -> None:
        if self.step is not step:
            raise StepError(f"partition {self.partition}: batch is {self.step.value}, "
                            f"expected {step.value}")

    def side_outputs(self, send: Callable[[PreparedBatch], list[str]]) -> bool:
        """Send dead letters and training examples; True when all were acknowledged."""
        self._expect(Step.BUILT)
        self.errors = send(self.batch)
        self.step = Step.REFUSED if self.errors else Step.SIDE_OUTPUTS_ACKED
        return not self.errors

    def seal(self, counters: Mapping[str, int]) -> None:
        """Add the owner's last counters and freeze the write (nothing changes it after)."""
        self._expect(Step.SIDE_OUTPUTS_ACKED)
        self.write.seal(counters)

    def apply(self, store: PartitionStore) -> ApplyOutcome:
        """The fenced apply (raises the store's errors: the owner retries the batch)."""
        self._expect(Step.SIDE_OUTPUTS_ACKED)
        if not self.write.sealed:
            raise StepError(f"partition {self.partition}: batch write not sealed")
        self.outcome = store.apply(self.write)
        self.step = Step.APPLIED if self.outcome.applied else Step.REFUSED
        return self.outcome

    def lag_committed(self) -> None:
        self._expect(Step.APPLIED)
        self.step = Step.LAG_COMMITTED


class Applier:
    """Runs at most one fenced apply in the background (Redis is its own process, so the
    owner's poll overlaps Redis's work). :meth:`settle` waits and returns the finished commit
    (its store error re-raised in the caller's thread)."""

    def __init__(self, store: PartitionStore) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="apply")
        self._inflight: tuple[BatchCommit, Future[ApplyOutcome]] | None = None
        self._lock = threading.Lock()

    @property
    def busy(self) -> bool:
        return self._inflight is not None

    def submit(self, commit: BatchCommit) -> None:
        with self._lock:
            if self._inflight is not None:
                raise StepError("an apply is already in flight; settle it first")
            self._inflight = (commit, self._pool.submit(commit.apply, self.store))

    def wait(self) -> None:
        """Wait for the apply in flight to finish (its outcome stays for :meth:`settle`)."""
        inflight = self._inflight
        if inflight is not None:
            inflight[1].exception()

    def settle(self) -> BatchCommit | None:
        """The commit in flight once finished (None if none); raises its store error."""
        with self._lock:
            inflight, self._inflight = self._inflight, None
        if inflight is None:
            return None
        commit, future = inflight
        future.result()
        return commit

    def close(self) -> None:
        self.wait()
        self._pool.shutdown(wait=True)
