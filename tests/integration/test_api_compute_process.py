"""Documents computed in child processes (``create_app(compute_processes=True)``, what
``liftstream api`` runs) answer exactly what the thread-computed ones do, history included,
and a killed child is replaced."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from state.definition import parse_definition
from state.registry import Registry
from state.store import connect
from workers.api.app import Auth, create_app
from workers.settings import Settings

from .apikit import (
    DirectIngest,
    Population,
    api_server,
    experiment_definition,
    experiment_messages,
)

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


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_children_end_with_the_api_process(redis_url: str, tmp_path: Path) -> None:
    """``liftstream api`` computes in a child; stopped (SIGTERM) or killed (SIGKILL), the API
    process leaves no child behind."""
    s = _loaded(redis_url)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with api_server(s, tmp_path, "--insecure", "--no-lag") as server:
            r = httpx.get(server.url + "/v1/experiments/proc/results", timeout=60)
            assert r.status_code == 200 and r.json()["slices"]
            kids = [c for c in _children(server.proc.pid)
                    if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
            assert len(kids) == s.api_compute_threads
            server.proc.send_signal(sig)  # our own child process, by its handle
            server.proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_alive(c) for c in kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(c) for c in kids), f"compute child outlived {sig.name}"
