"""Power, verdict, finished-experiments store, empirical prior and Fisher pre-selection on the
real Redis (the batch script applies the units; documents come from state.results)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fastapi.testclient import TestClient

from state import finished, history, keys
from state.definition import parse_definition
from state.registry import REGISTRY_KEY, Registry
from state.results import experiment_document
from state.store import connect
from workers.alerter.service import Alerter
from workers.api.app import create_app, resolve_auth
from workers.settings import Settings

from .apikit import DirectIngest, Population, experiment_definition, experiment_messages

ADMIN = "admin-token"


def _feed(client: Any, pop: Population, units: int, **definition: Any) -> None:
    Registry(client).create(parse_definition(experiment_definition(pop.experiment,
                                                                   **definition)))
    DirectIngest(client).feed(experiment_messages(pop, 0, units))


def _comp(doc: dict[str, Any], metric: str) -> dict[str, Any]:
    (m,) = [m for m in doc["slices"][0]["metrics"] if m["metric"] == metric]
    return m["comparisons"][0]


def test_live_power_projection_and_verdict(redis_url: str) -> None:
    client = connect(redis_url)
    metrics = [{"name": "revenue", "event": "purchase", "aggregate": "sum", "mde": 0.01},
               {"name": "converted", "event": "signup", "aggregate": "binary"}]
    _feed(client, Population("plan", seed=2), 2000, metrics=metrics, start=0.0)
    d = Registry(client).get("plan")
    assert d is not None
    doc = experiment_document(client, d, now=400.0)
    p = _comp(doc, "revenue")["power"]
    e = _comp(doc, "revenue")["estimators"]["adjusted"]
    assert p["estimator"] == "adjusted" and p["units"] == 2000
    assert abs(p["mde"] - (1.959963984540054 + 0.8416212335729143) * e["se"]) < 1e-9
    assert p["units_per_second"] == 5.0 and p["projected_units"] > 2000
    assert p["projected_seconds"] == (p["projected_units"] - 2000) / 5.0
    assert 0 < p["progress"] < 1 and p["reached"] is False
    dec = doc["decision"]
    assert dec["recommendation"] == "keep_running" and dec["treatment"] == "treatment"
    assert any("not ready" in r or "contains 0" in r for r in dec["reasons"])
    assert _comp(doc, "converted")["power"]["projected_units"] is None  # no target


def test_exposure_rate_without_start_comes_from_the_history(redis_url: str) -> None:
    client = connect(redis_url)
    metrics = [{"name": "revenue", "event": "purchase", "aggregate": "sum", "mde": 0.01},
               {"name": "converted", "event": "signup", "aggregate": "binary"}]
    pop = Population("nostart", seed=4)
    _feed(client, pop, 1000, metrics=metrics)
    d = Registry(client).get("nostart")
    assert d is not None and d.start is None
    doc = experiment_document(client, d, now=100.0)
    p = _comp(doc, "revenue")["power"]
    assert p["units_per_second"] is None and "exposure rate unknown" in p["note"]
    claimed = history.claim(client, d.id, 100.0, 10.0)
    assert claimed is not None
    assert history.record(client, claimed, history.snapshot(doc, 100.0), 10.0)
    DirectIngest(client).feed(experiment_messages(pop, 1000, 500))
    p = _comp(experiment_document(client, d, now=150.0), "revenue")["power"]
    assert p["units_per_second"] == 10.0  # 500 units in 50 s
    assert p["projected_seconds"] == p["remaining_units"] / 10.0


def test_alerter_fires_on_verdict_transitions(redis_url: str) -> None:
    client = connect(redis_url)
    s = replace(Settings(), redis_url=redis_url, alert_interval_seconds=1.0,
                stale_after_seconds=3600.0)
    alerter = Alerter(s, client, sinks=[])
    pop = Population("verdict", revenue_lift=(0.0, 1.5))
    Registry(client).create(parse_definition(experiment_definition(
        "verdict", start=0.0, min_runtime_seconds=1500.0)))
    feeder = DirectIngest(client)
    kinds: list[tuple[str, str]] = []
    for k in range(6):
        feeder.feed(experiment_messages(pop, k * 400, 400))
        for a in alerter.evaluate_once(now=1000.0 + 200.0 * k):
            kinds.append((a.kind, a.fields.get("recommendation") or a.fields.get("metric")))
    # significant early (keep running: runtime not reached), ship once 1500 s passed
    assert ("significance", "revenue") in kinds
    decisions = [k for k in kinds if k[0] == "decision"]
    assert decisions == [("decision", "ship")], kinds
    assert alerter.evaluate_once(now=3000.0) == []  # no re-fire without a change


def test_finished_store_feeds_empirical_prior_and_fisher(redis_url: str) -> None:
    client = connect(redis_url)
    reg = Registry(client)
    for i in range(6):
        _feed(client, Population(f"past{i}", revenue_lift=(0.0, 0.3 * (i - 2.5)), seed=i),
              1500)
    s = replace(Settings(), redis_url=redis_url, api_admin_tokens=(ADMIN,),
                api_read_tokens=("read",))
    with TestClient(create_app(s, auth=resolve_auth(s)[0], lag_interval=None)) as api:
        r = api.post("/v1/experiments/past0/stop", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200, r.text
    assert set(finished.read_all(client)) == {"past0"}  # written at stop
    for i in range(1, 6):
        reg.stop(f"past{i}")  # stopped by another path: recorded lazily
    _feed(client, Population("next", seed=9), 1500, prior={"kind": "empirical"},
          in_experiment_selection={"kind": "fisher"})
    d = reg.get("next")
    assert d is not None and d.prior == "empirical"
    doc = experiment_document(client, d)
    assert set(finished.read_all(client)) == {f"past{i}" for i in range(6)}
    prior = doc["prior"]["metrics"]["revenue"]
    assert prior["source"] == "empirical" and prior["k"] == 6
    assert {x["experiment"] for x in prior["experiments"]} == {f"past{i}" for i in range(6)}
    assert all(x["stopped_at"] for x in prior["experiments"])
    assert _comp(doc, "revenue")["bayes"]["precision_weight"] is not None
    sel = doc["in_experiment_selection"]
    assert sel["kind"] == "fisher" and sel["selected"] == ["pageviews"]
    assert sel["candidates"]["pageviews"]["experiments"] == 6
    assert {x["experiment"] for x in sel["experiments"]} == {f"past{i}" for i in range(6)}
    checks = _comp(doc, "revenue")["covariate_selection"]
    assert [(c["name"], c["selected"]) for c in checks] == [("pageviews", True)]
    assert doc["prior"]["metrics"]["converted"]["k"] == 6
    # fewer than the minimum of finished experiments: configured σ, with a note
    reg.create(replace(d, id="alone"))
    client.delete(keys.finished())
    for i in range(6):
        client.hdel(REGISTRY_KEY, f"past{i}")
    alone = experiment_document(client, replace(d, id="alone"))
    assert alone["prior"]["metrics"]["revenue"]["source"] == "configured"
    assert "fewer than" in alone["prior"]["metrics"]["revenue"]["note"]
    assert alone["in_experiment_selection"]["selected"] is None
