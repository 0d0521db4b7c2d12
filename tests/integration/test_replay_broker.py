"""``replay`` and ``simulate`` against a real broker and Redis: all arrives, co-partitioned."""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
import pytest

from state.definition import parse_definition
from state.registry import Registry
from state.results import experiment_document
from state.store import connect, partition_count, read_counters
from stream.kafka import TopicPartition, make_consumer
from stream.messages import Event, Exposure, Rejected, parse_event, parse_exposure
from tests.integration.conftest import unique
from tests.integration.streaming import (
    assert_documents_equal,
    streaming_settings,
    wait_for_messages,
    worker_thread,
)
from tests.support.data import HILLSTROM
from workers.batch.analyze import AnalyzeRequest, analyze_frame
from workers.batch.columns import MetricColumn
from workers.dev.embedded import Broker
from workers.dev.replay import ReplayError, add_replay_parser, replay_file
from workers.dev.simulate import SimulationConfig, run_simulation
from workers.settings import Settings

HILL = HILLSTROM
METRICS = ["visit", "conversion", "spend"]
PARTITIONS = 4


def settings_for(broker: Broker, redis_url: str) -> Settings:
    return Settings(kafka_bootstrap=broker.bootstrap, redis_url=redis_url,
                    topic_exposures=unique("exp"), topic_events=unique("ev"),
                    partitions=PARTITIONS)


def register_hillstrom(redis_url: str, experiment: str) -> None:
    d = parse_definition({
        "id": experiment,
        "variations": ["No E-Mail", "Mens E-Mail", "Womens E-Mail"],
        "metrics": [{"name": "visited", "event": "visit", "aggregate": "binary"},
                    {"name": "converted", "event": "conversion", "aggregate": "binary"},
                    {"name": "spend", "event": "spend", "aggregate": "sum"}],
        "covariates": ["recency", "history"],
    })
    client = connect(redis_url)
    try:
        Registry(client).create(d)
    finally:
        client.close()


def consume_all(s: Settings, expected: int, timeout_s: float = 60.0
                ) -> list[tuple[str, int, bytes, bytes]]:
    """Every record of both topics: (topic, partition, key, value)."""
    consumer = make_consumer(s.kafka_bootstrap, None)
    try:
        consumer.assign([TopicPartition(t, p) for t in (s.topic_exposures, s.topic_events)
                         for p in range(PARTITIONS)])
        out: list[tuple[str, int, bytes, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=200, max_records=5000).items():
                out.extend((tp.topic, tp.partition, r.key, r.value) for r in records)
        # nothing beyond what was published
        for tp, records in consumer.poll(timeout_ms=500).items():
            out.extend((tp.topic, tp.partition, r.key, r.value) for r in records)
        return out
    finally:
        consumer.close()


def test_replay_hillstrom_slice_round_trips(broker: Broker, redis_url: str,
                                            tmp_path: Path) -> None:
    frame = pd.read_csv(HILL, nrows=2000)
    path = tmp_path / "hill2000.csv"
    frame.to_csv(path, index=False)
    s = settings_for(broker, redis_url)
    experiment = unique("hill").replace("-", "_")
    register_hillstrom(redis_url, experiment)

    report = replay_file(s, str(path), experiment, None, "segment", METRICS,
                         ["recency", "history"], shuffle=True, duplicate=0.05, seed=1,
                         progress=False)
    n_events = int((frame[METRICS] != 0).to_numpy().sum())
    assert (report.exposures, report.events) == (2000, n_events)
    assert report.duplicates == round(0.05 * (2000 + n_events))
    total = report.exposures + report.events + report.duplicates

    records = consume_all(s, total)
    assert len(records) == total
    partitions: dict[bytes, set[int]] = defaultdict(set)
    exposures: dict[str, Exposure] = {}
    events: Counter[tuple[str, str]] = Counter()
    spend = 0.0
    seen_ids: set[str] = set()
    for topic, partition, key, value in records:
        partitions[key].add(partition)
        if topic == s.topic_exposures:
            x = parse_exposure(value)
            assert isinstance(x, Exposure)
            assert key == x.unit.encode()
            exposures[x.unit] = x
        else:
            e = parse_event(value)
            assert isinstance(e, Event) and e.id is not None
            assert key == e.unit.encode()
            events[(e.unit, e.event)] += 1
            if e.id not in seen_ids and e.event == "spend":
                spend += e.value
            seen_ids.add(e.id)
    assert len(exposures) == 2000
    assert len(seen_ids) == n_events  # distinct events, duplicates collapse on their id
    assert sum(events.values()) + sum(1 for r in records if r[0] == s.topic_exposures) == total
    assert spend == pytest.approx(frame.spend.sum())
    # a unit's exposure and all its events share one partition number in both topics
    assert all(len(ps) == 1 for ps in partitions.values())
    assert len({p for ps in partitions.values() for p in ps}) == PARTITIONS
    x = exposures["u7"]
    assert x.variation == frame.segment[7]
    assert x.covariates == {"recency": float(frame.recency[7]),
                            "history": float(frame.history[7])}


def test_replay_refuses_unregistered_experiment(broker: Broker, redis_url: str,
                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "hill.csv"
    pd.read_csv(HILL, nrows=50).to_csv(path, index=False)
    s = settings_for(broker, redis_url)
    with pytest.raises(ReplayError, match="'nope' is not registered"):
        replay_file(s, str(path), "nope", None, "segment", METRICS, progress=False)

    monkeypatch.setenv("LIFTSTREAM_KAFKA_BOOTSTRAP", s.kafka_bootstrap)
    monkeypatch.setenv("LIFTSTREAM_REDIS_URL", redis_url)
    monkeypatch.setenv("LIFTSTREAM_TOPIC_EXPOSURES", s.topic_exposures)
    monkeypatch.setenv("LIFTSTREAM_TOPIC_EVENTS", s.topic_events)
    monkeypatch.setenv("LIFTSTREAM_PARTITIONS", str(PARTITIONS))
    parser = argparse.ArgumentParser(prog="liftstream")
    add_replay_parser(parser.add_subparsers(dest="command", required=True))
    argv = ["replay", str(path), "--experiment", "nope", "--variation", "segment",
            "--metric", "visit", "--no-progress"]
    args = parser.parse_args(argv)
    assert args.handler(args) == 2
    assert "'nope' is not registered" in capsys.readouterr().err

    # registered: a column that is no metric's event is published but warned about
    register_hillstrom(redis_url, "hill_cli")
    argv[3] = "hill_cli"
    args = parser.parse_args([*argv, "--metric", "newbie"])
    assert args.handler(args) == 0
    captured = capsys.readouterr()
    assert "column 'newbie' is not the event" in captured.err
    assert "replayed 50 exposures" in captured.out


def test_simulation_publishes_what_it_reports(broker: Broker, redis_url: str) -> None:
    s = settings_for(broker, redis_url)
    cfg = SimulationConfig(experiment=unique("sim"), units=400, arms=3, srm_fault=0.25,
                           malformed_fraction=0.05, late_fraction=0.1, seed=5)
    result = run_simulation(s, cfg, progress=False)
    assert result["experiment"] == cfg.experiment
    assert set(result["truth"]) == {"converted", "revenue", "sessions", "revenue_per_session"}
    client = connect(redis_url)
    try:
        d = Registry(client).get(cfg.experiment)
    finally:
        client.close()
    assert d is not None and d.variations == cfg.variations

    total = result["exposures"] + result["events"] + result["malformed"]
    records = consume_all(s, total)
    assert len(records) == total
    rejected = 0
    kinds: Counter[str] = Counter()
    partitions: dict[bytes, set[int]] = defaultdict(set)
    for topic, partition, key, value in records:
        exposure = topic == s.topic_exposures
        msg = parse_exposure(value) if exposure else parse_event(value)
        if isinstance(msg, Rejected):
            rejected += 1
            continue
        kinds["exposures" if exposure else "events"] += 1
        partitions[key].add(partition)
    assert rejected == result["malformed"]
    assert kinds == {"exposures": result["exposures"], "events": result["events"]}
    assert result["exposures"] + result["dropped_exposures"] == cfg.units
    assert all(len(ps) == 1 for ps in partitions.values())


# --------------------------------------------------------------------------- through a worker


def test_shuffled_duplicated_replay_equals_batch_analysis(broker: Broker, redis_url: str,
                                                          tmp_path: Path) -> None:
    """Order and re-delivery do not matter: the worker's statistics equal ``analyze``'s."""
    frame = pd.read_csv(HILL, nrows=2000)
    path = tmp_path / "hill2000.csv"
    frame.to_csv(path, index=False)
    s = streaming_settings(broker.bootstrap, redis_url, unique("replay"))
    register_hillstrom(redis_url, "hill_live")
    report = replay_file(s, str(path), "hill_live", None, "segment", METRICS,
                         ["recency", "history"], shuffle=True, duplicate=0.1, seed=2,
                         progress=False)
    with worker_thread(s):
        client = connect(redis_url)
        try:
            wait_for_messages(client, report.exposures + report.events + report.duplicates)
            d = Registry(client).get("hill_live")
            assert d is not None
            stream_doc = experiment_document(client, d)
        finally:
            client.close()
    batch = frame.rename(columns={"visit": "visited", "conversion": "converted"})
    req = AnalyzeRequest(variation="segment", control="No E-Mail",
                         metrics=(MetricColumn("visited", "binary"),
                                  MetricColumn("converted", "binary"),
                                  MetricColumn("spend", "numeric")),
                         covariates=("recency", "history"))
    assert assert_documents_equal(stream_doc, analyze_frame(batch, req)) > 100


def test_simulated_stream_recovers_the_truth(broker: Broker, redis_url: str) -> None:
    s = streaming_settings(broker.bootstrap, redis_url, unique("sim"))
    cfg = SimulationConfig(experiment="sim_live", units=6000, effect=0.3,
                           affected_candidate_shift=1.0, late_fraction=0.1,
                           malformed_fraction=0.02, seed=3)
    result = run_simulation(s, cfg, progress=False)
    total = result["exposures"] + result["events"] + result["malformed"]
    with worker_thread(s):
        client = connect(redis_url)
        try:
            wait_for_messages(client, total)
            d = Registry(client).get(cfg.experiment)
            assert d is not None
            doc = experiment_document(client, d)
            counters = read_counters(client, range(partition_count(client)))
        finally:
            client.close()
    assert counters["dead_letters"] == result["malformed"]
    (sl,) = doc["slices"]
    assert {v["name"]: v["n"] for v in sl["variations"]} == result["exposures_per_variation"]
    assert not sl["srm"]["flagged"]
    for metric in sl["metrics"]:
        (comp,) = metric["comparisons"]
        truth = result["truth"][metric["metric"]]["treatment_1"]
        for name in ("diff", "adjusted"):
            est = comp["estimators"][name]
            assert abs(est["effect"] - truth) < 4 * est["se"], (metric["metric"], name, est)
        selected = {c["name"]: c["selected"] for c in comp["covariate_selection"]}
        assert selected == {"pageviews": True, "support_tickets": False}
    revenue = next(m for m in sl["metrics"] if m["metric"] == "revenue")["comparisons"][0]
    assert revenue["estimators"]["cuped"]["variance_reduction"] > 0.3  # r = 0.7
