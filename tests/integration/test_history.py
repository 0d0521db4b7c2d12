"""Result history over 30 simulated days against a real Redis: tiered points under the
documented bounds, each one the exact result at its time, recorded once per interval by two
API replicas and the alerter, surviving a restart."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from fastapi.testclient import TestClient

from state import history
from state.definition import parse_definition
from state.registry import Registry
from state.results import experiment_document
from state.store import connect
from workers.alerter.service import Alerter
from workers.api.app import Auth, create_app
from workers.api.history_recorder import HistoryRecorder
from workers.settings import Settings

from .apikit import DirectIngest, Population, experiment_definition, experiment_messages

DAY = 86400.0
T0 = 1_789_999_200.0  # on an hour boundary: the jitter below stays in its interval
INTERVAL = 60.0  # 43,200 intervals in 30 days (the 10 s figures: tests/state, bench/history)
VARIATIONS = ("control", "t1", "t2")


def test_thirty_days_tiered_exact_and_bounded(redis_url: str) -> None:
    client = connect(redis_url)
    s = replace(Settings(), redis_url=redis_url, alert_interval_seconds=INTERVAL,
                stale_after_seconds=1e9)
    reg = Registry(client)
    reg.create(parse_definition(experiment_definition("long", variations=VARIATIONS)))
    d = reg.get("long")
    assert d is not None
    pop = Population("long", VARIATIONS, (0.4, 0.3, 0.3), (0.0, 0.5, 1.0), (0.0, 0.0, 0.05))
    feeder = DirectIngest(client)
    replicas = [HistoryRecorder(connect(redis_url), INTERVAL) for _ in range(2)]
    alerter = Alerter(s, connect(redis_url), sinks=[])
    docs: list[dict[str, Any]] = []  # the result document of every data step
    times: list[float] = []
    total, per_step = int(30 * DAY / INTERVAL), int(DAY / INTERVAL)
    for k in range(total):
        now = T0 + k * INTERVAL + (k * 7919) % 50  # somewhere in the interval
        if k % per_step == 0:  # a new day's units arrive; the real recorders race for it
            step = k // per_step
            if step == 15:  # restart: new processes, the same Redis
                alerter.close()
                replicas = [HistoryRecorder(connect(redis_url), INTERVAL) for _ in range(2)]
                alerter = Alerter(s, connect(redis_url), sinks=[])
            feeder.feed(experiment_messages(pop, 200 * step, 200, T0 + k * INTERVAL))
            docs.append(experiment_document(client, d))
            order = step % 3  # who comes first changes: replica a, replica b, the alerter
            if order == 2:
                alerter.evaluate_once(now)
            recorded = sum(r.record_once(now) for r in (replicas[::-1] if order else replicas))
            if order != 2:
                alerter.evaluate_once(now)
            assert recorded == (1 if order != 2 else 0)  # once per interval across all three
            newest = history.read(client, "long", limit=1)[0]
            assert newest == history.snapshot(docs[-1], now)  # exactly the result now
        else:
            c = history.claim(client, "long", now, INTERVAL)
            assert c is not None and history.record(client, c,
                                                    history.snapshot(docs[-1], now), INTERVAL)
        times.append(now)
    assert history.claim(client, "long", times[-1] + 1.0, INTERVAL) is None  # same interval

    snaps = history.read(client, "long")
    ts = history.tiers(INTERVAL)
    got = [sn["ts"] for sn in snaps]
    assert got == history.expected_times(ts, times, times[-1])  # the rule, in Redis
    assert got[0] == T0 and len(got) <= history.point_bound(ts)
    for sn in snaps:  # every point is the exact result at its time, never interpolated
        step = int((sn["ts"] - T0) // INTERVAL) // per_step
        assert sn == history.snapshot(docs[step], sn["ts"])
    assert len({sn["n"]["control"] for sn in snaps}) == 30  # the data did change
    blob = max(len(history.encode_snapshot(history.snapshot(doc, T0))) for doc in docs)
    used = history.stored_bytes(client, "long")
    assert used <= len(snaps) * (blob + 128)  # the documented bytes per point
    assert used <= history.point_bound(ts) * (blob + 128)


def test_api_replicas_record_each_interval_once(redis_url: str) -> None:
    """Two ``liftstream api`` apps (record_history) on a real clock: points keep coming,
    never two in one interval."""
    client = connect(redis_url)
    s = replace(Settings(), redis_url=redis_url, alert_interval_seconds=0.2)
    Registry(client).create(parse_definition(experiment_definition("live")))
    DirectIngest(client).feed(experiment_messages(Population("live"), 0, 100))
    apps = [create_app(s, auth=Auth(open=True), lag_interval=None, record_history=True)
            for _ in range(2)]
    with TestClient(apps[0]) as a, TestClient(apps[1]):
        got: list[dict[str, Any]] = []
        for _ in range(600):  # until 5 points, at most ~60 s
            got = a.get("/v1/experiments/live/history?estimator=diff").json()["series"]
            if got and len(got[0]["ts"]) >= 5:
                break
            time.sleep(0.1)
    assert got and len(got[0]["ts"]) >= 5
    slots = [int(t // 0.2) for t in got[0]["ts"]]
    assert len(slots) == len(set(slots))
