"""The commit sequence's named states and the sealed batch write (no broker, no Redis)."""

from __future__ import annotations

import pytest

from state.store import BatchWrite
from stream.batch import PreparedBatch
from stream.commit import BatchCommit, Step, StepError


def commit() -> BatchCommit:
    w = BatchWrite(3, 7)
    w.counters["messages"] += 2
    w.zadd.append(("k", 1.0, "m"))
    return BatchCommit(3, PreparedBatch(w), 2)


def test_side_outputs_must_be_acknowledged_before_the_apply() -> None:
    c = commit()
    with pytest.raises(StepError, match="expected side outputs acknowledged"):
        c.apply(None)  # type: ignore[arg-type]
    assert not c.side_outputs(lambda b: ["broker down"])
    assert c.step is Step.REFUSED and c.errors == ["broker down"]
    with pytest.raises(StepError):
        c.seal({})


def test_an_acknowledged_batch_is_sealed_then_immutable() -> None:
    c = commit()
    assert c.side_outputs(lambda b: []) and c.step is Step.SIDE_OUTPUTS_ACKED
    c.seal({"batches": 1, "messages": 1})
    w = c.write
    assert w.sealed and dict(w.counters) == {"messages": 3, "batches": 1}
    assert w.zadd == (("k", 1.0, "m"),)
    with pytest.raises(TypeError):
        w.counters["messages"] = 0  # type: ignore[index]
    with pytest.raises(AttributeError, match="sealed"):
        w.epoch = 8
    with pytest.raises(StepError):
        c.lag_committed()  # not applied yet
