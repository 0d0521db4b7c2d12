"""Helpers for the API, alerter and dashboard tests: synthetic experiments, direct ingest, servers.

:class:`DirectIngest` runs the real batch path (``BatchBuilder`` → ``PartitionStore.apply``, the
same Lua script the workers use) without Kafka, so tests can put exactly the data they want
into Redis in milliseconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zlib
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from state.layout import ExperimentLayout
from state.registry import Registry
from state.store import Client, PartitionStore
from stream.batch import BatchBuilder, RawRecord, Topics
from stream.messages import Event, Exposure, encode_event, encode_exposure
from workers.dev.embedded import free_port
from workers.settings import Settings, to_env

Message = tuple[str, bytes, bytes]  # kind ("exposures" | "events"), key, value
T0 = 1_760_000_000.0


def experiment_definition(experiment: str, variations: Sequence[str] = ("control", "treatment"),
                          weights: Sequence[float] | None = None, **extra: Any) -> dict[str, Any]:
    """Revenue (sum, primary) and conversion (binary, guardrail), covariate ``x``, one
    in-experiment candidate ``pageviews``."""
    d: dict[str, Any] = {
        "id": experiment, "variations": list(variations),
        "metrics": [{"name": "revenue", "event": "purchase", "aggregate": "sum"},
                    {"name": "converted", "event": "signup", "aggregate": "binary"}],
        "covariates": ["x"],
        "in_experiment": [{"name": "pageviews", "event": "pageview", "aggregate": "count"}],
        "primary_metric": "revenue", "guardrails": ["converted"],
    }
    if weights is not None:
        d["weights"] = list(weights)
    d.update(extra)
    return d


@dataclass(frozen=True)
class Population:
    """How units of one experiment are drawn."""

    experiment: str
    variations: tuple[str, ...] = ("control", "treatment")
    assign: tuple[float, ...] = (0.5, 0.5)  # actual assignment probabilities
    revenue_lift: tuple[float, ...] = (0.0, 0.0)  # additive, per variation
    signup_lift: tuple[float, ...] = (0.0, 0.0)  # additive on the probability
    seed: int = 0
    platforms: tuple[str, ...] = ()  # attribute ``platform`` of unit i: platforms[i % k]


def experiment_messages(pop: Population, first: int, count: int, t0: float = T0
                        ) -> list[Message]:
    """Units ``first .. first+count-1``: an exposure (covariate x) then their events.

    Revenue = 10 + 4x + lift + N(0, 3²) (strongly predicted by x, so CUPED shrinks the CI);
    signup with probability 0.3 + lift; Poisson(3) pageviews, unaffected by treatment.
    """
    rng = np.random.default_rng([pop.seed, first])
    v = rng.choice(len(pop.variations), size=count, p=np.asarray(pop.assign))
    x = rng.normal(size=count)
    revenue = 10.0 + 4.0 * x + np.asarray(pop.revenue_lift)[v] + rng.normal(0.0, 3.0, count)
    signed = rng.random(count) < 0.3 + np.asarray(pop.signup_lift)[v]
    views = rng.poisson(3.0, count)
    out: list[Message] = []
    for i in range(count):
        unit = f"{pop.experiment}-u{first + i}"
        ts = t0 + first + i
        key = unit.encode()
        attrs = ({"platform": pop.platforms[(first + i) % len(pop.platforms)]}
                 if pop.platforms else {})
        out.append(("exposures", key, encode_exposure(Exposure(
            pop.experiment, unit, pop.variations[v[i]], ts, {"x": float(x[i])}, attrs))))
        out.append(("events", key, encode_event(Event(unit, "purchase", ts + 1.0,
                                                      float(revenue[i])))))
        if signed[i]:
            out.append(("events", key, encode_event(Event(unit, "signup", ts + 2.0))))
        for k in range(int(views[i])):
            out.append(("events", key, encode_event(Event(unit, "pageview", ts + 0.5 + k))))
    return out


class DirectIngest:
    """Applies messages to Redis through the real batch builder and Lua script, no Kafka."""

    def __init__(self, client: Client, partitions: int = 4, buckets: int = 64) -> None:
        self.client = client
        self.store = PartitionStore(client)
        self.partitions = partitions
        self.store.set_partition_count(partitions)
        self.topics = Topics("exposures", "events")
        self.builder = BatchBuilder(self.store, self.topics, buckets, 600.0, 100_000)
        self.epochs = {p: self.store.claim(p) for p in range(partitions)}
        self.offsets: dict[tuple[str, int], int] = defaultdict(int)
        for p in range(partitions):  # continue where an earlier feeder stopped
            for topic, nxt in self.store.stored_offsets(p).items():
                self.offsets[(topic, p)] = nxt

    def feed(self, messages: Sequence[Message]) -> int:
        """Apply ``messages`` (one batch per partition); returns how many were applied."""
        self.builder.set_experiments({d.id: ExperimentLayout.of(d)
                                      for d in Registry(self.client).list()})
        by_partition: dict[int, list[RawRecord]] = defaultdict(list)
        for kind, key, value in messages:
            p = zlib.crc32(key) % self.partitions
            topic = self.topics.exposures if kind == "exposures" else self.topics.events
            offset = self.offsets[(topic, p)]
            self.offsets[(topic, p)] = offset + 1
            by_partition[p].append(RawRecord(topic, offset, value))
        for p, records in sorted(by_partition.items()):
            batch = self.builder.build(p, self.epochs[p], records)
            outcome = self.store.apply(batch.write)
            assert outcome.applied, outcome
        return len(messages)


# --------------------------------------------------------------------------- server process


def api_env(s: Settings) -> dict[str, str]:
    """The environment of a ``liftstream`` child process configured as ``s``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFTSTREAM_")}
    env.update(to_env(s))
    return env


@dataclass
class ServerProcess:
    """A running ``liftstream api`` child process."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextmanager
def api_server(s: Settings, log_dir: Path, *args: str, timeout: float = 20.0
               ) -> Iterator[ServerProcess]:
    """``liftstream api`` on a free port until the block ends (SIGTERM, then SIGKILL)."""
    port = free_port()
    exe = Path(sys.executable).with_name("liftstream")
    log = log_dir / f"api-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), "api", "--host", "127.0.0.1", "--port", str(port),
                                 *args], env=api_env(s), stdout=out, stderr=subprocess.STDOUT)
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"liftstream api exited ({proc.returncode}):\n"
                                   f"{server.log_text()}")
            try:
                if httpx.get(server.url + "/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"liftstream api not up after {timeout}s:\n"
                                   f"{server.log_text()}")
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def js_fmt(x: float | None) -> str:
    """The dashboard's ``fmt``: JavaScript ``toFixed``/``toExponential(3)`` rules in Python."""
    if x is None:
        return "–"
    a = abs(x)
    if a != 0 and (a >= 1e6 or a < 1e-3):
        mantissa, exponent = f"{x:.3e}".split("e")
        return f"{mantissa}e{'+' if int(exponent) >= 0 else '-'}{abs(int(exponent))}"
    return f"{x:.{2 if a >= 100 else 3 if a >= 1 else 4}f}"


def js_ci(lo: float | None, hi: float | None) -> str:
    """The dashboard's ``fmtCI``."""
    return f"[{js_fmt(lo)}, {js_fmt(hi)}]"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def series_of(doc: Mapping[str, Any], metric: str, treatment: str) -> Mapping[str, Any]:
    """The comparison of ``metric`` × ``treatment`` in a result document."""
    for m in doc["slices"][0]["metrics"]:
        if m["metric"] == metric:
            for c in m["comparisons"]:
                if c["treatment"] == treatment:
                    return c
    raise KeyError((metric, treatment))
