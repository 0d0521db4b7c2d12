"""Kafka → worker → Redis → results equals batch analysis of the same rows (DESIGN §2, §3)."""

from __future__ import annotations

import pandas as pd
import pytest

from estimators.analysis import AnalysisSettings
from state.definition import parse_definition
from state.registry import Registry
from state.results import experiment_document
from tests.support.data import HILLSTROM
from workers.batch.analyze import AnalyzeRequest, analyze_frame
from workers.batch.columns import MetricColumn
from workers.dev.embedded import Broker
from workers.dev.replay import replay_messages
from workers.settings import Settings

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

HILL = HILLSTROM
HILL_DEF = {
    "id": "hill",
    "variations": ["No E-Mail", "Mens E-Mail", "Womens E-Mail"],
    "weights": [0.333, 0.333, 0.334],
    "metrics": [{"name": "spend", "event": "spend", "aggregate": "sum"},
                {"name": "visit", "event": "visit", "aggregate": "binary"}],
    "covariates": ["recency", "history"],
}


def batch_document(frame: pd.DataFrame) -> dict:
    req = AnalyzeRequest(variation="segment", control="No E-Mail",
                         metrics=(MetricColumn("spend", "numeric"),
                                  MetricColumn("visit", "binary")),
                         covariates=("recency", "history"), weights=None,
                         settings=AnalysisSettings())
    return analyze_frame(frame, req)


def replay_and_compare(s: Settings, shuffle: bool, duplicate: float) -> dict:
    create_topics(s)
    client = redis_client(s)
    Registry(client).create(parse_definition(HILL_DEF))
    frame = pd.read_csv(HILL)
    msgs = replay_messages(frame, "hill", None, "segment", ["spend", "visit"],
                           ["recency", "history"], shuffle=shuffle, duplicate=duplicate, seed=3)
    publish(s, msgs)
    with worker_thread(s):
        wait_for_messages(client, len(msgs))
    d = Registry(client).get("hill")
    assert d is not None
    live = experiment_document(client, d)
    compared = assert_documents_equal(live, batch_document(frame))
    assert compared > 100
    counters = live["slices"][0]["counters"]
    assert counters["exposures"] == 64000
    if duplicate:
        assert counters.get("duplicate_events", 0) + counters.get("repeat_exposures", 0) > 0
    return live


@pytest.mark.parametrize("shuffle,duplicate", [(False, 0.0), (True, 0.2)])
def test_hillstrom_replay_equals_batch_analysis(broker: Broker, redis_url: str,
                                                shuffle: bool, duplicate: float) -> None:
    replay_and_compare(streaming_settings(broker.bootstrap, redis_url, unique("hill")),
                       shuffle, duplicate)


def test_hillstrom_replay_on_redis_cluster(broker: Broker, redis_cluster_url: str) -> None:
    """Every batch script touches one slot: the same replay works on a 3-node cluster."""
    s = streaming_settings(broker.bootstrap, redis_cluster_url, unique("hillc"),
                           redis_cluster=True)
    replay_and_compare(s, True, 0.2)
