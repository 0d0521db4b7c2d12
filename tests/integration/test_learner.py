"""The online learner against a real broker and Redis (issue 4).

* tampered snapshots: the ModelCache an ingest worker uses refuses a snapshot whose payload,
  signature or header was modified in Redis, counts it, and keeps the last good model; a
  restarting learner falls back to the last verifiable version (whose offsets match it);
* crash/restart: a learner crashed between snapshots (in-process at exact points, and a
  ``liftstream learner`` process SIGKILLed) resumes from the offsets stored in its snapshots;
  the final model has learned every published example exactly once;
* end to end: ingest worker + learner with ``model: linear`` and an outcome window: ŷ frozen
  at exposure with model versions > 0, training examples from matured units, and cupac in the
  results with a positive variance reduction and the prediction–outcome correlation.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from state import keys
from state.definition import parse_definition
from state.model_cache import ModelCache
from state.models import ModelRegistry
from state.registry import Registry
from state.results import experiment_document
from stream.batch import TrainingExample
from stream.kafka import ensure_topics, log_ranges, make_producer
from stream.messages import Event, Exposure, encode_event, encode_exposure
from workers.cli.models import model_rows, render_models
from workers.dev.embedded import Broker
from workers.learner.checkpoint import LearnerState, offset_key
from workers.learner.loop import Learner
from workers.learner.online_model import OnlineModel
from workers.settings import Settings

from .conftest import unique
from .streaming import (
    create_topics,
    publish,
    read_unit_states,
    redis_client,
    settings_env,
    stop_processes,
    streaming_settings,
    wait_for_messages,
    worker_thread,
)

KEY = "test-hmac-key-of-at-least-32-bytes"


def learner_settings(bootstrap: str, redis_url: str, prefix: str, partitions: int = 4,
                     **kw: Any) -> Settings:
    return replace(streaming_settings(bootstrap, redis_url, prefix, partitions),
                   model_hmac_key=KEY, topic_training=f"{prefix}.training", **kw)


@contextmanager
def learner_thread(s: Settings, learner: Learner | None = None) -> Iterator[Learner]:
    lr = learner or Learner(s)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            lr.run()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    try:
        yield lr
    finally:
        lr.stop_event.set()
        t.join(timeout=30)
    if errors:
        raise errors[0]


def publish_examples(s: Settings, examples: list[TrainingExample], partitions: int
                     ) -> dict[int, int]:
    """Round-robin over partitions; returns the record count per partition."""
    ensure_topics(s.kafka_bootstrap, {s.topic_training: partitions})
    producer = make_producer(s.kafka_bootstrap, linger_ms=20)
    enc = msgspec.json.Encoder()
    counts: Counter[int] = Counter()
    for i, ex in enumerate(examples):
        producer.send(s.topic_training, enc.encode(ex), partition=i % partitions)
        counts[i % partitions] += 1
    producer.flush()
    producer.close()
    return dict(counts)


def examples_stream(n: int, seed: int, ids: bool = False) -> list[TrainingExample]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2))
    y = 5.0 + 2.0 * x[:, 0] - x[:, 1] + rng.standard_normal(n)
    models = np.where(rng.random(n) < 0.6, "hist.a", "hist.b")
    return [TrainingExample(str(m), {"x1": float(a), "x2": float(b)}, float(t),
                            f"u{i}" if ids else None)
            for i, (m, (a, b), t) in enumerate(zip(models, x, y, strict=True))]


def registry_examples(s: Settings) -> dict[str, int]:
    client = redis_client(s)
    try:
        return {h.model_id: h.examples
                for h in ModelRegistry(client, KEY).headers()}
    finally:
        client.close()


def learned_offsets(s: Settings) -> dict[str, int]:
    """Per training topic-partition, the furthest offset any stored snapshot learned up to."""
    client = redis_client(s)
    try:
        out: dict[str, int] = {}
        for h in ModelRegistry(client, KEY).headers():
            for k, v in h.offsets.items():
                out[k] = max(out.get(k, 0), v)
        return out
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------


def _tamper(client: Any, model_id: str, version: int, how: str) -> None:
    k = keys.model(model_id)
    env = msgspec.msgpack.decode(client.hget(k, f"v{version}"))
    if how == "payload":
        p = bytearray(env["payload"])
        p[len(p) // 2] ^= 0x01
        env["payload"] = bytes(p)
    elif how == "signature":
        env["signature"] = ("0" if env["signature"][0] != "0" else "1") + env["signature"][1:]
    elif how == "header":
        env["header"]["examples"] += 1000
    client.hset(k, f"v{version}", msgspec.msgpack.encode(env))


@pytest.mark.parametrize("how", ["payload", "signature", "header"])
def test_tampered_snapshot_is_refused_and_last_good_kept(redis_url: str, how: str,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    s = replace(Settings(), redis_url=redis_url, model_hmac_key=KEY, topic_training="tr")
    client = redis_client(s)
    reg = ModelRegistry(client, KEY)
    rows = [{"x1": float(v), "x2": 1.0} for v in np.linspace(-2, 2, 400)]
    model = OnlineModel("linear")
    for r in rows[:200]:
        model.learn(r, 3.0 * r["x1"])
    v1 = reg.publish("exp.m", model, model.examples, "linear", model.metrics(),
                     {offset_key("tr", 0): 200})
    cache = ModelCache(reg)
    cache.want({"exp.m"})
    cache.refresh()
    good = cache.predict("exp.m", rows[0])
    assert good[1] == v1 == 1 and good[0] != 0.0
    for r in rows[200:]:
        model.learn(r, -50.0 * r["x1"])  # a very different model
    v2 = reg.publish("exp.m", model, model.examples, "linear", model.metrics(),
                     {offset_key("tr", 0): 400})
    _tamper(client, "exp.m", v2, how)
    with caplog.at_level(logging.ERROR, logger="liftstream.models"):
        cache.refresh()
        cache.refresh()  # refused once, not retried (nor re-logged) on every refresh
    assert cache.refused == {"exp.m": v2}
    assert sum("refused model snapshot" in r.getMessage() for r in caplog.records) == 1
    assert cache.version("exp.m") == v1
    assert cache.predict("exp.m", rows[0]) == good  # the last good model stays in use
    rows_out = {r["model"]: r for r in model_rows(client, KEY)}
    assert rows_out["exp.m"]["signature"].startswith("REFUSED")

    # a restarting learner falls back to v1: its state and its offsets belong together
    state = LearnerState(reg, "tr")
    report = state.load()
    assert report.refused == {"exp.m": 1} and report.models == 1
    slot = state.slots["exp.m"]
    assert slot.model.examples == 200 and slot.floor == {0: 200} and slot.version == v2
    assert state.start_offsets([0]) == {0: 200}
    # it publishes the next version on top; workers take it (only v2 was refused)
    state.handle(0, 200, msgspec.json.encode(TrainingExample("exp.m", rows[0], 1.0)))
    assert state.checkpoint() == 1 and reg.latest_version("exp.m") == 3
    cache.refresh()
    assert cache.version("exp.m") == 3
    client.close()


def test_learner_crashed_between_snapshots_learns_every_example_once(
        broker: Broker, redis_url: str) -> None:
    """In-process crashes at exact points with learned-but-unsaved examples in memory."""
    s = learner_settings(broker.bootstrap, redis_url, unique("lc"),
                         learner_snapshot_examples=700, learner_snapshot_seconds=3600.0,
                         batch_size=300)
    examples = examples_stream(5000, seed=1)
    per_partition = publish_examples(s, examples, partitions=2)
    want = Counter(ex.model for ex in examples)
    crashes: list[dict[str, Any]] = []

    class Crash(Exception):
        pass

    def crashing(handled: int | None = None, publishes: int | None = None) -> Learner:
        """A learner that dies after ``handled`` records or at its ``publishes``-th publish."""
        lr = Learner(s)
        handle, publish = lr.state.handle, lr.state.publish
        calls = Counter[str]()

        def die() -> None:
            crashes.append({"unsaved": sum(sl.dirty for sl in lr.state.slots.values()),
                            "already_learned": lr.state.stats["already_learned"],
                            "start": dict(lr.start_offsets)})
            raise Crash

        def handle_or_die(partition: int, offset: int, value: bytes | None) -> bool:
            calls["handle"] += 1
            if handled is not None and calls["handle"] > handled:
                die()
            return handle(partition, offset, value)

        def publish_or_die(model_id: str, slot: Any) -> int:
            calls["publish"] += 1
            if publishes is not None and calls["publish"] == publishes:
                die()
            return publish(model_id, slot)

        lr.state.handle = handle_or_die  # type: ignore[method-assign]
        lr.state.publish = publish_or_die  # type: ignore[method-assign]
        return lr

    # 1: 534 examples learned after the snapshot at 700; 2: dies half-way through a checkpoint
    # (hist.a saved, hist.b not); 3: re-reads what hist.a has, learns it for hist.b only
    plans: list[dict[str, int]] = [{"handled": 1234}, {"publishes": 2}, {"handled": 1500}]
    for k, plan in enumerate(plans):
        with pytest.raises(Crash), learner_thread(s, crashing(**plan)):
            deadline = time.monotonic() + 60
            while len(crashes) <= k:  # the thread raises Crash when the context exits
                assert time.monotonic() < deadline
                time.sleep(0.01)
    assert all(c["unsaved"] > 0 for c in crashes), crashes
    # restarts seek to the stored offsets (None: no record of that partition was handled yet)
    assert all(any(v for v in c["start"].values()) for c in crashes[1:]), crashes
    assert crashes[2]["already_learned"] > 0  # re-read after the split checkpoint, skipped

    with learner_thread(s) as lr:
        assert lr.started.wait(30)
        deadline = time.monotonic() + 60
        while any(lr.state.processed.get(p, 0) < n for p, n in per_partition.items()):
            assert time.monotonic() < deadline, lr.state.processed
            time.sleep(0.05)
    assert registry_examples(s) == dict(want)


def test_learner_process_sigkilled_resumes_exactly_once(broker: Broker, redis_url: str,
                                                        tmp_path: Path) -> None:
    s = learner_settings(broker.bootstrap, redis_url, unique("lk"),
                         learner_snapshot_examples=1000, learner_snapshot_seconds=0.5,
                         batch_size=200)
    examples = examples_stream(20_000, seed=2)
    publish_examples(s, examples, partitions=3)
    want = dict(Counter(ex.model for ex in examples))
    exe = Path(sys.executable).with_name("liftstream")
    client = redis_client(s)
    reg = ModelRegistry(client, KEY)

    def start(name: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / f"{name}.log", "wb") as log:
            return subprocess.Popen([str(exe), "learner", "--name", name], env=settings_env(s),
                                    stdout=log, stderr=subprocess.STDOUT)

    first = start("l1")
    try:
        deadline = time.monotonic() + 60
        while reg.latest_version("hist.a") < 3:
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        stop_processes([first])
    at_kill = registry_examples(s)
    assert sum(at_kill.values()) < len(examples)  # killed part-way through
    second = start("l2")
    try:
        deadline = time.monotonic() + 90
        while registry_examples(s) != want:
            got = registry_examples(s)
            assert all(got.get(m, 0) <= n for m, n in want.items()), ("duplicates", got)
            assert second.poll() is None and time.monotonic() < deadline, got
            time.sleep(0.1)
        # quiescent: the snapshots' offsets reached every partition's high watermark, so
        # nothing more can arrive: no example was learned twice
        ends = log_ranges(s.kafka_bootstrap, [(s.topic_training, p) for p in range(3)])
        at_end = {offset_key(s.topic_training, p): ends[s.topic_training, p].end
                  for p in range(3)}
        while learned_offsets(s) != at_end:
            assert second.poll() is None and time.monotonic() < deadline, learned_offsets(s)
            time.sleep(0.1)
        assert registry_examples(s) == want
    finally:
        stop_processes([second], sig=signal.SIGTERM)
    assert second.returncode == 0, (tmp_path / "l2.log").read_text()[-2000:]
    client.close()


# ---------------------------------------------------------------------------------------------

T0 = 1_760_000_000.0


def _units(first: int, n: int, rng: np.random.Generator) -> list[tuple[str, bytes, bytes]]:
    """Units exposed every 20 ms of event time, one purchase each ~1 s later; y ≈ 20 + 8x."""
    msgs: list[tuple[str, bytes, bytes]] = []
    for i in range(first, first + n):
        unit = f"u{i}"
        x = float(rng.standard_normal())
        variation = "treatment" if rng.random() < 0.5 else "control"
        ts = T0 + 0.02 * i
        value = max(0.0, 20.0 + 8.0 * x + 4.0 * float(rng.standard_normal())
                    + (1.0 if variation == "treatment" else 0.0))
        msgs.append(("exposures", unit.encode(),
                     encode_exposure(Exposure("lrn", unit, variation, ts, {"x": x}))))
        msgs.append(("events", unit.encode(),
                     encode_event(Event(unit, "purchase", ts + 1.0, value, "lrn", f"{unit}:p"))))
    return msgs


def test_worker_and_learner_end_to_end(broker: Broker, redis_url: str) -> None:
    s = learner_settings(broker.bootstrap, redis_url, unique("e2e"), partitions=2,
                         learner_snapshot_examples=300, learner_snapshot_seconds=0.5)
    create_topics(s)
    ensure_topics(s.kafka_bootstrap, {s.topic_training: 1})
    client = redis_client(s)
    d = parse_definition({
        "id": "lrn", "variations": ["control", "treatment"],
        "metrics": [{"name": "revenue", "event": "purchase", "aggregate": "sum"}],
        "covariates": ["x"], "model": "linear", "outcome_window_seconds": 5.0})
    Registry(client).create(d)
    rng = np.random.default_rng(5)
    first, second = _units(0, 2000, rng), _units(2000, 4000, rng)
    model_id = "lrn/revenue"  # state.naming.model_id("lrn", "revenue")
    with worker_thread(s) as worker, learner_thread(s) as learner:
        # maturity is judged by event time of later batches of the partition (no wall clock),
        # so the first phase goes in chunks: each chunk's batches mature earlier chunks' units
        for k in range(0, len(first), 800):
            publish(s, first[k:k + 800])
            wait_for_messages(client, k + len(first[k:k + 800]))
        deadline = time.monotonic() + 60
        while worker.models is None or worker.models.version(model_id) == 0:
            assert time.monotonic() < deadline, ("no model reached the worker",
                                                 dict(learner.state.stats),
                                                 learner.start_offsets)
            time.sleep(0.1)
        publish(s, second)
        wait_for_messages(client, len(first) + len(second))
        assert learner.state.stats["learned"] > 1500  # matured units of the first phase
    states = read_unit_states(client, "lrn", s.partitions, s.unit_buckets)
    assert len(states) == 6000
    late = [st for u, st in states.items() if int(u[1:]) >= 2000]
    assert all(st.versions and st.versions[0] > 0 for st in late)  # frozen with a model
    doc = experiment_document(client, d)
    comp = doc["slices"][0]["metrics"][0]["comparisons"][0]
    cupac = comp["estimators"]["cupac"]
    # a third of the units were exposed before any model existed and carry ŷ = 0 (version
    # 0), which dilutes the correlation; the rest carry a prediction of a model with R² ≈ 0.8
    assert cupac["effect"] is not None and cupac["variance_reduction"] > 0.05, cupac
    assert comp["diagnostics"]["prediction_outcome_correlation"] > 0.2
    rows = model_rows(client, KEY)
    (row,) = [r for r in rows if r["model"] == model_id]
    assert row["signature"] == "ok" and row["kind"] == "linear" and row["examples"] > 1500
    assert row["results"][0]["cupac_variance_reduction"] == cupac["variance_reduction"]
    assert model_id in render_models(rows)
    print("\n" + render_models(rows))
    client.close()
