"""Hostile definitions at ``experiments create`` and the API, legacy model ids, refused
snapshots in ``/metrics`` — against a real Redis."""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
from fastapi.testclient import TestClient

from state import keys
from state.definition import DefinitionError, parse_definition
from state.model_cache import ModelCache
from state.models import ModelRegistry, refusal_counts
from state.naming import model_id
from state.registry import REGISTRY_KEY, Registry
from stream.batch import TrainingExample
from workers.api.app import create_app, resolve_auth
from workers.cli.experiments import add_experiments_parser
from workers.learner.checkpoint import LearnerState, offset_key
from workers.learner.online_model import OnlineModel
from workers.settings import Settings

from ..state.test_limits import BILLION_LAUGHS
from .apikit import auth

KEY = "hostile-test-hmac-key-0123456789abcdef"
READ, ADMIN = "read-token-1", "admin-token-1"
BOMB = BILLION_LAUGHS


def base(**extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"id": "shop", "variations": ["a", "b"],
                         "metrics": [{"name": "clk", "event": "click", "aggregate": "count"}]}
    d.update(extra)
    return d


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="liftstream")
    add_experiments_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


@pytest.fixture
def cli_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("LIFTSTREAM_REDIS_URL", redis_url)
    monkeypatch.delenv("LIFTSTREAM_REDIS_CLUSTER", raising=False)
    return redis_url


def _write(tmp_path: Path, name: str, content: bytes | dict[str, Any]) -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return str(path)


def test_cli_refuses_hostile_definitions(cli_env: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (_write(tmp_path, "bomb.yaml", BOMB), "aliases are not allowed"),
        (_write(tmp_path, "arms.json", base(variations=[f"v{i}" for i in range(10_000)])),
         "variations: 10000 variations; the limit is 64 (LIFTSTREAM_MAX_VARIATIONS)"),
        (_write(tmp_path, "covs.json", base(covariates=[f"c{i}" for i in range(100_000)])),
         "covariates: 100000 covariates; the limit is 64 (LIFTSTREAM_MAX_COVARIATES)"),
        (_write(tmp_path, "huge.json", base(covariates=["c" * 200] * 210_000)),
         "more than 1048576 bytes; the limit is 1048576 bytes "
         "(LIFTSTREAM_MAX_DEFINITION_BYTES)"),
        (_write(tmp_path, "dup.yaml", b"id: a\nvariations: [a, b]\nid: b\n"),
         "duplicate key 'id' (line 3)"),
        (_write(tmp_path, "dup.json", b'{"id": "a", "metrics": [], "metrics": []}'),
         "duplicate key 'metrics'"),
        (_write(tmp_path, "clash.json", base(covariates=["clk:pred"], model="linear")),
         "covariates[0]: 'clk:pred' is the name of metric 'clk''s model-prediction column"),
    ]
    assert Path(cases[3][0]).stat().st_size > 42_000_000
    for path, fragment in cases:
        t0 = time.perf_counter()
        assert run(["experiments", "create", path]) == 2, path
        elapsed = time.perf_counter() - t0
        err = capsys.readouterr().err
        assert fragment in err, err
        assert len(err.encode()) < 1000 and err.count("\n") == 1
        if path.endswith("bomb.yaml"):
            assert elapsed < 1.0, elapsed
    client = redis.Redis.from_url(cli_env)
    assert Registry(client).list() == []  # nothing stored
    client.close()


def test_cli_stdin_bomb_and_configured_limit(cli_env: str, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(BOMB)))
    t0 = time.perf_counter()
    assert run(["experiments", "create", "-"]) == 2
    assert time.perf_counter() - t0 < 1.0
    err = capsys.readouterr().err
    assert err.startswith("liftstream experiments: error: -: YAML alias *a (line 2)")
    monkeypatch.setenv("LIFTSTREAM_MAX_VARIATIONS", "2")
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(base(variations=["a", "b", "c"]))))
    assert run(["experiments", "create", "-"]) == 2
    assert "variations: 3 variations; the limit is 2 (LIFTSTREAM_MAX_VARIATIONS)" in \
        capsys.readouterr().err
    monkeypatch.setenv("LIFTSTREAM_MAX_VARIATIONS", "3")
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(base(variations=["a", "b", "c"]))))
    assert run(["experiments", "create", "-"]) == 0
    assert "created experiment shop" in capsys.readouterr().out


@pytest.fixture
def api(redis_url: str) -> Iterator[TestClient]:
    s = replace(Settings(), redis_url=redis_url, api_read_tokens=(READ,),
                api_admin_tokens=(ADMIN,), max_covariates=100)
    app = create_app(s, auth=resolve_auth(s)[0], lag_interval=None)
    with TestClient(app) as c:
        yield c


def test_api_refuses_hostile_definitions(api: TestClient) -> None:
    h = auth(ADMIN)
    r = api.post("/v1/experiments", json=base(variations=[f"v{i}" for i in range(10_000)]),
                 headers=h)
    assert r.status_code == 422 and r.json()["error"] == "invalid_definition"
    assert r.json()["detail"] == \
        "variations: 10000 variations; the limit is 64 (LIFTSTREAM_MAX_VARIATIONS)"
    # the API's own settings apply: 100 covariates allowed here, not 101
    r = api.post("/v1/experiments", json=base(covariates=[f"c{i}" for i in range(101)]),
                 headers=h)
    assert r.status_code == 422 and "the limit is 100 (LIFTSTREAM_MAX_COVARIATES)" in \
        r.json()["detail"]
    r = api.post("/v1/experiments", json=base(covariates=[f"c{i}" for i in range(100_000)]),
                 headers=h)
    assert r.status_code in (413, 422) and len(r.text) < 1000  # 413: a request-body limit
    for body in (base(id="x" * 1_000_000), base(covariates=["clk:pred"], model="tree"),
                 base(metrics=[{"name": "m", "event": "e", "aggregate": "sum"}] * 101)):
        r = api.post("/v1/experiments", json=body, headers=h)
        assert r.status_code in (413, 422) and len(r.json()["detail"]) <= 500, r.text
    assert api.post("/v1/experiments", json=base(covariates=["x"]), headers=h).status_code \
        == 201
    r = api.put("/v1/experiments/shop", json=base(variations=["a"] * 65), headers=h)
    assert r.status_code == 422 and "(LIFTSTREAM_MAX_VARIATIONS)" in r.json()["detail"]
    assert api.get("/v1/experiments", headers=auth(READ)).json()["experiments"][0][
        "covariates"] == ["x"]


def test_api_refuses_duplicate_keys_and_large_definitions(api: TestClient) -> None:
    h = auth(ADMIN) | {"Content-Type": "application/json"}
    dup = b'{"id": "shop", "variations": ["a", "b"], "id": "other", "metrics": []}'
    r = api.post("/v1/experiments", content=dup, headers=h)
    assert r.status_code == 422 and r.json()["error"] == "invalid_definition"
    assert r.json()["detail"] == "request body: duplicate key 'id': each key once"
    nested = (b'{"id": "shop", "variations": ["a", "b"], "metrics": [{"name": "m", '
              b'"event": "e", "aggregate": "sum", "aggregate": "count"}]}')
    r = api.put("/v1/experiments/shop", content=nested, headers=h)
    assert r.status_code == 422 and "duplicate key 'aggregate'" in r.json()["detail"]
    assert api.post("/v1/experiments", content=dup, headers={
        "Content-Type": "application/json"}).status_code == 401  # authentication first
    for n in (6000, 210_000):  # 1.2 MB, 42 MB
        big = json.dumps(base(covariates=["c" * 200] * n)).encode()
        r = api.post("/v1/experiments", content=big, headers=h)
        assert r.status_code in (413, 422), r.text  # 413: a request-body limit of the API
        assert len(r.content) < 1000
        if r.status_code == 422:
            assert r.json()["detail"] == ("request body: more than 1048576 bytes; the limit "
                                          "is 1048576 bytes (LIFTSTREAM_MAX_DEFINITION_BYTES)")
    assert api.get("/v1/experiments", headers=auth(READ)).json()["experiments"] == []


def test_stored_poison_definition_never_reaches_a_worker(redis_url: str,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    """A stored definition beyond what any process handles (here 256 metrics: more than the
    storage ceiling, e.g. written by hand) is skipped by ``Registry.list``, which workers
    read. (257 columns, the poison of issue 10, are within the ceilings since unit states
    pack u16 column counts: tests/integration/test_integrity.py counts them.)"""
    client = redis.Redis.from_url(redis_url)
    reg = Registry(client)
    good = parse_definition(base(id="good"))
    reg.create(good)
    poison = base(id="poison",
                  metrics=[{"name": f"m{i}", "event": "e", "aggregate": "sum"}
                           for i in range(256)])
    client.hset(REGISTRY_KEY, "poison", json.dumps(poison))  # as the old release stored it
    with caplog.at_level("WARNING", logger="state.registry"):
        assert reg.list() == [good]
    assert any("poison" in r.getMessage() and "256 metrics" in r.getMessage()
               for r in caplog.records)
    with pytest.raises(DefinitionError, match="LIFTSTREAM_MAX_METRICS"):
        reg.get("poison")
    client.close()


def _trained(n: int, slope: float) -> OnlineModel:
    m = OnlineModel("linear")
    for i in range(n):
        x = (i % 50) / 10.0 - 2.5
        m.learn({"x": x}, slope * x, f"u{i}")
    return m


def test_legacy_snapshot_ids_still_load(redis_url: str) -> None:
    """Snapshots published under the former ``<experiment>.<metric>`` id serve the new id
    ``<experiment>/<metric>``; the learner adopts them, numbering on, and learns examples
    that still carry the old id."""
    client = redis.Redis.from_url(redis_url)
    reg = ModelRegistry(client, KEY)
    legacy_model = _trained(300, 2.0)
    for _ in range(3):  # an old release published v1..v3 under the dotted id
        reg.publish("shop.rev", legacy_model, legacy_model.examples, "linear",
                    legacy_model.metrics(), {offset_key("tr", 0): 300})
    d = parse_definition(base(metrics=[{"name": "rev", "event": "buy", "aggregate": "sum"}],
                              covariates=["x"], model="linear"))
    Registry(client).create(d)
    new = model_id("shop", "rev")
    assert new == "shop/rev"
    assert reg.stored_id(new) == "shop.rev" and reg.latest_version(new) == 3
    loaded = reg.load(new)
    assert loaded is not None and loaded.header.model_id == "shop.rev"

    cache = ModelCache(reg)  # a worker of the new release
    cache.want({new})
    cache.refresh()
    y, version = cache.predict(new, {"x": 1.0})
    assert version == 3 and y == pytest.approx(legacy_model.predict({"x": 1.0}))

    learner = LearnerState(reg, "tr", definitions=lambda: {d.id: d})
    report = learner.load()
    assert report.models == 1 and set(learner.slots) == {new}
    assert reg.stored_id(new) == new and reg.latest_version(new) == 4  # adopted as v4
    assert learner.slots[new].floor == {0: 300} and learner.slots[new].version == 4
    assert learner.start_offsets([0]) == {0: 300}
    cache.refresh()
    assert cache.version(new) == 4
    before = learner.slots[new].model.examples
    old_example = msgspec.json.encode(TrainingExample("shop.rev", {"x": 0.5}, 1.0, "late"))
    assert learner.handle(0, 300, old_example)  # an example still carrying the old id
    assert learner.slots[new].model.examples == before + 1 and set(learner.slots) == {new}
    assert learner.checkpoint() == 1 and reg.latest_version(new) == 5
    restarted = LearnerState(reg, "tr", definitions=lambda: {d.id: d})
    assert restarted.load().models == 1 and restarted.slots[new].version == 5  # no re-adopt
    client.close()


def test_new_id_numbers_on_from_its_legacy_snapshots(redis_url: str) -> None:
    """A learner that did not adopt (it knew no definitions at start-up) publishes the new
    id's first snapshot after the legacy versions, so workers on the fallback switch to it,
    and it is not mistaken for another learner's publish."""
    client = redis.Redis.from_url(redis_url)
    reg = ModelRegistry(client, KEY)
    old = _trained(50, 1.0)
    for _ in range(2):
        reg.publish("shop.rev", old, old.examples, "linear", old.metrics(), {})
    cache = ModelCache(reg)
    cache.want({"shop/rev"})
    cache.refresh()
    assert cache.version("shop/rev") == 2
    learner = LearnerState(reg, "tr")
    assert learner.load().models == 1 and set(learner.slots) == {"shop.rev"}  # unresolved
    ex = msgspec.json.encode(TrainingExample("shop/rev", {"x": 1.0}, 2.0, "n1"))
    assert learner.handle(0, 0, ex)
    assert learner.checkpoint() == 1  # no LearnerConflict
    assert reg.own_latest_version("shop/rev") == 3 and reg.stored_id("shop/rev") == "shop/rev"
    cache.refresh()
    assert cache.version("shop/rev") == 3
    client.close()


def test_colliding_legacy_id_adopted_by_both_models(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    reg = ModelRegistry(client, KEY)
    m = _trained(100, 1.0)
    reg.publish("shop.v2.rev", m, m.examples, "linear", m.metrics(), {})
    a = parse_definition(base(id="shop.v2", metrics=[{"name": "rev", "event": "b",
                                                      "aggregate": "sum"}]))
    b = parse_definition(base(metrics=[{"name": "v2.rev", "event": "b", "aggregate": "sum"}]))
    learner = LearnerState(reg, "tr", definitions=lambda: {a.id: a, b.id: b})
    assert learner.load().models == 2
    assert set(learner.slots) == {"shop.v2/rev", "shop/v2.rev"}
    assert learner.slots["shop.v2/rev"].model is not learner.slots["shop/v2.rev"].model
    ex = msgspec.json.encode(TrainingExample("shop.v2/rev", {"x": 1.0}, 1.0, "e1"))
    learner.handle(0, 0, ex)  # a new-format example trains only its own model
    assert learner.slots["shop.v2/rev"].model.examples == 101
    assert learner.slots["shop/v2.rev"].model.examples == 100
    client.close()


def test_refused_snapshots_counted_in_metrics(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    reg = ModelRegistry(client, KEY)
    m = _trained(100, 1.0)
    mid = model_id("shop", "rev")
    v = reg.publish(mid, m, m.examples, "linear", m.metrics(), {})
    k = keys.model(mid)
    env = msgspec.msgpack.decode(client.hget(k, f"v{v}"))
    env["signature"] = ("0" if env["signature"][0] != "0" else "1") + env["signature"][1:]
    client.hset(k, f"v{v}", msgspec.msgpack.encode(env))
    cache = ModelCache(reg)
    cache.want({mid})
    cache.refresh()
    cache.refresh()  # refused once per version, not per refresh
    assert cache.version(mid) == 0
    LearnerState(reg, "tr").load()
    assert refusal_counts(client) == {mid: 2}
    s = replace(Settings(), redis_url=redis_url, api_read_tokens=(READ,))
    with TestClient(create_app(s, auth=resolve_auth(s)[0], lag_interval=None)) as api:
        text = api.get("/metrics", headers=auth(READ)).text
    assert 'liftstream_model_snapshots_refused_total{model="shop/rev"} 2.0' in text
    client.close()
