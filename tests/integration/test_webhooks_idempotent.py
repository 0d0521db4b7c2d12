"""Webhook deliveries of one alert share an ``Idempotency-Key``; retries are bounded."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from state.store import connect
from workers.alerter.service import Alerter
from workers.alerter.sinks import WebhookSink
from workers.alerter.webhooks import WebhookSender

from .apikit import Population
from .test_alerter import alert_settings, run_experiment


class _DedupingHook(BaseHTTPRequestHandler):
    """Processes every request (records the alert once per ``Idempotency-Key``), then answers
    after ``slow_first`` slow (longer than the sender's timeout) answers."""

    def do_POST(self) -> None:
        server: Any = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = self.headers.get("Idempotency-Key")
        with server.lock:
            server.deliveries.append((key, body))
            server.recorded.setdefault(key, body)  # the receiver's de-duplication
            slow = len(server.deliveries) <= server.slow_first
            status = server.status
        if slow:
            time.sleep(server.delay)
        try:
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        except OSError:  # the sender gave up waiting
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def hook(slow_first: int, delay: float, status: int = 200) -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _DedupingHook)
    server.daemon_threads, server.block_on_close = True, False
    server.deliveries, server.recorded, server.lock = [], {}, threading.Lock()
    server.slow_first, server.delay, server.status = slow_first, delay, status
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        server.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_slow_receiver_gets_one_key_and_records_one_alert(redis_url: str) -> None:
    client = connect(redis_url)
    with hook(slow_first=3, delay=1.0) as receiver:  # 3 answers slower than the 0.3 s timeout
        sink = WebhookSink([receiver.url], timeout=0.3, backoff=0.05, attempts=6)
        alerter = Alerter(alert_settings(redis_url), client, sinks=[sink])
        fired = run_experiment(client, alerter, Population("idem", assign=(0.6, 0.4), seed=5),
                               weights=[0.5, 0.5])
        assert [a.kind for a in fired] == ["srm"]
        assert sink.wait(20.0)
        keys = [k for k, _ in receiver.deliveries]
        assert len(keys) == 4  # 3 timed out, the 4th answered in time
        assert set(keys) == {fired[0].alert_id}  # every delivery carries the alert's id
        assert list(receiver.recorded) == [fired[0].alert_id]  # de-duplicated: one alert
        assert all(b["alert_id"] == fired[0].alert_id for _, b in receiver.deliveries)
        stats = sink.dispatcher.senders[0].stats
        assert (stats.delivered, stats.failed, stats.attempts) == (1, 0, 4)
        alerter.close()


def test_retries_back_off_exponentially_within_a_total_time(redis_url: str) -> None:
    with hook(slow_first=0, delay=0.0, status=503) as receiver:
        sender = WebhookSender(receiver.url, attempts=20, backoff=0.1, max_backoff=10.0,
                               timeout=0.5, max_total=2.2)
        sender.start()
        t0 = time.monotonic()
        sender.submit({"alert_id": "a1", "text": "x"})
        assert sender.drain(10.0)
        elapsed = time.monotonic() - t0
        sender.close()
    # waits 0.1, 0.2, 0.4, 0.8 (sum 1.5); the next (1.6 + the 0.5 s timeout) would end past
    # 2.2 s: 5 tries
    assert sender.stats.attempts == 5 and sender.stats.failed == 1
    assert len(receiver.deliveries) == 5
    assert {k for k, _ in receiver.deliveries} == {"a1"}
    assert 1.5 <= elapsed < 2.2 + 0.5
