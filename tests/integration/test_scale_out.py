"""Scale-out: 3 worker processes, a 3-node Redis Cluster, 12 partitions — still exact."""

from __future__ import annotations

import signal
from pathlib import Path

import pandas as pd

from state import keys
from state.definition import parse_definition
from state.registry import Registry
from state.results import experiment_document
from workers.dev.embedded import Broker
from workers.dev.replay import replay_messages

from .conftest import unique
from .streaming import (
    assert_documents_equal,
    create_topics,
    publish,
    redis_client,
    start_worker_process,
    stop_processes,
    streaming_settings,
    wait_for_messages,
)
from .test_ingest import HILL, HILL_DEF, batch_document


def test_three_workers_on_redis_cluster_with_12_partitions(
        broker: Broker, redis_cluster_url: str, tmp_path: Path) -> None:
    s = streaming_settings(broker.bootstrap, redis_cluster_url, unique("scale"),
                           partitions=12, redis_cluster=True)
    create_topics(s)
    client = redis_client(s)
    Registry(client).create(parse_definition(HILL_DEF))
    frame = pd.read_csv(HILL)
    msgs = replay_messages(frame, "hill", None, "segment", ["spend", "visit"],
                           ["recency", "history"], shuffle=True, duplicate=0.05, seed=5)
    procs = [start_worker_process(s, f"scale-{i}", tmp_path) for i in range(3)]
    try:
        publish(s, msgs)
        wait_for_messages(client, len(msgs), timeout=300)
    finally:
        stop_processes(procs, signal.SIGTERM)
    d = Registry(client).get("hill")
    assert d is not None
    assert_documents_equal(experiment_document(client, d), batch_document(frame))
    # every partition was owned and written; the owners spread over the cluster's nodes
    epochs = [int(client.get(keys.epoch(p)) or 0) for p in range(12)]
    assert all(e >= 1 for e in epochs), epochs
    nodes = {client.keyslot(keys.matrices(p, "hill")) // 5462 for p in range(12)}
    assert len(nodes) >= 2
    logs = "".join((tmp_path / f"scale-{i}.log").read_text() for i in range(3))
    assert sum(f"scale-{i}: owns partition" in logs for i in range(3)) >= 2, logs[-2000:]
