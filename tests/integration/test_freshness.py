"""Per-experiment freshness through the real broker, a worker and Redis: a result document's
``freshness.last_event_ts`` is the newest event applied to *that* experiment, while the
pipeline-wide value (``/metrics``) keeps following every event."""

from __future__ import annotations

from fastapi.testclient import TestClient

from state.definition import parse_definition
from state.registry import Registry
from state.results import experiment_document
from state.store import Client, partition_count, read_counters
from stream.messages import Event, encode_event, parse_event
from workers.api.app import Auth, create_app
from workers.dev.embedded import Broker

from .apikit import Message, Population, experiment_definition, experiment_messages
from .conftest import unique
from .streaming import (
    create_topics,
    publish,
    redis_client,
    streaming_settings,
    wait_for_messages,
    worker_thread,
)

T0 = 1_760_000_000.0


def newest_event(messages: list[Message]) -> float:
    events = [parse_event(v) for kind, _, v in messages if kind == "events"]
    return max(e.ts for e in events if isinstance(e, Event))


def metric_value(text: str, sample: str) -> float:
    """The value of one Prometheus sample line (name with labels)."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{sample} not in /metrics")


def freshness(client: Client, reg: Registry, experiment: str) -> float | None:
    d = reg.get(experiment)
    assert d is not None
    value: float | None = experiment_document(client, d)["slices"][0]["freshness"][
        "last_event_ts"]
    return value


def test_events_of_one_experiment_advance_only_its_freshness(broker: Broker,
                                                             redis_url: str) -> None:
    s = streaming_settings(broker.bootstrap, redis_url, unique("fresh"))
    create_topics(s)
    client = redis_client(s)
    reg = Registry(client)
    for name in ("fa", "fb"):  # the same event names: events without an experiment field
        reg.create(parse_definition(experiment_definition(name)))  # are routed to both
    fa_msgs = experiment_messages(Population("fa"), 0, 50, T0)
    fb_msgs = experiment_messages(Population("fb", seed=1), 0, 50, T0 + 1000.0)
    # later purchases of fa's units only (routed to fb too, where these units are unknown)
    later: list[Message] = [("events", f"fa-u{i}".encode(), encode_event(
        Event(f"fa-u{i}", "purchase", T0 + 5000.0 + i, 1.0))) for i in range(20)]
    with worker_thread(s):
        publish(s, fa_msgs + fb_msgs)
        wait_for_messages(client, len(fa_msgs) + len(fb_msgs), timeout=120)
        fa_before, fb_before = freshness(client, reg, "fa"), freshness(client, reg, "fb")
        assert fa_before == newest_event(fa_msgs) < T0 + 1000.0
        assert fb_before == newest_event(fb_msgs) > T0 + 1000.0
        publish(s, later)
        wait_for_messages(client, len(fa_msgs) + len(fb_msgs) + len(later), timeout=120)
    assert freshness(client, reg, "fa") == T0 + 5019.0  # advanced
    assert freshness(client, reg, "fb") == fb_before  # unchanged
    pipeline = read_counters(client, range(partition_count(client)))["last_event_ts"]
    assert pipeline == T0 + 5019.0  # the pipeline-wide value follows every event

    app = create_app(s, auth=Auth(open=True), client=client, lag_interval=None)
    with TestClient(app) as api:
        body = api.get("/v1/experiments/fb/results").json()
        text = api.get("/metrics").text
    assert body["freshness"]["last_event_ts"] == fb_before
    assert "last_event_ts" not in body["slices"][0]["counters"]  # a time, not a count
    assert metric_value(text, "liftstream_last_event_timestamp_seconds") == T0 + 5019.0
    for name, value in (("fa", T0 + 5019.0), ("fb", fb_before)):
        assert metric_value(text, "liftstream_experiment_last_event_timestamp_seconds"
                                  f'{{experiment="{name}"}}') == value
    assert 'counter="last_event_ts"' not in text
