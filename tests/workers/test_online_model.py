"""OnlineModel (River pipelines), the learner's bookkeeping, and ModelCache never blocking."""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from state.definition import parse_definition
from state.model_cache import ModelCache
from state.models import LoadedModel, SnapshotHeader
from workers.learner.checkpoint import offset_key, parse_offset_key, resolve_kind
from workers.learner.online_model import KINDS, OnlineModel, Progressive, RecentIds
from workers.settings import Settings, SettingsError, load_settings


def _stream(n: int, seed: int = 0) -> tuple[list[dict[str, float]], np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2))
    y = 30.0 + 12.0 * x[:, 0] - 5.0 * x[:, 1] + 10.0 * rng.standard_normal(n)
    return [{"a": float(a), "b": float(b)} for a, b in x], y


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_learns_predicts_and_pickles(kind: str) -> None:
    rows, y = _stream(1500)
    target = (y > 30.0).astype(float) if kind == "logistic" else y
    m = OnlineModel(kind, seed=1)
    assert m.predict(rows[0]) == 0.0  # before the first example
    for r, t in zip(rows, target.tolist(), strict=True):
        assert m.learn(r, t)
    p = np.array([m.predict(r) for r in rows[-300:]])
    corr = np.corrcoef(p, target[-300:])[0, 1]
    assert corr > 0.5, (kind, corr)
    if kind == "logistic":
        assert np.all((p >= 0) & (p <= 1))
    copy = pickle.loads(pickle.dumps(m))
    assert [copy.predict(r) for r in rows[:20]] == [m.predict(r) for r in rows[:20]]
    q = m.metrics()
    assert q["examples"] == 1500 and "mae" in q and "r2" in q and "r2_recent" in q
    assert ("log_loss" in q) == (kind == "logistic")
    assert q["r2"] > 0.15


def test_bad_input_never_raises() -> None:
    m = OnlineModel("linear")
    assert not m.learn({"a": 1.0}, float("nan")) and m.invalid == 1
    assert m.learn({"a": float("inf"), "b": "x", "c": 2.0}, 1.0)  # type: ignore[dict-item]
    assert np.isfinite(m.predict({"a": float("nan")}))
    with pytest.raises(ValueError):
        OnlineModel("svm")


def test_duplicate_ids_are_learned_once_and_window_survives_pickle() -> None:
    m = OnlineModel("linear", dedupe_window=3)
    assert m.learn({"a": 1.0}, 1.0, "e:1") and m.learn({"a": 2.0}, 2.0, "e:2")
    assert not m.learn({"a": 1.0}, 1.0, "e:1")
    m = pickle.loads(pickle.dumps(m))
    assert not m.learn({"a": 2.0}, 2.0, "e:2")
    assert m.learn({"a": 3.0}, 3.0, "e:3") and m.learn({"a": 4.0}, 4.0, "e:4")
    assert m.learn({"a": 1.0}, 1.0, "e:1")  # fell out of the 3-id window
    assert (m.examples, m.duplicates) == (5, 2)
    ids = RecentIds(2)
    assert ids.add("x") and "x" in ids and not ids.add("x") and len(ids) == 1


def test_progressive_metrics() -> None:
    q = Progressive(binary=False)
    for y in (1.0, 2.0, 3.0, 4.0):
        q.update(y, y)  # perfect predictions
    d = q.as_dict()
    assert d["r2"] == pytest.approx(1.0) and d["mae"] == 0.0
    b = Progressive(binary=True)
    b.update(1.0, 0.5)
    b.update(0.0, 0.5)
    assert b.as_dict()["log_loss"] == pytest.approx(np.log(2.0))


def test_resolve_kind_and_offset_keys() -> None:
    d = parse_definition({"id": "exp.v2", "variations": ["a", "b"], "model": "tree",
                          "covariates": ["x"],
                          "metrics": [{"name": "rev.net", "event": "buy", "aggregate": "sum"}]})
    defs = {d.id: d}
    assert resolve_kind("exp.v2.rev.net", defs) == "tree"
    assert resolve_kind("exp.v2.other", defs) == "linear"
    assert resolve_kind("history.revenue", defs) == "linear"
    assert parse_offset_key(offset_key("my.topic-1", 3)) == ("my.topic-1", 3)
    assert parse_offset_key("nonsense") is None


def test_learner_settings() -> None:
    s = load_settings({"LIFTSTREAM_LEARNER_SNAPSHOT_EXAMPLES": "100",
                       "LIFTSTREAM_LEARNER_SNAPSHOT_SECONDS": "0.5"})
    assert (s.learner_snapshot_examples, s.learner_snapshot_seconds) == (100, 0.5)
    assert Settings().learner_dedupe_window == 50_000
    for var, bad in (("LIFTSTREAM_LEARNER_SNAPSHOT_EXAMPLES", "0"),
                     ("LIFTSTREAM_LEARNER_SNAPSHOT_SECONDS", "-1"),
                     ("LIFTSTREAM_LEARNER_DEDUPE_WINDOW", "many")):
        with pytest.raises(SettingsError, match=var):
            load_settings({var: bad})


class _SlowRegistry:
    """A registry whose load blocks until released: a refresh stuck on a slow Redis."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.latest = 1
        self.release = threading.Event()
        self.loading = threading.Event()

    def latest_version(self, model_id: str) -> int:
        return self.latest

    def load(self, model_id: str, version: int | None = None) -> LoadedModel:
        if version is not None and version > 1:
            self.loading.set()
            self.release.wait(10.0)
        header = SnapshotHeader(model_id, version or 1, 0, 0.0)
        return LoadedModel(header, self.model)


class _Constant:
    def __init__(self, value: float) -> None:
        self.value = value

    def predict(self, features: Mapping[str, float]) -> float:
        return self.value


def test_predict_never_waits_for_a_refresh() -> None:
    """The hot path reads a dict; loading (and verifying) runs on the cache's thread."""
    reg = _SlowRegistry(_Constant(7.0))
    cache = ModelCache(reg, refresh_seconds=0.01)  # type: ignore[arg-type]
    cache.want({"m"})
    cache.refresh()
    assert cache.predict("m", {}) == (7.0, 1)
    reg.model = _Constant(9.0)
    reg.latest = 2
    cache.start()
    try:
        assert reg.loading.wait(5.0)  # the background refresh is now blocked in load()
        t0 = time.perf_counter()
        for _ in range(1000):
            assert cache.predict("m", {}) == (7.0, 1)  # the last good model, immediately
        assert time.perf_counter() - t0 < 0.5
        reg.release.set()
        deadline = time.monotonic() + 5.0
        while cache.version("m") != 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cache.predict("m", {}) == (9.0, 2)
    finally:
        reg.release.set()
        cache.stop()
