"""The alerter: transitions only, state survives restarts, sinks (Kafka topic, webhooks)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from state import history
from state.definition import parse_definition
from state.registry import Registry
from state.store import Client, connect
from stream.kafka import TopicPartition, make_consumer
from workers.alerter.rules import Alert
from workers.alerter.service import Alerter
from workers.alerter.sinks import KafkaAlertSink, WebhookSink
from workers.dev.embedded import Broker
from workers.settings import Settings

from .apikit import DirectIngest, Population, experiment_definition, experiment_messages
from .conftest import unique

CHUNK, CHUNKS = 400, 8


def alert_settings(redis_url: str, **kw: Any) -> Settings:
    return replace(Settings(), **({"redis_url": redis_url, "alert_interval_seconds": 1.0,
                                   "stale_after_seconds": 3600.0} | kw))


def run_experiment(client: Client, alerter: Alerter, pop: Population, **definition: Any
                   ) -> list[Alert]:
    """Register, then feed ``CHUNKS`` chunks of units, evaluating after each one."""
    Registry(client).create(parse_definition(experiment_definition(pop.experiment,
                                                                   **definition)))
    feeder = DirectIngest(client)
    fired: list[Alert] = []
    for k in range(CHUNKS):
        feeder.feed(experiment_messages(pop, k * CHUNK, CHUNK))
        fired += alerter.evaluate_once(now=1000.0 + k)
    return fired


def test_real_effect_fires_one_significance_alert(redis_url: str, broker: Broker) -> None:
    s = alert_settings(redis_url, kafka_bootstrap=broker.bootstrap,
                       topic_alerts=unique("alerts"))
    client = connect(redis_url)
    alerter = Alerter(s, client, sinks=[KafkaAlertSink(s)])
    fired = run_experiment(client, alerter, Population("lift", revenue_lift=(0.0, 1.5)))
    assert [(a.kind, a.fields["metric"], a.fields["direction"]) for a in fired] == \
        [("significance", "revenue", "positive")]
    a = fired[0]
    assert a.fields["estimator"] == "adjusted" and a.fields["seq_p_value"] < 0.05
    assert a.fields["seq_ci_low"] > 0 and "significantly higher" in a.text
    assert len(history.read(client, "lift")) == CHUNKS

    consumer = make_consumer(s.kafka_bootstrap, None)
    try:
        tp = TopicPartition(s.topic_alerts, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                got += [json.loads(r.value) for r in records]
    finally:
        consumer.close()
    assert [(m["kind"], m["experiment"], m["alert_id"]) for m in got] == \
        [("significance", "lift", a.alert_id)]
    assert got[0]["text"] == a.text

    # a restarted alerter (new process, same Redis) does not fire again
    alerter.close()
    again = Alerter(s, client, sinks=[])
    assert again.evaluate_once(now=2000.0) == []
    again.close()


def test_aa_fires_nothing(redis_url: str) -> None:
    client = connect(redis_url)
    alerter = Alerter(alert_settings(redis_url), client, sinks=[])
    assert run_experiment(client, alerter, Population("aa", seed=11)) == []


def test_srm_fires_one_alert(redis_url: str) -> None:
    client = connect(redis_url)
    alerter = Alerter(alert_settings(redis_url), client, sinks=[])
    fired = run_experiment(client, alerter, Population("srm", assign=(0.6, 0.4), seed=3),
                           weights=[0.5, 0.5])
    assert [a.kind for a in fired] == ["srm"]
    assert "sample-ratio mismatch" in fired[0].text
    f = fired[0].fields
    assert min(f["p_value"], f["sequential_p_value"]) < 0.001
    assert f["counts"]["control"] > f["counts"]["treatment"]


def test_guardrail_harm_fires_once(redis_url: str) -> None:
    client = connect(redis_url)
    alerter = Alerter(alert_settings(redis_url), client, sinks=[])
    fired = run_experiment(client, alerter, Population("guard", signup_lift=(0.0, -0.12)))
    assert [(a.kind, a.fields["metric"]) for a in fired] == [("guardrail_harm", "converted")]
    assert fired[0].fields["seq_ci_high"] < 0


def test_stale_fires_on_each_stall(redis_url: str) -> None:
    client = connect(redis_url)
    s = alert_settings(redis_url, stale_after_seconds=60.0)
    alerter = Alerter(s, client, sinks=[])
    pop = Population("quiet")
    Registry(client).create(parse_definition(experiment_definition("quiet")))
    feeder = DirectIngest(client)
    feeder.feed(experiment_messages(pop, 0, 100))
    assert alerter.evaluate_once(now=0.0) == []
    assert alerter.evaluate_once(now=59.0) == []
    fired = alerter.evaluate_once(now=61.0)
    assert [a.kind for a in fired] == ["stale"] and fired[0].fields["idle_seconds"] == 61.0
    assert alerter.evaluate_once(now=200.0) == []  # still stale: no second alert
    feeder.feed(experiment_messages(pop, 100, 10))
    assert alerter.evaluate_once(now=210.0) == []  # data resumed
    assert [a.kind for a in alerter.evaluate_once(now=300.0)] == ["stale"]
    Registry(client).stop("quiet")
    assert alerter.evaluate_once(now=900.0) == []  # stopped experiments are not watched


def test_only_the_lease_holder_evaluates(redis_url: str) -> None:
    client = connect(redis_url)
    s = alert_settings(redis_url)
    a, b = Alerter(s, client, sinks=[], owner="a"), Alerter(s, client, sinks=[], owner="b")
    Registry(client).create(parse_definition(experiment_definition("lease")))
    DirectIngest(client).feed(experiment_messages(Population("lease"), 0, 50))
    a.evaluate_once(now=1.0)
    b.evaluate_once(now=2.0)
    assert len(history.read(client, "lease")) == 1
    a.close()  # releases the lease
    b.evaluate_once(now=3.0)
    assert len(history.read(client, "lease")) == 2


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        server: Any = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests.append(body)
            fail = len(server.requests) <= server.fail_first
        if server.delay:
            time.sleep(server.delay)
        try:
            self.send_response(500 if fail else 200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        except OSError:  # the client gave up waiting (timeout test)
            return
        if not fail:
            with server.lock:
                server.accepted.append(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def webhook_server(fail_first: int = 0, delay: float = 0.0) -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    server.daemon_threads, server.block_on_close = True, False
    server.requests, server.accepted, server.lock = [], [], threading.Lock()
    server.fail_first, server.delay = fail_first, delay
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        server.url = f"http://127.0.0.1:{server.server_address[1]}/hook/secret"
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_fails_twice_then_receives_the_alert_once(redis_url: str) -> None:
    client = connect(redis_url)
    with webhook_server(fail_first=2) as hook:
        sink = WebhookSink([hook.url], backoff=0.05)
        alerter = Alerter(alert_settings(redis_url), client, sinks=[sink])
        fired = run_experiment(client, alerter, Population("hook", assign=(0.6, 0.4), seed=5),
                               weights=[0.5, 0.5])
        assert [a.kind for a in fired] == ["srm"]
        assert sink.wait(10.0)
        assert len(hook.requests) == 3
        assert len(hook.accepted) == 1
        body = hook.accepted[0]
        assert body["text"] == fired[0].text and body["kind"] == "srm"
        assert body["experiment"] == "hook" and body["alert_id"] == fired[0].alert_id
        stats = sink.dispatcher.senders[0].stats
        assert (stats.delivered, stats.failed, stats.attempts) == (1, 0, 3)
        alerter.close()


def test_a_failing_webhook_does_not_block_the_others(redis_url: str) -> None:
    client = connect(redis_url)
    with webhook_server(fail_first=100) as bad, webhook_server(delay=3.0) as slow, \
            webhook_server() as good:
        sink = WebhookSink([bad.url, slow.url, "http://127.0.0.1:1/refused", good.url],
                           backoff=0.05, attempts=3, timeout=0.5)
        alerter = Alerter(alert_settings(redis_url), client, sinks=[sink])
        t0 = time.monotonic()
        fired = run_experiment(client, alerter, Population("multi", assign=(0.6, 0.4), seed=5),
                               weights=[0.5, 0.5])
        assert [a.kind for a in fired] == ["srm"]
        deadline = time.monotonic() + 5
        while not good.accepted and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(good.accepted) == 1
        assert time.monotonic() - t0 < 2.5  # not held up by the slow (3 s) webhook
        assert sink.wait(10.0)
        senders = sink.dispatcher.senders
        assert [s.stats.failed for s in senders] == [1, 1, 1, 0]
        assert len(bad.requests) == 3  # retried, then given up
        alerter.close()


def test_alert_body_is_slack_compatible() -> None:
    a = Alert("srm", "e", "srm", "hello", 1.0, {"counts": {"a": 1}})
    body = a.body()
    assert body["text"] == "hello" and body["counts"] == {"a": 1}
    json.dumps(body)


@pytest.mark.parametrize("now", [0.0])
def test_experiment_outside_its_window_is_skipped(redis_url: str, now: float) -> None:
    client = connect(redis_url)
    alerter = Alerter(alert_settings(redis_url), client, sinks=[])
    Registry(client).create(parse_definition(experiment_definition("later", start=5000.0)))
    assert alerter.evaluate_once(now=now) == []
    assert history.read(client, "later") == []
