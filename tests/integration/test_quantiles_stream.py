"""Quantile metrics streamed through the real broker and Redis equal the batch analysis
exactly: the same histogram counts per arm and the same document numbers.

Unit values are sums of multiples of 1/64 (lognormal spend, 5% refunds as negative values,
units without events at 0), so every summation order gives the same float and the one
bucketing function (estimators.quantiles.bucket_indices) places it in the same bucket.
Values change after they were stored (events arrive in a second phase), events arrive
before their unit's exposure (held), and some units are withdrawn (exposed to both arms):
each moves or removes one count in the same atomic batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from estimators.analysis import AnalysisSettings
from estimators.compare import document_differences
from estimators.quantiles import Histogram, from_fields
from state.registry import Registry, parse_definition
from state.results import experiment_document
from state.store import partition_count, read_histograms
from stream.messages import Event, Exposure, encode_event, encode_exposure
from workers.batch.analyze import AnalyzeRequest, analyze_frame
from workers.batch.columns import MetricColumn
from workers.dev.embedded import Broker

from .conftest import unique
from .streaming import (
    create_topics,
    publish,
    redis_client,
    streaming_settings,
    wait_for_messages,
    worker_thread,
)

T0 = 1_750_000_000.0
ARMS = ("control", "treatment")
QS = (0.5, 0.9)


def _definition(experiment: str) -> dict[str, Any]:
    return {"id": experiment, "variations": list(ARMS), "weights": [0.5, 0.5],
            "metrics": [{"name": "spend", "event": "purchase", "aggregate": "quantile",
                         "quantiles": list(QS)},
                        {"name": "revenue", "event": "purchase", "aggregate": "sum"}]}


Message = tuple[str, bytes, bytes]


def _stream(experiment: str, n: int, seed: int) -> tuple[list[list[Message]], pd.DataFrame]:
    """Two phases of messages and the (non-withdrawn) unit rows they imply."""
    rng = np.random.default_rng(seed)
    arm = rng.choice(2, n)
    late = rng.random(n) < 0.3  # exposed in phase 2 (their phase-1 events are held)
    withdrawn = rng.random(n) < 0.02  # a second exposure to the other arm in phase 2
    counts = rng.poisson(2.0, n)
    unit = np.repeat(np.arange(n), counts)
    value = np.round(rng.lognormal(1.0 + 0.1 * arm[unit], 1.0) * 64.0) / 64.0
    value[rng.random(len(unit)) < 0.05] *= -1.0  # refunds
    phase = rng.integers(0, 2, len(unit))
    phases: list[list[Message]] = [[], []]
    for i in range(n):
        body = encode_exposure(Exposure(experiment, f"u{i}", ARMS[arm[i]], T0 + i * 1e-3))
        phases[int(late[i])].append(("exposures", f"u{i}".encode(), body))
        if withdrawn[i]:
            other = encode_exposure(Exposure(experiment, f"u{i}", ARMS[1 - arm[i]],
                                             T0 + i * 1e-3 + 1))
            phases[1].append(("exposures", f"u{i}".encode(), other))
    for j, (i, v) in enumerate(zip(unit, value, strict=True)):
        body = encode_event(Event(f"u{i}", "purchase", T0 + 100.0 + j * 1e-3, float(v)))
        phases[int(phase[j])].append(("events", f"u{i}".encode(), body))
    for msgs in phases:
        order = rng.permutation(len(msgs))
        msgs[:] = [msgs[k] for k in order]
    spend = np.bincount(unit, weights=value, minlength=n)
    keep = ~withdrawn
    rows = pd.DataFrame({"variation": np.array(ARMS)[arm[keep]], "spend": spend[keep],
                         "revenue": spend[keep]})
    return phases, rows


def test_streamed_quantiles_equal_batch_exactly(broker: Broker, redis_url: str) -> None:
    s = streaming_settings(broker.bootstrap, redis_url, unique("qtl"))
    create_topics(s)
    client = redis_client(s)
    experiment = unique("q")
    Registry(client).create(parse_definition(_definition(experiment)))
    phases, rows = _stream(experiment, 4000, seed=21)
    with worker_thread(s):
        published = 0
        for messages in phases:
            publish(s, messages)
            published += len(messages)
            wait_for_messages(client, published)
    d = Registry(client).get(experiment)
    assert d is not None
    stored = read_histograms(client, experiment, list(ARMS), range(partition_count(client)))
    buckets = 0
    for a in ARMS:
        want = Histogram.of(rows.loc[rows.variation == a, "spend"].to_numpy())
        got = from_fields(stored[a]["spend"], want.accuracy)
        assert got == want  # identical integer counts, bucket by bucket
        assert got.n == int((rows.variation == a).sum())
        buckets += len(got.counts)
        assert {sign for sign, _ in got.counts} == {-1, 0, 1}  # refunds, no events, spend
    live = experiment_document(client, d)
    req = AnalyzeRequest(variation="variation", control="control",
                         metrics=(MetricColumn("spend", None, QS),
                                  MetricColumn("revenue", "numeric")),
                         settings=AnalysisSettings())
    batch = analyze_frame(rows, req)
    lq = [m for m in live["slices"][0]["metrics"] if m["kind"] == "quantile"]
    bq = [m for m in batch["slices"][0]["metrics"] if m["kind"] == "quantile"]
    assert [m["metric"] for m in lq] == ["spend:p50", "spend:p90"]
    assert lq == bq  # every number identical (==, not close)
    for m in lq:
        e = m["comparisons"][0]["estimators"]["quantile"]
        assert e["effect"] is not None and e["se"] > 0 and e["seq_ci_low"] is not None
    assert not document_differences(live, batch, 1e-9)
    print(f"{len(rows)} units, {buckets} buckets in all; "
          f"p90 effect {lq[1]['comparisons'][0]['estimators']['quantile']['effect']:.4f}")
