"""The experiment registry and ``liftstream experiments`` against a real Redis / Redis Cluster."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster

from state.definition import DefinitionError, ExperimentDef, parse_definition
from state.registry import REGISTRY_KEY, VERSION_KEY, ExperimentExists, Registry
from tests.support.data import HILL_YAML as BASE_YAML
from workers.cli.experiments import add_experiments_parser

HILL_YAML = BASE_YAML + "start: 2024-01-01T00:00:00Z\n"


def definition(exp_id: str = "exp", **extra: Any) -> ExperimentDef:
    return parse_definition({"id": exp_id, "variations": ["a", "b"],
                             "metrics": [{"name": "m", "event": "e", "aggregate": "sum"}],
                             **extra})


@pytest.fixture(params=[False, True], ids=["bytes", "decoded"])
def client(redis_url: str, request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, decode_responses=request.param)
    yield c
    c.close()


def exercise(reg: Registry) -> None:
    assert reg.version() == 0
    assert reg.list() == [] and reg.get("nope") is None

    b, a = definition("b-exp"), definition("a-exp", weights=[1, 3])
    reg.create(b)
    reg.create(a)
    assert reg.version() == 2
    assert reg.get("a-exp") == a and reg.get("b-exp") == b
    assert reg.list() == [a, b]

    with pytest.raises(ExperimentExists, match="a-exp"):
        reg.create(definition("a-exp", model="tree"))
    assert reg.get("a-exp") == a and reg.version() == 2

    with pytest.raises(DefinitionError, match="model: cannot change"):
        reg.create(definition("a-exp", model="tree", weights=[1, 3]), replace=True)
    a2 = definition("a-exp", weights=[1, 3], alpha=0.01)
    reg.create(a2, replace=True)  # analysis settings may change, the layout may not
    assert reg.get("a-exp") == a2 and reg.version() == 3

    stopped = reg.stop("b-exp")
    assert stopped.status == "stopped" and reg.get("b-exp") == stopped
    assert reg.version() == 4
    with pytest.raises(KeyError):
        reg.stop("missing")
    assert reg.version() == 4


def test_registry_on_redis(client: redis.Redis) -> None:
    exercise(Registry(client))


def test_registry_on_redis_cluster(redis_cluster_url: str) -> None:
    c = redis.cluster.RedisCluster.from_url(redis_cluster_url)
    try:
        exercise(Registry(c))
    finally:
        c.close()


def test_invalid_stored_entries_are_skipped_by_list(client: redis.Redis) -> None:
    reg = Registry(client)
    good = definition("good")
    reg.create(good)
    client.hset(REGISTRY_KEY, "broken", b"{not json")
    client.hset(REGISTRY_KEY, "wrong", json.dumps({"id": "wrong", "variations": ["a"]}))
    assert reg.list() == [good]
    with pytest.raises(DefinitionError):
        reg.get("broken")
    assert int(client.get(VERSION_KEY) or 0) == 1


# ----------------------------------------------------------------------------- CLI


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="liftstream")
    sub = parser.add_subparsers(dest="command", required=True)
    add_experiments_parser(sub)
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


@pytest.fixture
def cli_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("LIFTSTREAM_REDIS_URL", redis_url)
    monkeypatch.delenv("LIFTSTREAM_REDIS_CLUSTER", raising=False)
    return redis_url


def test_cli_create_list_show_stop(cli_env: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "hill.yaml"
    path.write_text(HILL_YAML)
    assert run(["experiments", "create", str(path)]) == 0
    assert "created experiment hill" in capsys.readouterr().out

    assert run(["experiments", "create", str(path)]) == 1
    assert "already exists (use --replace" in capsys.readouterr().err
    assert run(["experiments", "create", str(path), "--replace"]) == 0
    capsys.readouterr()

    jpath = tmp_path / "other.json"
    jpath.write_text(json.dumps({"id": "cats", "variations": ["gate_30", "gate_40"],
                                 "metrics": [{"name": "retention_1", "event": "day1",
                                              "aggregate": "binary"}]}))
    assert run(["experiments", "create", str(jpath)]) == 0
    capsys.readouterr()

    assert run(["experiments", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["ID", "STATUS", "VARIATIONS", "METRICS"]
    assert out[1].startswith("cats") and "running" in out[1] and "retention_1" in out[1]
    assert out[2].startswith("hill") and "No E-Mail, Mens E-Mail, Womens E-Mail" in out[2]
    assert "2024-01-01 00:00" in out[2]

    assert run(["experiments", "list", "--format", "json"]) == 0
    assert [d["id"] for d in json.loads(capsys.readouterr().out)] == ["cats", "hill"]

    assert run(["experiments", "show", "hill"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == "hill" and shown["metrics"][0]["cap"] == 500.0
    assert parse_definition(shown) == ExperimentDef.from_json(json.dumps(shown).encode())

    assert run(["experiments", "stop", "hill"]) == 0
    assert "stopped experiment hill" in capsys.readouterr().out
    assert run(["experiments", "show", "hill"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "stopped"

    assert run(["experiments", "show", "nope"]) == 1
    assert "liftstream experiments: error: no experiment 'nope'" in capsys.readouterr().err
    assert run(["experiments", "stop", "nope"]) == 1
    assert "no experiment 'nope'" in capsys.readouterr().err


def test_cli_invalid_definition_exits_2(cli_env: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(HILL_YAML.replace("aggregate: binary", "aggregate: mean"))
    assert run(["experiments", "create", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("liftstream experiments: error: metrics[1].aggregate: must be one of "
                   "binary, count, sum, quantile, got 'mean'")
    assert run(["experiments", "create", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert run(["experiments", "list"]) == 0
    assert "no experiments" in capsys.readouterr().out


def test_cli_stdin(cli_env: str, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(HILL_YAML))
    assert run(["experiments", "create", "-"]) == 0
    assert "created experiment hill" in capsys.readouterr().out


def test_cli_bad_settings_and_unreachable_redis(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LIFTSTREAM_REDIS_URLL", "redis://x")
    assert run(["experiments", "list"]) == 2
    assert "LIFTSTREAM_REDIS_URLL" in capsys.readouterr().err
    monkeypatch.delenv("LIFTSTREAM_REDIS_URLL")
    monkeypatch.setenv("LIFTSTREAM_REDIS_URL", "redis://:pw@127.0.0.1:1/0")
    assert run(["experiments", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("liftstream experiments: error: ") and "pw@" not in err


def test_cli_on_redis_cluster(redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch,
                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LIFTSTREAM_REDIS_URL", redis_cluster_url)
    monkeypatch.setenv("LIFTSTREAM_REDIS_CLUSTER", "true")
    path = tmp_path / "hill.yaml"
    path.write_text(HILL_YAML)
    assert run(["experiments", "create", str(path)]) == 0
    assert run(["experiments", "stop", "hill"]) == 0
    capsys.readouterr()
    assert run(["experiments", "show", "hill"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "stopped"
