"""The API against hostile or careless callers: no leaks, bounded bodies, bounded work."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from state.definition import parse_definition
from state.registry import Registry
from state.store import connect
from workers.api.app import create_app, resolve_auth
from workers.api.cache import Busy, ComputeGate, SingleFlightCache
from workers.api.guard import redact_tokens
from workers.settings import Settings

from .apikit import (
    DirectIngest,
    Population,
    api_server,
    auth,
    experiment_definition,
    experiment_messages,
)

READ, ADMIN = "read-token-h", "admin-token-h"


def settings_for(redis_url: str, **kw: Any) -> Settings:
    return replace(Settings(), **({"redis_url": redis_url, "api_read_tokens": (READ,),
                                   "api_admin_tokens": (ADMIN,)} | kw))


def client_for(s: Settings, **kw: Any) -> TestClient:
    return TestClient(create_app(s, auth=resolve_auth(s)[0], lag_interval=None), **kw)


@pytest.fixture
def api(redis_url: str) -> Iterator[TestClient]:
    with client_for(settings_for(redis_url)) as c:
        yield c


# --------------------------------------------------------------------------- leaks


def test_readyz_shows_no_address_or_exception() -> None:
    with client_for(settings_for("redis://10.255.255.1:6390/0",)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {"error": "not_ready", "detail": "Redis is not reachable"}
    assert "6390" not in r.text and "10.255" not in r.text


def test_readyz_ready_shows_no_address(api: TestClient, redis_url: str) -> None:
    r = api.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"
    port = str(urlsplit(redis_url).port)
    assert port not in r.text and "127.0.0.1" not in r.text


def test_redis_errors_show_no_address() -> None:
    with client_for(settings_for("redis://127.0.0.1:1/0")) as c:
        r = c.get("/v1/experiments", headers=auth(READ))
    assert r.status_code == 503 and r.json()["error"] == "unavailable"
    assert "127.0.0.1" not in r.text and r.headers["retry-after"] == "1"


def test_every_answer_has_a_request_id(api: TestClient) -> None:
    ids = {api.get("/healthz").headers["x-request-id"] for _ in range(3)}
    ids.add(api.get("/v1/experiments").headers["x-request-id"])  # 401
    assert len(ids) == 4 and all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)


def test_redact_tokens() -> None:
    assert redact_tokens("GET /?token=abc HTTP/1.1") == "GET /?token=*** HTTP/1.1"
    assert redact_tokens("/x?a=1&token=s3cr3t&b=2") == "/x?a=1&token=***&b=2"
    assert redact_tokens("/x?access_token=q") == "/x?access_token=***"
    assert redact_tokens("/x?tokens=1&mytoken=2") == "/x?tokens=1&mytoken=2"


def test_access_log_never_shows_a_token(redis_url: str, tmp_path: Path) -> None:
    secret = "SECRET-dashboard-token-77"
    s = settings_for(redis_url, api_read_tokens=(secret,))
    with api_server(s, tmp_path, "--access-log", "--no-lag") as server:
        assert httpx.get(f"{server.url}/?token={secret}").status_code == 200
        r = httpx.get(f"{server.url}/v1/experiments?x=1&token={secret}",
                      headers=auth(secret))
        assert r.status_code == 200
        deadline = time.monotonic() + 10
        while "/v1/experiments?x=1&token=***" not in server.log_text():
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.05)
        text = server.log_text()
    assert '"GET /?token=*** HTTP/1.1" 200' in text
    assert secret not in text


# --------------------------------------------------------------------------- docs


def _assets(page: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page)


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_use_only_same_origin_assets(api: TestClient, path: str) -> None:
    page = api.get(path)
    assert page.status_code == 200
    assert "http://" not in page.text and "https://" not in page.text and "//cdn" not in page.text
    assets = _assets(page.text)
    assert len(assets) >= 2
    for url in assets:
        assert url.startswith("/") and not url.startswith("//"), url
        r = api.get(url)
        assert r.status_code == 200 and len(r.content) > 1000, url
    assert "/openapi.json" in page.text
    assert api.get("/openapi.json").json()["info"]["title"] == "liftstream"


def test_docs_script_has_no_cdn_reference(api: TestClient) -> None:
    js = api.get("/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "cdn.jsdelivr.net" not in js.text and "unpkg.com" not in js.text


# --------------------------------------------------------------------------- body size

LIMIT = 4096


def _big_definition(pad: int) -> dict[str, Any]:
    return experiment_definition("big", description="x" * pad)


def test_body_limit_with_content_length(redis_url: str) -> None:
    with client_for(settings_for(redis_url, api_max_body_bytes=LIMIT)) as c:
        r = c.post("/v1/experiments", json=_big_definition(LIMIT), headers=auth(ADMIN))
        assert r.status_code == 413
        body = r.json()
        assert body["error"] == "payload_too_large" and body["limit"] == LIMIT
        assert "LIFTSTREAM_API_MAX_BODY_BYTES" in body["detail"]
        ok = c.post("/v1/experiments", json=experiment_definition("small"),
                    headers=auth(ADMIN))
        assert ok.status_code == 201, ok.text


def test_body_limit_without_content_length(redis_url: str) -> None:
    """Chunked transfer (no Content-Length): the limit holds while the body streams."""
    s = settings_for(redis_url, api_max_body_bytes=LIMIT)
    sent = []

    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            sent.append(1)
            yield b" " * 1024

    with client_for(s) as c:
        r = c.post("/v1/experiments", content=chunks(), headers=auth(ADMIN) | {
            "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    assert "content-length" not in {k.lower() for k, _ in r.request.headers.items()}


def _raw(url: str, request: bytes) -> bytes:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request)
        out = b""
        while b"\r\n\r\n" not in out or not out.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def test_body_limit_over_http(redis_url: str, tmp_path: Path) -> None:
    """Against the real server: a Content-Length that lies (huge, body never sent), a chunked
    body that grows past the limit."""
    s = settings_for(redis_url, api_max_body_bytes=LIMIT)
    head = (f"POST /v1/experiments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n"
            "Content-Type: application/json\r\n")
    with api_server(s, tmp_path, "--no-lag") as server:
        t0 = time.monotonic()
        out = _raw(server.url, (head + "Content-Length: 1000000000\r\n\r\n{").encode())
        assert out.startswith(b"HTTP/1.1 413"), out[:200]
        assert b'"payload_too_large"' in out and time.monotonic() - t0 < 5
        chunk = b"2000\r\n" + b" " * 0x2000 + b"\r\n"
        out = _raw(server.url, (head + "Transfer-Encoding: chunked\r\n\r\n").encode()
                   + chunk * 3 + b"0\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 413"), out[:200]
        assert b'"payload_too_large"' in out
        # under the limit, still served
        r = httpx.post(server.url + "/v1/experiments", json=experiment_definition("fits"),
                       headers=auth(ADMIN))
        assert r.status_code == 201, r.text


# --------------------------------------------------------------------------- bounded work


def test_gate_refuses_work_beyond_threads_and_queue() -> None:
    """threads=1, queue=1: a third distinct computation is refused at once; sharing and
    stale answers are not refused."""
    release = threading.Event()

    def slow() -> int:
        release.wait(10)
        return 1

    async def scenario() -> tuple[Any, ...]:
        gate = ComputeGate(threads=1, queue=1)
        cache: SingleFlightCache[int] = SingleFlightCache(60.0, gate=gate)
        a = asyncio.create_task(cache.get("a", slow))
        b = asyncio.create_task(cache.get("b", slow))
        shared = asyncio.create_task(cache.get("a", slow))  # joins a's computation
        await asyncio.sleep(0.05)
        with pytest.raises(Busy):
            await cache.get("c", slow)
        pending = gate.pending
        release.set()
        got = await asyncio.gather(a, b, shared)
        after = await cache.get("c", lambda: 3)
        return pending, got, after, gate.refused, gate.pending, cache.misses

    pending, got, after, refused, left, misses = asyncio.run(scenario())
    assert pending == 2 and got == [1, 1, 1] and after == 3
    assert refused == 1 and left == 0 and misses == 3


def test_cache_is_bounded_in_entries_and_bytes() -> None:
    async def scenario() -> SingleFlightCache[bytes]:
        cache: SingleFlightCache[bytes] = SingleFlightCache(
            60.0, max_entries=5, max_bytes=1000, size_of=len)
        for i in range(20):
            await cache.get(i, lambda: b"x" * 300)
        await cache.get("huge", lambda: b"x" * 5000)  # answered, not kept
        return cache

    cache = asyncio.run(scenario())
    assert len(cache) == 3 and cache.bytes == 900 and cache.evictions == 17


def test_busy_answers_503_with_retry_after(redis_url: str) -> None:
    client = connect(redis_url)
    Registry(client).create(parse_definition(experiment_definition("busy")))
    DirectIngest(client).feed(experiment_messages(Population("busy"), 0, 200))
    s = settings_for(redis_url, api_compute_threads=1, api_compute_queue=2,
                     results_cache_seconds=60.0)
    with client_for(s) as c:
        h = auth(READ)
        assert c.get("/v1/experiments/busy/results", headers=h).status_code == 200
        gate = c.app.state.api.results.gate  # type: ignore[attr-defined]
        gate.pending = gate.threads + gate.queue  # as if 3 computations were in progress
        r = c.get("/v1/experiments/busy/results?alpha=0.01", headers=h)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"] == "busy"
        cached = c.get("/v1/experiments/busy/results", headers=h)  # from the cache: served
        assert cached.status_code == 200
        gate.pending = 0
        assert c.get("/v1/experiments/busy/results?alpha=0.01", headers=h).status_code == 200


WIDE = tuple(["control"] + [f"t{i}" for i in range(1, 64)])


def test_healthz_answers_while_results_compute(redis_url: str) -> None:
    """A 64-variation × 10-metric result takes about a second to compute; meanwhile the event
    loop is free: /healthz answers while that computation is still running."""
    client = connect(redis_url)
    metrics = [{"name": f"m{i}", "event": ("purchase", "signup", "pageview")[i % 3],
                "aggregate": ("sum", "binary", "count")[i % 3]} for i in range(10)]
    Registry(client).create(parse_definition(experiment_definition(
        "wide", variations=WIDE, metrics=metrics, primary_metric="m0", guardrails=["m1"])))
    DirectIngest(client).feed(experiment_messages(Population(
        "wide", variations=WIDE, assign=(1 / 64,) * 64, revenue_lift=(0.0,) * 64,
        signup_lift=(0.0,) * 64), 0, 4000))
    with client_for(settings_for(redis_url)) as c:
        gate = c.app.state.api.results.gate  # type: ignore[attr-defined]
        answer: list[httpx.Response] = []
        t = threading.Thread(target=lambda: answer.append(c.get(
            "/v1/experiments/wide/results?alpha=0.0137", headers=auth(READ))))
        t.start()
        deadline = time.monotonic() + 30
        while gate.pending == 0:
            assert time.monotonic() < deadline and t.is_alive()
            time.sleep(0.001)
        latencies, during = [], 0
        while gate.pending and len(latencies) < 50:
            t0 = time.perf_counter()
            assert c.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - t0)
            during += bool(gate.pending)  # the computation was still running afterwards
        t.join(60)
    assert answer and answer[0].status_code == 200
    assert len(answer[0].json()["slices"][0]["variations"]) == 64
    # /healthz answered again and again while the computation was still running: the
    # event loop is not blocked by it (its latency is measured in bench/api_load.py, not
    # asserted here: a timed assertion fails on a loaded machine)
    assert during >= 3, (during, latencies)


def test_refusals_and_evictions_in_metrics(redis_url: str) -> None:
    client = connect(redis_url)
    Registry(client).create(parse_definition(experiment_definition("m")))
    DirectIngest(client).feed(experiment_messages(Population("m"), 0, 100))
    s = settings_for(redis_url, results_cache_entries=2, results_cache_seconds=60.0,
                     api_max_body_bytes=LIMIT)
    with client_for(s) as c:
        h = auth(READ)
        for alpha in (0.01, 0.02, 0.03, 0.04):
            assert c.get(f"/v1/experiments/m/results?alpha={alpha}", headers=h).status_code \
                == 200
        gate = c.app.state.api.results.gate  # type: ignore[attr-defined]
        gate.pending = gate.threads + gate.queue
        assert c.get("/v1/experiments/m/results?alpha=0.05", headers=h).status_code == 503
        gate.pending = 0
        assert c.post("/v1/experiments", content=b" " * (LIMIT + 1),
                      headers=auth(ADMIN)).status_code == 413
        text = c.get("/metrics", headers=h).text
    assert "liftstream_api_results_cache_evictions_total 2.0" in text
    assert "liftstream_api_computations_refused_total 1.0" in text
    assert 'status="413"' in text


def test_echoed_parameter_values_are_bounded(api: TestClient) -> None:
    r = api.get("/v1/experiments/x/results?alpha=" + "9" * 5000, headers=auth(READ))
    assert r.status_code == 422
    assert len(r.json()["detail"]) < 300 and "…" in r.json()["detail"]
