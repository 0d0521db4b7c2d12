"""The query API against a real Redis: every endpoint, auth failures, bad parameters, caching."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from state import history
from state.definition import parse_definition
from state.registry import REGISTRY_KEY, Registry
from state.results import experiment_document_with
from state.store import connect
from workers.alerter.service import Alerter
from workers.api.app import Auth, create_app, resolve_auth, shape_results
from workers.api.cache import SingleFlightCache
from workers.settings import Settings

from .apikit import (
    DirectIngest,
    Population,
    api_server,
    auth,
    experiment_definition,
    experiment_messages,
    series_of,
)

READ, ADMIN = "read-token-1", "admin-token-1"


def settings_for(redis_url: str, **kw: Any) -> Settings:
    return replace(Settings(), redis_url=redis_url, api_read_tokens=(READ,),
                   api_admin_tokens=(ADMIN,), **kw)


@pytest.fixture
def api(redis_url: str) -> Iterator[TestClient]:
    s = settings_for(redis_url)
    app = create_app(s, auth=resolve_auth(s)[0], lag_interval=None)
    with TestClient(app) as c:
        yield c


@pytest.fixture
def loaded(redis_url: str, api: TestClient) -> TestClient:
    """An experiment ``shop`` with 3,000 units and a real revenue effect."""
    client = connect(redis_url)
    Registry(client).create(parse_definition(experiment_definition("shop")))
    DirectIngest(client).feed(experiment_messages(
        Population("shop", revenue_lift=(0.0, 1.0)), 0, 3000))
    return api


def test_probes_and_page(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    r = api.get("/readyz")
    assert r.status_code == 200 and r.json()["redis"] == "ok"
    page = api.get("/")
    assert page.status_code == 200 and "<svg" in page.text and "Bearer" in page.text
    assert "http://" not in page.text.split("<script>")[1] and "https://" not in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert api.get("/openapi.json").json()["info"]["title"] == "liftstream"
    assert api.get("/docs").status_code == 200


def test_readyz_reports_redis_down() -> None:
    s = settings_for("redis://127.0.0.1:1/0")
    with TestClient(create_app(s, auth=resolve_auth(s)[0], lag_interval=None)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    assert r.json()["error"] == "not_ready" and "Redis" in r.json()["detail"]


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/experiments"), ("GET", "/v1/experiments/x"), ("GET", "/metrics"),
    ("GET", "/v1/experiments/x/results"), ("GET", "/v1/experiments/x/history"),
    ("POST", "/v1/experiments"), ("PUT", "/v1/experiments/x"),
    ("POST", "/v1/experiments/x/stop"),
])
def test_auth_required(api: TestClient, method: str, path: str) -> None:
    for headers in ({}, auth("wrong"), {"Authorization": "Basic abc"}):
        r = api.request(method, path, headers=headers, json={})
        assert r.status_code == 401, (path, headers, r.text)
        body = r.json()
        assert body["error"] == "unauthorized" and body["detail"]
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_admin_scope(api: TestClient) -> None:
    d = experiment_definition("scoped")
    r = api.post("/v1/experiments", json=d, headers=auth(READ))
    assert r.status_code == 403
    assert r.json() == {"error": "forbidden", "detail": r.json()["detail"]}
    assert "admin" in r.json()["detail"]
    assert api.put("/v1/experiments/scoped", json=d, headers=auth(READ)).status_code == 403
    assert api.post("/v1/experiments/scoped/stop", headers=auth(READ)).status_code == 403
    # admin implies read
    assert api.get("/v1/experiments", headers=auth(ADMIN)).status_code == 200


def test_registry_crud(api: TestClient) -> None:
    h = auth(ADMIN)
    d = experiment_definition("crud", weights=[1, 1])
    r = api.post("/v1/experiments", json=d, headers=h)
    assert r.status_code == 201, r.text
    assert r.json()["weights"] == [0.5, 0.5]
    r = api.post("/v1/experiments", json=d, headers=h)
    assert r.status_code == 409 and r.json()["error"] == "conflict"
    assert [e["id"] for e in api.get("/v1/experiments", headers=auth(READ)).json()
            ["experiments"]] == ["crud"]
    assert api.get("/v1/experiments/crud", headers=auth(READ)).json()["primary_metric"] == \
        "revenue"
    r = api.get("/v1/experiments/nope", headers=auth(READ))
    assert r.status_code == 404 and r.json() == {"error": "not_found",
                                                 "detail": "no experiment 'nope'"}
    d2 = {k: v for k, v in d.items() if k != "id"} | {"alpha": 0.01}
    r = api.put("/v1/experiments/crud", json=d2, headers=h)
    assert r.status_code == 200 and r.json()["alpha"] == 0.01
    assert api.put("/v1/experiments/other", json=d2, headers=h).status_code == 404
    r = api.put("/v1/experiments/crud", json=d | {"covariates": ["x", "z"]}, headers=h)
    assert r.status_code == 409 and r.json()["detail"].startswith("covariates: cannot change")
    r = api.put("/v1/experiments/crud", json=d | {"id": "other"}, headers=h)
    assert r.status_code == 422 and "differs" in r.json()["detail"]
    r = api.post("/v1/experiments/crud/stop", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "stopped"
    assert api.post("/v1/experiments/nope/stop", headers=h).status_code == 404


@pytest.mark.parametrize("body,fragment", [
    ({"id": "bad", "variations": ["a"], "metrics": []}, "variations: need at least 2"),
    ({"id": "bad", "variations": ["a", "b"], "metrics": [{"name": "m", "event": "e",
                                                          "aggregate": "avg"}]},
     "metrics[0].aggregate: must be one of binary, count, sum"),
    ({"id": "bad", "variations": ["a", "b"]}, "metrics: required"),
    ({"id": "b a d", "variations": ["a", "b"], "metrics": []}, "id: 'b a d' must match"),
    ({"variations": ["a", "b"], "colour": 1}, "colour: unknown field"),
])
def test_invalid_definitions(api: TestClient, body: dict[str, Any], fragment: str) -> None:
    r = api.post("/v1/experiments", json=body, headers=auth(ADMIN))
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_definition"
    assert fragment in r.json()["detail"], r.json()


def test_body_not_json(api: TestClient) -> None:
    r = api.post("/v1/experiments", content=b"{not json", headers=auth(ADMIN) | {
        "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    assert r.json()["detail"].startswith("request body")
    r = api.post("/v1/experiments", json=[1, 2], headers=auth(ADMIN))
    assert r.status_code == 422 and "dictionary" in r.json()["detail"]


@pytest.mark.parametrize("query,fragment", [
    ("alpha=2", "query parameter 'alpha': Input should be less than 1 (got '2')"),
    ("alpha=0", "query parameter 'alpha': Input should be greater than 0"),
    ("alpha=abc", "query parameter 'alpha': Input should be a valid number"),
    ("correction=bonferroni", "query parameter 'correction': Input should be 'holm' or 'bh'"),
    ("estimator=ols", "query parameter 'estimator': Input should be 'diff', 'cuped'"),
    ("sequential=maybe", "query parameter 'sequential': Input should be a valid boolean"),
])
def test_bad_result_parameters(loaded: TestClient, query: str, fragment: str) -> None:
    r = loaded.get(f"/v1/experiments/shop/results?{query}", headers=auth(READ))
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "invalid_request"
    assert fragment in body["detail"], body["detail"]
    assert body["problems"][0]["location"] == "query"


def test_bad_history_parameters_and_ids(loaded: TestClient) -> None:
    h = auth(READ)
    r = loaded.get("/v1/experiments/shop/history?metric=nope", headers=h)
    assert r.status_code == 422 and "'nope' is not a metric" in r.json()["detail"]
    r = loaded.get("/v1/experiments/shop/history?treatment=control", headers=h)
    assert r.status_code == 422 and "treatments: treatment" in r.json()["detail"]
    r = loaded.get("/v1/experiments/shop/history?limit=0", headers=h)
    assert r.status_code == 422 and "limit" in r.json()["detail"]
    r = loaded.get("/v1/experiments/b%20ad/results", headers=h)
    assert r.status_code == 422 and "path parameter 'experiment_id'" in r.json()["detail"]
    r = loaded.get("/v1/experiments/nope/results", headers=h)
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = loaded.get("/v1/nothing", headers=h)
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_results_document(loaded: TestClient, redis_url: str) -> None:
    r = loaded.get("/v1/experiments/shop/results", headers=auth(READ))
    assert r.status_code == 200, r.text
    doc = r.json()
    client = connect(redis_url)
    d = Registry(client).get("shop")
    assert d is not None
    direct = experiment_document_with(client, d)
    assert doc["slices"][0]["metrics"] == direct["slices"][0]["metrics"]
    assert doc["experiment"] == "shop" and doc["status"] == "running"
    sl = doc["slices"][0]
    assert sum(v["n"] for v in sl["variations"]) == 3000
    assert sl["counters"]["exposures"] == 3000
    fr = doc["freshness"]
    assert fr["last_event_ts"] == sl["freshness"]["last_event_ts"] > 0
    assert fr["computed_at"] > 0 and fr["consumer_lag"] is None
    rev = series_of(doc, "revenue", "treatment")
    assert rev["primary"] == "adjusted"
    adj, raw = rev["estimators"]["adjusted"], rev["estimators"]["diff"]
    assert adj["seq_ci_low"] > 0  # a real effect of 1.0, clearly detected
    assert adj["ci_high"] - adj["ci_low"] < 0.7 * (raw["ci_high"] - raw["ci_low"])  # sd 3 vs 5
    assert [c["name"] for c in rev["covariate_selection"]] == ["pageviews"]
    assert rev["bayes"]["treatment_posterior_mean"] is not None


def test_results_options(loaded: TestClient) -> None:
    h = auth(READ)
    base = loaded.get("/v1/experiments/shop/results", headers=h).json()
    one = loaded.get("/v1/experiments/shop/results?estimator=cuped", headers=h).json()
    for m in one["slices"][0]["metrics"]:
        for c in m["comparisons"]:
            assert list(c["estimators"]) == ["cuped"]
    assert one["query"]["estimator"] == "cuped"
    flat = loaded.get("/v1/experiments/shop/results?sequential=false", headers=h).json()
    e = series_of(flat, "revenue", "treatment")["estimators"]["adjusted"]
    assert not {"seq_ci_low", "seq_ci_high", "seq_p_value"} & set(e)
    assert "sequential_p_value" not in flat["slices"][0]["srm"]
    assert "seq_ci_low" in series_of(base, "revenue", "treatment")["estimators"]["adjusted"]
    wide = loaded.get("/v1/experiments/shop/results?alpha=0.01", headers=h).json()
    a05 = series_of(base, "revenue", "treatment")["estimators"]["diff"]
    a01 = series_of(wide, "revenue", "treatment")["estimators"]["diff"]
    assert a01["effect"] == a05["effect"]
    assert a01["ci_high"] - a01["ci_low"] > 1.3 * (a05["ci_high"] - a05["ci_low"])
    assert wide["query"]["alpha"] == 0.01 and base["query"]["alpha"] == 0.05
    holm = loaded.get("/v1/experiments/shop/results?correction=holm", headers=h).json()
    e = series_of(holm, "revenue", "treatment")["estimators"]["diff"]
    assert e["adjusted_p_value"] is not None and e["adjusted_p_value"] >= e["p_value"]
    assert series_of(base, "revenue", "treatment")["estimators"]["diff"][
        "adjusted_p_value"] is None


def test_results_of_an_experiment_without_data(api: TestClient) -> None:
    h = auth(ADMIN)
    assert api.post("/v1/experiments", json=experiment_definition("empty"), headers=h
                    ).status_code == 201
    doc = api.get("/v1/experiments/empty/results", headers=h).json()
    assert [v["n"] for v in doc["slices"][0]["variations"]] == [0, 0]
    e = series_of(doc, "revenue", "treatment")["estimators"]["diff"]
    assert e["effect"] is None and e["note"]
    assert doc["freshness"]["last_event_ts"] is None
    assert api.get("/v1/experiments/empty/history", headers=h).json()["series"] == []


def test_unexpected_errors_are_json(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A definition whose columns no longer match the stored matrices: a generic JSON 500
    naming a request id; the exception text is in the log only."""
    client = connect(redis_url)
    Registry(client).create(parse_definition(experiment_definition("drift")))
    DirectIngest(client).feed(experiment_messages(Population("drift"), 0, 50))
    d = experiment_definition("drift")
    d["covariates"] = ["x", "y"]
    client.hset(REGISTRY_KEY, "drift", parse_definition(d).to_json())  # behind its back
    s = settings_for(redis_url)
    with TestClient(create_app(s, auth=resolve_auth(s)[0], lag_interval=None),
                    raise_server_exceptions=False) as api:
        r = api.get("/v1/experiments/drift/results", headers=auth(READ))
    assert r.status_code == 500
    body = r.json()
    assert body["error"] == "internal_error" and body["request_id"] == r.headers["x-request-id"]
    assert "columns" not in r.text and "ValueError" not in r.text and "Traceback" not in r.text
    assert body["request_id"] in body["detail"]
    logged = [rec for rec in caplog.records if body["request_id"] in rec.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert "columns" in str(logged[0].exc_info[1])


def test_shape_results_keeps_input() -> None:
    doc = {"slices": [{"srm": {"sequential_p_value": 1.0}, "metrics": [{"comparisons": [
        {"estimators": {"diff": {"effect": 1.0, "seq_p_value": 0.5}, "cuped": {}}}]}]}]}
    out = shape_results(doc, "diff", False)
    assert out["slices"][0]["metrics"][0]["comparisons"][0]["estimators"] == {
        "diff": {"effect": 1.0}}
    assert doc["slices"][0]["metrics"][0]["comparisons"][0]["estimators"]["diff"][
        "seq_p_value"] == 0.5


def test_results_are_cached_and_invalidated(redis_url: str) -> None:
    s = settings_for(redis_url, results_cache_seconds=60.0)
    client = connect(redis_url)
    Registry(client).create(parse_definition(experiment_definition("cache")))
    feeder = DirectIngest(client)
    pop = Population("cache")
    feeder.feed(experiment_messages(pop, 0, 200))
    with TestClient(create_app(s, auth=resolve_auth(s)[0], lag_interval=None)) as api:
        n1 = api.get("/v1/experiments/cache/results", headers=auth(READ)).json()
        feeder.feed(experiment_messages(pop, 200, 100))
        n2 = api.get("/v1/experiments/cache/results", headers=auth(READ)).json()
        assert n1 == n2  # within the TTL: the cached document
        d = experiment_definition("cache", alpha=0.1)
        assert api.put("/v1/experiments/cache", json=d, headers=auth(ADMIN)).status_code == 200
        n3 = api.get("/v1/experiments/cache/results", headers=auth(READ)).json()
        assert sum(v["n"] for v in n3["slices"][0]["variations"]) == 300
        assert n3["query"]["alpha"] == 0.1


def test_single_flight_shares_one_computation() -> None:
    calls = 0
    gate = threading.Event()

    def compute() -> int:
        nonlocal calls
        calls += 1
        gate.wait(2.0)
        return 42

    async def main() -> list[int]:
        cache: SingleFlightCache[int] = SingleFlightCache(ttl=0.0)
        tasks = [asyncio.create_task(cache.get("k", compute)) for _ in range(50)]
        await asyncio.sleep(0.05)
        gate.set()
        out = await asyncio.gather(*tasks)
        assert (cache.misses, cache.shared) == (1, 49)
        return out

    assert asyncio.run(main()) == [42] * 50
    assert calls == 1


def test_single_flight_errors_are_not_cached() -> None:
    calls = 0

    def boom() -> int:
        nonlocal calls
        calls += 1
        raise RuntimeError("down")

    async def main() -> None:
        cache: SingleFlightCache[int] = SingleFlightCache(ttl=10.0)
        for _ in range(2):
            with pytest.raises(RuntimeError):
                await cache.get("k", boom)

    asyncio.run(main())
    assert calls == 2


def test_history_endpoint(loaded: TestClient, redis_url: str) -> None:
    client = connect(redis_url)
    s = settings_for(redis_url, alert_interval_seconds=1.0)  # one snapshot per second
    alerter = Alerter(s, client, sinks=[])
    feeder_pop = Population("shop", revenue_lift=(0.0, 1.0))
    feeder = DirectIngest(client)
    for k in range(7):
        if k:
            feeder.feed(experiment_messages(feeder_pop, 10_000 + 100 * k, 100))
        alerter.evaluate_once(now=1000.0 + k)
    h = auth(READ)
    assert loaded.get("/v1/experiments/shop/history", headers=h).json()["points"] == 7
    r = loaded.get("/v1/experiments/shop/history?limit=5", headers=h).json()
    assert r["points"] == 5  # the newest five
    rev = [x for x in r["series"] if x["metric"] == "revenue" and x["estimator"] == "adjusted"]
    assert len(rev) == 1 and rev[0]["primary"] and rev[0]["ts"] == [1002.0 + i for i in range(5)]
    assert rev[0]["n"] == sorted(rev[0]["n"]) and rev[0]["n"][-1] == 3600
    for k in history.VALUES:
        assert len(rev[0][k]) == 5
    assert all(lo < e < hi for lo, e, hi in zip(rev[0]["seq_ci_low"], rev[0]["effect"],
                                                  rev[0]["seq_ci_high"], strict=True))
    one = loaded.get("/v1/experiments/shop/history?metric=converted&estimator=diff&limit=2",
                     headers=h).json()
    assert [(x["metric"], x["estimator"]) for x in one["series"]] == [("converted", "diff")]
    assert len(one["series"][0]["ts"]) == 2 and len(one["srm"]["p_value"]) == 2
    thin = loaded.get("/v1/experiments/shop/history?estimator=diff&metric=revenue&max_points=3"
                      "&limit=5", headers=h).json()
    assert thin["series"][0]["ts"] == [1002.0, 1004.0, 1006.0]
    assert loaded.get("/v1/experiments/shop/history?max_points=1", headers=h).status_code == 422


def test_metrics_endpoint(loaded: TestClient) -> None:
    h = auth(READ)
    loaded.get("/v1/experiments/shop/results", headers=h)
    loaded.get("/v1/experiments/shop/results", headers=h)
    r = loaded.get("/metrics", headers=h)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
              for line in text.splitlines() if line and not line.startswith("#")}
    assert values["liftstream_redis_up"] == 1.0
    assert values["liftstream_ingest_messages_total"] > 3000
    assert values['liftstream_experiment_exposures_total{experiment="shop"}'] == 3000
    assert values['liftstream_experiment_running{experiment="shop"}'] == 1.0
    assert values["liftstream_ingest_dead_letters_total"] == 0
    assert "liftstream_ingest_events_per_second" in values
    assert values['liftstream_api_results_cache_total{outcome="miss"}'] >= 1
    key = ('liftstream_api_requests_total{method="GET",'
           'route="/v1/experiments/{experiment_id}/results",status="200"}')
    assert values[key] == 2
    assert "liftstream_last_event_timestamp_seconds" in values


def test_insecure_and_generated_tokens(redis_url: str) -> None:
    s = replace(Settings(), redis_url=redis_url)
    a, generated = resolve_auth(s)
    assert generated and a.scope_of(generated) == "admin" and not a.open
    assert a.scope_of("guess") is None
    open_auth, none = resolve_auth(s, insecure=True)
    assert open_auth.open and none is None
    with TestClient(create_app(s, auth=Auth(open=True), lag_interval=None)) as c:
        assert c.get("/v1/experiments").status_code == 200
        assert c.post("/v1/experiments", json=experiment_definition("open")).status_code == 201


def test_server_process_over_http(redis_url: str, tmp_path: Path) -> None:
    """``liftstream api`` as a child process with LIFTSTREAM_* settings, over real HTTP."""
    s = settings_for(redis_url, results_cache_seconds=0.5)
    client = connect(redis_url)
    Registry(client).create(parse_definition(experiment_definition("proc")))
    DirectIngest(client).feed(experiment_messages(Population("proc"), 0, 500))
    with api_server(s, tmp_path, "--no-lag") as server, httpx.Client(
            base_url=server.url, timeout=10.0) as http:
        assert http.get("/readyz").json()["status"] == "ready"
        assert http.get("/v1/experiments").status_code == 401
        assert http.get("/v1/experiments", headers=auth(READ)).json()["experiments"][0][
            "id"] == "proc"
        r = http.post("/v1/experiments", json=experiment_definition("proc2"),
                      headers=auth(ADMIN))
        assert r.status_code == 201
        doc = http.get("/v1/experiments/proc/results", headers=auth(READ)).json()
        assert sum(v["n"] for v in doc["slices"][0]["variations"]) == 500
        assert http.get("/metrics", headers=auth(READ)).status_code == 200
        assert "<svg" in http.get("/").text
        t0 = time.monotonic()
        for _ in range(20):
            assert http.get("/v1/experiments/proc/results", headers=auth(READ)).status_code \
                == 200
        assert time.monotonic() - t0 < 5.0


def test_server_refuses_bad_settings(redis_url: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    from .apikit import api_env

    env = api_env(settings_for(redis_url)) | {"LIFTSTREAM_API_PORT": "99999"}
    exe = Path(sys.executable).with_name("liftstream")
    r = subprocess.run([str(exe), "api"], env=env, capture_output=True, timeout=30)
    assert r.returncode == 2
    assert b"LIFTSTREAM_API_PORT: expected a TCP port" in r.stderr


def test_server_prints_generated_token(redis_url: str, tmp_path: Path) -> None:
    s = replace(Settings(), redis_url=redis_url)
    with api_server(s, tmp_path, "--no-lag") as server:
        text = server.log_text()
        assert "generated an admin token" in text
        token = text.split("token:", 1)[1].split()[0]
        r = httpx.get(server.url + "/v1/experiments", headers=auth(token))
        assert r.status_code == 200
        assert httpx.get(server.url + "/v1/experiments").status_code == 401


def test_api_and_alerter_on_redis_cluster(redis_cluster_url: str) -> None:
    """Alert state, history and the lease are single-key: all of it works on a cluster."""
    s = settings_for(redis_cluster_url, redis_cluster=True)
    client = connect(redis_cluster_url, cluster=True)
    Registry(client).create(parse_definition(experiment_definition("clu", weights=[0.5, 0.5])))
    # 80/20 against 50/50: the anytime-valid SRM test (which alone decides) flags at 400 units
    DirectIngest(client).feed(experiment_messages(Population("clu", assign=(0.8, 0.2)), 0, 400))
    fired = Alerter(s, client, sinks=[]).evaluate_once(now=5.0)
    assert [a.kind for a in fired] == ["srm"]
    with TestClient(create_app(s, auth=resolve_auth(s)[0], lag_interval=None)) as api:
        assert api.get("/readyz").status_code == 200
        doc = api.get("/v1/experiments/clu/results", headers=auth(READ)).json()
        assert sum(v["n"] for v in doc["slices"][0]["variations"]) == 400
        hist = api.get("/v1/experiments/clu/history", headers=auth(READ)).json()
        assert hist["points"] == 1 and hist["srm"]["ts"] == [5.0]
        assert "liftstream_redis_up 1.0" in api.get("/metrics", headers=auth(READ)).text
