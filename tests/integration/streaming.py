"""Shared helpers for streaming integration tests: settings, synthetic streams, worker processes
(publishing and the worker thread live in :mod:`tests.support.workers`; re-exported here)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from estimators.analysis import AnalysisSettings
from estimators.compare import document_differences
from state import keys
from state.store import Client, connect, partition_count, read_counters
from state.units import UnitState
from stream.kafka import ensure_topics, make_producer
from stream.messages import Event, Exposure, encode_event, encode_exposure
from tests.support.workers import publish, worker_thread  # noqa: F401 (re-exported)
from workers.batch.analyze import AnalyzeRequest, analyze_frame
from workers.batch.columns import MetricColumn
from workers.settings import ENV_PREFIX, Settings, env_name


def streaming_settings(bootstrap: str, redis_url: str, prefix: str, partitions: int = 4,
                       **overrides: Any) -> Settings:
    base = Settings()
    return replace(base, kafka_bootstrap=bootstrap, redis_url=redis_url,
                   topic_exposures=f"{prefix}.exposures", topic_events=f"{prefix}.events",
                   topic_dead_letters=f"{prefix}.dead", group_id=f"{prefix}-group",
                   partitions=partitions, batch_size=2000, batch_timeout_ms=100, **overrides)


def create_topics(s: Settings) -> None:
    ensure_topics(s.kafka_bootstrap, {s.topic_exposures: s.partitions,
                                      s.topic_events: s.partitions})


def messages_applied(client: Client) -> int:
    n = partition_count(client)
    return int(read_counters(client, range(n)).get("messages", 0)) if n else 0


def wait_for_messages(client: Client, total: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if messages_applied(client) >= total:
            return
        time.sleep(0.2)
    raise TimeoutError(f"only {messages_applied(client)} of {total} messages applied")


def redis_client(s: Settings) -> Client:
    return connect(s.redis_url, s.redis_cluster)


def assert_documents_equal(stream_doc: dict[str, Any], batch_doc: dict[str, Any],
                           rel: float = 1e-9) -> int:
    """Every estimator number of two result documents agrees; returns how many compared.

    ``variance_reduction`` and ``r_squared`` (1 − x) are compared on their O(1) scale
    (see :mod:`estimators.compare`)."""
    problems = document_differences(stream_doc, batch_doc, rel)
    assert not problems, problems[:10]
    return sum(1 for m in stream_doc["slices"][0]["metrics"] for c in m["comparisons"]
               for e in c["estimators"].values() for v in e.values() if isinstance(v, float))


# --------------------------------------------------------------------------------------------
# Synthetic streams, worker processes and per-unit accounting (crash, rebalance, hostile tests)

SYNTH_T0 = 1_750_000_000.0
#: Every purchase value is ``q/4 + TALLY``, so a unit's raw revenue sum ``S`` encodes how many
#: purchases were counted exactly: ``round(S * 4096) % 1024`` (fewer than 1024 per unit).
TALLY = 2.0 ** -12
SYNTH_VARIATIONS = ("control", "t1", "t2")


def synthetic_definition(experiment: str) -> dict[str, Any]:
    """Three arms, a capped sum metric, a binary metric and one covariate."""
    return {"id": experiment, "variations": list(SYNTH_VARIATIONS), "weights": [0.4, 0.3, 0.3],
            "metrics": [{"name": "revenue", "event": "purchase", "aggregate": "sum",
                         "cap": 40.0},
                        {"name": "converted", "event": "signup", "aggregate": "binary"}],
            "covariates": ["x"]}


@dataclass(frozen=True)
class SyntheticStream:
    """Messages in publish order and the truth they imply, one row per unit."""

    messages: list[tuple[str, bytes, bytes]]
    # index unit id; variation, revenue (capped), converted (0/1), x — the batch-analysis rows
    frame: pd.DataFrame
    # index unit id; purchases, revenue_raw, signups: countable events (ts ≥ exposure, deduped)
    expected: pd.DataFrame
    events_in: int  # event messages published, duplicates and uncountable ones included
    duplicate_exposures: int  # exposures published twice
    duplicate_events: int  # events (all carrying an id) published twice
    early: int  # events published before their unit's exposure


def synthetic_stream(experiment: str, n_units: int, seed: int, duplicate: float = 0.03,
                     span: float = 240.0, jitter: float = 60.0) -> SyntheticStream:
    """Exposures and events of ``n_units`` units, locally shuffled by arrival time.

    Arrival = timestamp + U(0, ``jitter``), so about a third of the events arrive before their
    unit's exposure. 3% of events happen before the exposure (never counted), 40% carry an
    ``id``, half are scoped to ``experiment``. ``duplicate`` of the exposures and id-carrying
    events are published twice. Event times span less than the default grace period (600 s),
    so no held event can expire whatever the consumption order.
    """
    rng = np.random.default_rng(seed)
    v = rng.choice(3, size=n_units, p=[0.4, 0.3, 0.3])
    x = rng.normal(size=n_units)
    lift = np.array([0.0, 0.08, 0.15])[v]
    exp_ts = SYNTH_T0 + rng.uniform(0.0, span, n_units)
    n_buy = rng.poisson(0.5 * np.exp(0.4 * x) * (1.0 + lift))
    n_sign = rng.poisson(0.25 * np.exp(0.2 * x) * (1.0 + 2.0 * lift))
    units = np.array([f"u{i}" for i in range(n_units)])

    ev_unit = np.concatenate([np.repeat(np.arange(n_units), n_buy),
                              np.repeat(np.arange(n_units), n_sign)])
    is_buy = np.arange(len(ev_unit)) < int(n_buy.sum())
    m = len(ev_unit)
    value = np.where(is_buy, (1 + rng.poisson(16.0, m)) / 4.0 + TALLY, 1.0)
    countable = rng.random(m) >= 0.03
    offset = np.where(countable, rng.uniform(0.0, 30.0, m), -rng.uniform(0.5, 20.0, m))
    offset[countable & (rng.random(m) < 0.02)] = 0.0  # "at or after" the exposure counts
    ev_ts = exp_ts[ev_unit] + offset
    has_id = rng.random(m) < 0.4
    scoped = rng.random(m) < 0.5

    msgs: list[tuple[float, str, bytes, bytes]] = []
    dup_exposures = dup_events = 0
    for i in range(n_units):
        body = encode_exposure(Exposure(experiment, str(units[i]), SYNTH_VARIATIONS[v[i]],
                                        float(exp_ts[i]), {"x": float(x[i])}))
        arrival = float(exp_ts[i]) + rng.uniform(0.0, jitter)
        msgs.append((arrival, "exposures", units[i].encode(), body))
        if rng.random() < duplicate:
            msgs.append((arrival + rng.uniform(0.0, 2 * jitter), "exposures",
                         units[i].encode(), body))
            dup_exposures += 1
    early = 0
    for j in range(m):
        u = str(units[ev_unit[j]])
        e = Event(u, "purchase" if is_buy[j] else "signup", float(ev_ts[j]), float(value[j]),
                  experiment if scoped[j] else None, f"{u}:{j}" if has_id[j] else None)
        body = encode_event(e)
        arrival = float(ev_ts[j]) + rng.uniform(0.0, jitter)
        msgs.append((arrival, "events", u.encode(), body))
        if has_id[j] and rng.random() < duplicate:
            msgs.append((arrival + rng.uniform(0.0, 2 * jitter), "events", u.encode(), body))
            dup_events += 1
    msgs.sort(key=lambda t: t[0])
    exposure_arrival: dict[bytes, float] = {}
    for arrival, kind, key, _ in msgs:
        if kind == "exposures":
            exposure_arrival.setdefault(key, arrival)
    for arrival, kind, key, _ in msgs:
        if kind == "events" and arrival < exposure_arrival[key]:
            early += 1

    ok = countable
    revenue_raw = np.bincount(ev_unit[ok & is_buy], weights=value[ok & is_buy],
                              minlength=n_units)
    purchases = np.bincount(ev_unit[ok & is_buy], minlength=n_units)
    signups = np.bincount(ev_unit[ok & ~is_buy], minlength=n_units)
    frame = pd.DataFrame({"variation": np.array(SYNTH_VARIATIONS)[v],
                          "revenue": np.minimum(revenue_raw, 40.0),
                          "converted": np.minimum(signups, 1).astype(np.float64), "x": x},
                         index=pd.Index(units, name="unit"))
    expected = pd.DataFrame({"purchases": purchases, "revenue_raw": revenue_raw,
                             "signups": signups}, index=frame.index)
    return SyntheticStream([(k, key, body) for _, k, key, body in msgs], frame, expected,
                           events_in=sum(1 for _, k, _, _ in msgs if k == "events"),
                           duplicate_exposures=dup_exposures, duplicate_events=dup_events,
                           early=early)


def synthetic_batch_document(frame: pd.DataFrame) -> dict[str, Any]:
    """The batch analysis (``liftstream analyze``) of synthetic unit rows."""
    req = AnalyzeRequest(variation="variation", control="control",
                         metrics=(MetricColumn("revenue", "numeric"),
                                  MetricColumn("converted", "binary")),
                         covariates=("x",), weights=None, settings=AnalysisSettings())
    return analyze_frame(frame, req)


def read_unit_states(client: Client, experiment: str, partitions: int, buckets: int
                     ) -> dict[str, UnitState]:
    """Every stored unit state of ``experiment`` (all partitions, all buckets)."""
    pipe = client.pipeline(transaction=False)
    for p in range(partitions):
        for b in range(buckets):
            pipe.hgetall(keys.units(p, experiment, b))
    out: dict[str, UnitState] = {}
    for raw in pipe.execute():
        for unit, blob in raw.items():
            out[unit.decode()] = UnitState.unpack(blob)
    return out


def event_accounting(client: Client, experiment: str, stream: SyntheticStream,
                     partitions: int, buckets: int) -> dict[str, int]:
    """Countable events counted, lost and double-counted, from the stored unit states."""
    states = read_unit_states(client, experiment, partitions, buckets)
    exp = stream.expected
    counted = lost = double = wrong_units = 0
    for unit, row in zip(exp.index, exp.itertuples(index=False), strict=True):
        st = states.get(unit)
        if st is None:
            lost += int(row.purchases) + int(row.signups)
            wrong_units += 1
            continue
        revenue_raw, signups = float(st.raw[0]), int(st.raw[1])
        purchases = round(revenue_raw * 4096) % 1024
        for want, got in ((int(row.purchases), purchases), (int(row.signups), signups)):
            counted += min(want, got)
            lost += max(want - got, 0)
            double += max(got - want, 0)
        variation = SYNTH_VARIATIONS[st.variation]
        if (revenue_raw != row.revenue_raw or signups != row.signups or st.withdrawn
                or variation != stream.frame.at[unit, "variation"]
                or float(st.raw[2]) != stream.frame.at[unit, "x"]):
            wrong_units += 1
    return {"events_in": stream.events_in, "countable": int(exp.purchases.sum()
                                                              + exp.signups.sum()),
            "counted": counted, "lost": lost, "double_counted": double,
            "wrong_units": wrong_units, "extra_units": len(set(states) - set(exp.index))}


def settings_env(s: Settings) -> dict[str, str]:
    """The environment of a ``liftstream`` child process configured exactly as ``s``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    for f in dataclasses.fields(s):
        value = getattr(s, f.name)
        if value is None:
            continue
        if isinstance(value, bool):
            env[env_name(f.name)] = "true" if value else "false"
        elif isinstance(value, tuple):
            env[env_name(f.name)] = ",".join(value)
        else:
            env[env_name(f.name)] = str(value)
    return env


def start_worker_process(s: Settings, name: str, log_dir: Path) -> subprocess.Popen[bytes]:
    """``liftstream worker --name NAME`` as a child process, output in ``log_dir/NAME.log``."""
    exe = Path(sys.executable).with_name("liftstream")
    with open(log_dir / f"{name}.log", "wb") as log:
        return subprocess.Popen([str(exe), "worker", "--name", name], env=settings_env(s),
                                stdout=log, stderr=subprocess.STDOUT)


def stop_processes(procs: Sequence[subprocess.Popen[bytes]], sig: int = signal.SIGKILL,
                   timeout: float = 20.0) -> None:
    """Send ``sig`` to every live process of ``procs`` and reap them all."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(sig)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


class Publisher(threading.Thread):
    """Publishes messages from a background thread; ``error`` holds what it raised."""

    def __init__(self, s: Settings, messages: Sequence[tuple[str, bytes, bytes]],
                 rate: float | None = None, pause_at: int | None = None) -> None:
        super().__init__(daemon=True)
        self.settings = s
        self.messages = messages
        self.rate = rate  # messages per second; None: as fast as the producer goes
        self.pause_at = pause_at  # after this many messages wait for ``resume``
        self.resume = threading.Event()
        self.error: BaseException | None = None
        self.sent = 0

    def run(self) -> None:
        try:
            producer = make_producer(self.settings.kafka_bootstrap, linger_ms=20)
            topics = {"exposures": self.settings.topic_exposures,
                      "events": self.settings.topic_events}
            t0 = time.monotonic()
            for kind, key, value in self.messages:
                if self.sent == self.pause_at:
                    producer.flush()
                    self.resume.wait()
                    t0 = time.monotonic() - self.sent / self.rate if self.rate else t0
                producer.send(topics[kind], value=value, key=key)
                self.sent += 1
                if self.rate is not None and self.sent % 100 == 0:
                    time.sleep(max(0.0, t0 + self.sent / self.rate - time.monotonic()))
            producer.flush()
            producer.close()
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def finish(self, timeout: float = 120.0) -> None:
        self.join(timeout)
        assert not self.is_alive(), "publisher did not finish"
        if self.error is not None:
            raise self.error
