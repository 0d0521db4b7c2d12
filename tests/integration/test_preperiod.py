"""The metric's own pre-period from the stream (issue 13 item 2; DESIGN §2).

Units get purchase events spread over 2·L before their exposure and after it; everything is
published shuffled (pre-period events arrive before and after their unit's exposure) with 10 %
duplicates (events carry ids). Through the real broker and Redis, the live document — whose
cuped, mlrate and adjusted use ``pre_spend`` — equals ``analyze --covariate pre_spend`` on the
unit table built from the same raw events (purchases in [t₀ − L, t₀) summed; older ones count
nowhere, later ones are the outcome) to 1e-9.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from estimators.analysis import AnalysisSettings
from state.registry import Registry, parse_definition
from state.results import experiment_document
from stream.messages import Event, Exposure, encode_event, encode_exposure
from workers.batch.analyze import AnalyzeRequest, analyze_frame
from workers.batch.columns import MetricColumn
from workers.dev.embedded import Broker

from .conftest import unique
from .streaming import (
    assert_documents_equal,
    create_topics,
    publish,
    redis_client,
    streaming_settings,
    wait_for_messages,
    worker_thread,
)

L = 3600.0
UNITS = 3000
T0 = 1_760_000_000.0
DEFINITION = {
    "id": "pre",
    "variations": ["control", "treatment"],
    "metrics": [{"name": "spend", "event": "purchase", "aggregate": "sum"}],
    "pre_period": ["spend"],
    "lookback_seconds": L,
}


def stream(seed: int) -> tuple[list[tuple[str, bytes, bytes]], pd.DataFrame]:
    """Messages (shuffled, 10 % duplicated) and the unit table from the same raw events."""
    rng = np.random.default_rng(seed)
    msgs: list[tuple[str, bytes, bytes]] = []
    rows = []
    for i in range(UNITS):
        unit, t0 = f"p{i}", T0 + 7.0 * i
        key = unit.encode()
        variation = "treatment" if rng.random() < 0.5 else "control"
        level = rng.gamma(2.0, 5.0)  # the unit's spending level: pre and post correlate
        msgs.append(("exposures", key, encode_exposure(Exposure("pre", unit, variation, t0))))
        pre_sum, pre_old = 0.0, 0.0
        for k in range(int(rng.poisson(4))):  # spread over [t0 - 2L, t0)
            ts = t0 - 2 * L * rng.random()
            value = round(float(rng.gamma(1.0, level)), 2)
            if ts >= t0 - L:
                pre_sum += value
            else:
                pre_old += value
            msgs.append(("events", key, encode_event(Event(unit, "purchase", ts, value,
                                                           id=f"{unit}:b{k}"))))
        post = 0.0
        lift = 1.5 if variation == "treatment" else 0.0
        for k in range(int(rng.poisson(3))):
            value = round(float(rng.gamma(1.0, level + lift)), 2)
            post += value
            msgs.append(("events", key, encode_event(Event(
                unit, "purchase", t0 + 1000.0 * rng.random(), value, id=f"{unit}:a{k}"))))
        rows.append({"unit": unit, "variation": variation, "spend": post,
                     "pre_spend": pre_sum, "older": pre_old})
    order = rng.permutation(len(msgs))
    shuffled = [msgs[j] for j in order]
    dup = rng.choice(len(shuffled), size=len(shuffled) // 10, replace=False)
    shuffled += [shuffled[j] for j in np.sort(dup) if shuffled[j][0] == "events"]
    return shuffled, pd.DataFrame(rows)


def batch_document(frame: pd.DataFrame) -> dict[str, Any]:
    req = AnalyzeRequest(variation="variation", control="control",
                         metrics=(MetricColumn("spend", "numeric"),),
                         covariates=("pre_spend",), weights=None, settings=AnalysisSettings())
    return analyze_frame(frame, req)


def test_pre_period_covariate_from_the_stream(broker: Broker, redis_url: str) -> None:
    s = streaming_settings(broker.bootstrap, redis_url, unique("pre"))
    create_topics(s)
    client = redis_client(s)
    Registry(client).create(parse_definition(DEFINITION))
    msgs, frame = stream(11)
    assert frame["older"].sum() > 0  # events before t0 - L exist and must not count
    publish(s, msgs)
    with worker_thread(s):
        wait_for_messages(client, len(msgs))
    d = Registry(client).get("pre")
    assert d is not None
    live = experiment_document(client, d)
    batch = batch_document(frame)
    assert assert_documents_equal(live, batch) > 50
    est = live["slices"][0]["metrics"][0]["comparisons"][0]["estimators"]
    assert {"cuped", "mlrate", "adjusted"} <= set(est)
    assert est["cuped"]["variance_reduction"] > 0.05  # pre_spend is used by default
    # counting the older events too gives a different covariate (and a different answer)
    wrong = batch_document(frame.assign(pre_spend=frame["pre_spend"] + frame["older"]))
    wrong_est = wrong["slices"][0]["metrics"][0]["comparisons"][0]["estimators"]
    assert abs(wrong_est["cuped"]["se"] - est["cuped"]["se"]) > 1e-6 * est["cuped"]["se"]
