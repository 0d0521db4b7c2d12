"""``replay --attribute`` and ``--pre-period`` build the messages they promise."""

from __future__ import annotations

import pandas as pd
import pytest

from stream.messages import Event, Exposure, parse_event, parse_exposure
from workers.dev.replay import ReplayError, replay_messages


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"v": ["a", "b", "a"], "spend": [0.0, 2.5, 1.0],
                         "hist": [4.0, 0.0, 3.0], "country": ["DE", None, "FR"]})


def test_attributes_and_pre_period_events() -> None:
    msgs = replay_messages(_frame(), "x", None, "v", ["spend"], [], attributes=["country"],
                           pre_period=["hist=spend"], pre_offset=30.0)
    exposures = [parse_exposure(m[2]) for m in msgs if m[0] == "exposures"]
    events = [parse_event(m[2]) for m in msgs if m[0] == "events"]
    assert all(isinstance(x, Exposure) for x in exposures)
    assert [x.attributes for x in exposures] == [  # type: ignore[union-attr]
        {"country": "DE"}, {}, {"country": "FR"}]
    pre = [e for e in events if isinstance(e, Event) and e.id and ":pre:" in e.id]
    assert [(e.unit, e.event, e.value) for e in pre] == [("u0", "spend", 4.0),
                                                         ("u2", "spend", 3.0)]
    t0 = {x.unit: x.ts for x in exposures if isinstance(x, Exposure)}
    assert all(e.ts == pytest.approx(t0[e.unit] - 30.0) for e in pre)


def test_bad_pre_period_option() -> None:
    with pytest.raises(ReplayError, match="expected COL or COL=EVENT"):
        replay_messages(_frame(), "x", None, "v", ["spend"], [], pre_period=["hist="])
    with pytest.raises(ReplayError, match="'nope' \\(pre-period\\) not found"):
        replay_messages(_frame(), "x", None, "v", ["spend"], [], pre_period=["nope"])
    with pytest.raises(ReplayError, match="'nope' \\(attribute\\) not found"):
        replay_messages(_frame(), "x", None, "v", ["spend"], [], attributes=["nope"])
