"""Documents computed in child processes (``create_app(compute_processes=True)``, what
``liftstream api`` runs) answer exactly what the thread-computed ones do, history included,
and a killed child is replaced."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from typing import Any

from fastapi.testclient import TestClient

from state.definition import parse_definition
from state.registry import Registry
from state.store import connect
from workers.api.app import Auth, create_app
from workers.settings import Settings

from .apikit import DirectIngest, Population, experiment_definition, experiment_messages

VOLATILE = ("computed_at", "last_event_age_seconds")


def _stable(doc: dict[str, Any]) -> dict[str, Any]:
    fresh = {k: v for k, v in doc["freshness"].items() if k not in VOLATILE}
    return {**doc, "freshness": fresh}


def _loaded(redis_url: str) -> Settings:
    client = connect(redis_url)
    Registry(client).create(parse_definition(experiment_definition("proc")))
    DirectIngest(client).feed(experiment_messages(
        Population("proc", revenue_lift=(0.0, 1.0)), 0, 2000))
    return replace(Settings(), redis_url=redis_url, alert_interval_seconds=0.2,
                   results_cache_seconds=0.0)


def test_child_processes_answer_like_threads(redis_url: str) -> None:
    s = _loaded(redis_url)
    child = create_app(s, auth=Auth(open=True), lag_interval=None, compute_processes=True,
                       record_history=True)
    threaded = create_app(s, auth=Auth(open=True), lag_interval=None)
    with TestClient(child) as a, TestClient(threaded) as b:
        for query in ("", "?alpha=0.01&correction=holm", "?estimator=diff&sequential=false"):
            got, want = (c.get(f"/v1/experiments/proc/results{query}") for c in (a, b))
            assert got.status_code == want.status_code == 200
            assert _stable(got.json()) == _stable(want.json())
            assert list(got.json()) == list(want.json())  # the same keys in the same order
        assert a.get("/v1/experiments/nope/results").status_code == 404
        series: list[dict[str, Any]] = []
        for _ in range(600):  # the recorder's snapshots come from the child; at most ~60 s
            series = a.get("/v1/experiments/proc/history?estimator=diff").json()["series"]
            if series and len(series[0]["ts"]) >= 2:
                break
            time.sleep(0.1)
        assert series and len(series[0]["ts"]) >= 2


def test_a_killed_child_is_replaced(redis_url: str) -> None:
    s = _loaded(redis_url)
    app = create_app(s, auth=Auth(open=True), lag_interval=None, compute_processes=True)
    with TestClient(app) as a:
        assert a.get("/v1/experiments/proc/results").status_code == 200
        pids = app.state.compute.pids()
        assert len(pids) == s.api_compute_threads
        for pid in pids:
            os.kill(pid, signal.SIGKILL)  # the children this test's app spawned
        r = a.get("/v1/experiments/proc/results?alpha=0.02")
        assert r.status_code == 200 and r.json()["query"]["alpha"] == 0.02
        assert not set(app.state.compute.pids()) & set(pids)
