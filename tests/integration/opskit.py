"""Helpers for the operations-fault tests (broker reset, refused side outputs, Redis full):
a click-count experiment whose exact truth is known, the real CLI, /metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from state.definition import parse_definition
from state.registry import Registry
from state.results import experiment_matrices
from state.store import Client
from stream.messages import Event, Exposure, encode_event, encode_exposure
from tests.support.workers import WorkerThread
from workers.api.app import create_app, resolve_auth
from workers.settings import Settings

from .streaming import settings_env

Message = tuple[str, bytes, bytes]
T0 = 1_750_000_000.0
READ = "ops-read-token"


def register_clicks(client: Client, experiment: str) -> None:
    """Two arms and one count metric ``clicks`` (event ``click``)."""
    Registry(client).create(parse_definition({
        "id": experiment, "variations": ["control", "treatment"],
        "metrics": [{"name": "clicks", "event": "click", "aggregate": "count"}]}))


@dataclass(frozen=True)
class Traffic:
    messages: list[Message]
    units: int
    clicks: int  # distinct click events (each has an id; some are published twice)
    invalid: int = 0  # malformed messages mixed in (dead letters)


def click_traffic(experiment: str, tag: str, units: int, seed: int, invalid: int = 0,
                  duplicate: float = 0.05) -> Traffic:
    """``units`` exposures, Poisson(2) clicks each (ids ``<unit>:<k>``), ``duplicate`` of the
    clicks published twice, ``invalid`` malformed messages; seeded, shuffled."""
    rng = np.random.default_rng(seed)
    msgs: list[Message] = []
    clicks = 0
    for i in range(units):
        u = f"{tag}-{i}"
        key = u.encode()
        ts = T0 + i * 1e-3
        msgs.append(("exposures", key, encode_exposure(
            Exposure(experiment, u, "control" if rng.random() < 0.5 else "treatment", ts, {}))))
        for k in range(int(rng.poisson(2.0))):
            body = encode_event(Event(u, "click", ts + 1 + k, 1.0, None, f"{u}:{k}"))
            msgs.append(("events", key, body))
            clicks += 1
            if rng.random() < duplicate:
                msgs.append(("events", key, body))
    for j in range(invalid):
        msgs.append(("events", f"{tag}-bad{j}".encode(), b'{"unit": 5, "event": "click"}'))
    order = rng.permutation(len(msgs))
    return Traffic([msgs[k] for k in order], units, clicks, invalid)


def counted(client: Client, experiment: str) -> tuple[int, int]:
    """Units and clicks in the experiment's moment matrices (summed over arms)."""
    d = Registry(client).get(experiment)
    assert d is not None
    arms = experiment_matrices(client, d)
    units = sum(m.n for m in arms.values())
    clicks = round(sum(m.n * float(m.mean[m.index("clicks")]) for m in arms.values() if m.n))
    return int(units), clicks


def wait_until(what: str, cond: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def liftstream(s: Settings, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """The real ``liftstream`` command, configured as ``s``."""
    exe = Path(sys.executable).with_name("liftstream")
    return subprocess.run([str(exe), *args], env=settings_env(s), capture_output=True,
                          text=True, timeout=timeout)


def results_json(s: Settings, experiment: str) -> dict[str, Any]:
    r = liftstream(s, "results", experiment, "--format", "json")
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def metrics_text(s: Settings) -> str:
    """``GET /metrics`` of the real API app (lag monitor off), read token."""
    s = replace(s, api_read_tokens=(READ,))
    app = create_app(s, auth=resolve_auth(s)[0], lag_interval=None)
    with TestClient(app) as c:
        r = c.get("/metrics", headers={"Authorization": f"Bearer {READ}"})
        assert r.status_code == 200, r.text
        return r.text


def metric_value(text: str, line_prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class Worker(WorkerThread):
    """An :class:`IngestWorker` in a thread; ``error`` keeps what it raised (it must not)."""

    strict = True


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 30.0
               ) -> list[dict[str, Any]]:
    """JSON records of a one-partition topic, reading until ``expected`` arrived (or
    ``timeout``)."""
    from stream.kafka import TopicPartition, make_consumer

    consumer = make_consumer(bootstrap, None)
    try:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek_to_beginning()
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                out.extend(json.loads(r.value) for r in records)
        return out
    finally:
        consumer.close()


class Refused(Exception):
    """What the simulated broker answers for a refused record."""


class _RefusedFuture:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def get(self, timeout: float | None = None) -> Any:
        raise self.exc


class RefusingProducer:
    """A real producer whose records to ``topic`` the "broker" refuses while ``refusing`` is
    set: ``send`` returns a future that fails, as kafka-python's does on a broker error."""

    def __init__(self, real: Any, topic: str) -> None:
        self.real = real
        self.topic = topic
        self.refusing = threading.Event()
        self.refused = 0

    def send(self, topic: str, value: Any = None, **kw: Any) -> Any:
        if topic == self.topic and self.refusing.is_set():
            self.refused += 1
            return _RefusedFuture(Refused(f"{topic}: record refused (simulated broker)"))
        return self.real.send(topic, value, **kw)

    def flush(self, timeout: float | None = None) -> None:
        self.real.flush(timeout=timeout)

    def close(self, timeout: float | None = None) -> None:
        self.real.close(timeout=timeout)
