"""Prometheus metrics of the API: request metrics middleware and the ingest collector."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator, Mapping

import redis
import redis.cluster
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from state import keys
from state.definition import ExperimentDef
from state.models import refusal_counts
from state.store import partition_count, read_counters
from workers.api.state import ApiState

log = logging.getLogger("liftstream.api")


class RequestMetrics:
    """The API's own Prometheus metrics (one registry per app)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("liftstream_api_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=registry)
        self.latency = Histogram("liftstream_api_request_duration_seconds",
                                 "HTTP request latency", ["route"], registry=registry,
                                 buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25,
                                          .5, 1, 2.5, 5, 10))
        self.in_flight = Gauge("liftstream_api_requests_in_flight", "requests being answered",
                               registry=registry)


class MetricsMiddleware:
    """Counts requests and measures latency per route template (pure ASGI, low overhead)."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], name, str(status)).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - t0)


class IngestCollector(Collector):
    """Worker counters read from Redis at scrape time, consumer lag and cache statistics."""

    def __init__(self, api: ApiState) -> None:
        self.api = api
        self.samples: deque[tuple[float, float, float]] = deque()

    def collect(self) -> Iterator[Metric]:
        api = self.api
        up = GaugeMetricFamily("liftstream_redis_up", "1 when Redis answered this scrape")
        try:
            n = partition_count(api.client)
            counters = read_counters(api.client, range(n)) if n else {}
            defs = api.registry.list()
            refusals = refusal_counts(api.client)
        except (redis.RedisError, redis.cluster.RedisClusterException, OSError) as exc:
            log.warning("metrics: Redis unavailable: %s", exc)
            up.add_metric([], 0.0)
            yield up
            yield from self._cache_metrics()
            return
        up.add_metric([], 1.0)
        yield up
        yield from self._ingest(counters, n)
        yield from self._experiments(counters, defs)
        yield _refused_snapshots(refusals)
        yield from self._lag()
        yield from self._cache_metrics()

    def _ingest(self, c: Mapping[str, float], partitions: int) -> Iterator[Metric]:
        simple = {"messages": "messages applied (exposures and events, incl. dead letters)",
                  "events": "event messages applied",
                  "dead_letters": "messages sent to the dead-letter topic"}
        for name, doc in simple.items():
            m = CounterMetricFamily(f"liftstream_ingest_{name}", doc)
            m.add_metric([], c.get(name, 0.0))
            yield m
        refused = CounterMetricFamily("liftstream_ingest_refused_batches",
                                      "batches refused by the fencing script", labels=["reason"])
        for reason in keys.REFUSAL_REASONS:
            refused.add_metric([reason], c.get(keys.refused_counter(reason), 0.0))
        yield refused
        other = CounterMetricFamily("liftstream_ingest_counter", "other ingest counters",
                                    labels=["counter"])
        skip = {*simple, keys.LAST_EVENT_TS, "batches", "batch_micros",
                *(keys.refused_counter(reason) for reason in keys.REFUSAL_REASONS)}
        for name, v in sorted(c.items()):
            if ":" not in name and name not in skip:
                other.add_metric([name], v)
        yield other
        now = time.monotonic()
        self.samples.append((now, c.get("messages", 0.0), c.get("events", 0.0)))
        while len(self.samples) > 2 and now - self.samples[0][0] > 120.0:
            self.samples.popleft()
        t0, m0, e0 = self.samples[0]
        dt = now - t0
        for name, value in (("messages", c.get("messages", 0.0) - m0),
                            ("events", c.get("events", 0.0) - e0)):
            g = GaugeMetricFamily(f"liftstream_ingest_{name}_per_second",
                                  f"{name} applied per second over the last scrapes "
                                  f"(up to 120 s; prefer rate() of the counter)")
            g.add_metric([], value / dt if dt > 0 else 0.0)
            yield g
        if "batches" in c:
            b = CounterMetricFamily("liftstream_ingest_batches", "partition batches applied")
            b.add_metric([], c["batches"])
            yield b
            s = CounterMetricFamily("liftstream_ingest_batch_seconds",
                                    "time spent building and applying batches")
            s.add_metric([], c.get("batch_micros", 0.0) / 1e6)
            yield s
            avg = GaugeMetricFamily("liftstream_ingest_batch_latency_seconds",
                                    "mean batch latency since start")
            avg.add_metric([], c.get("batch_micros", 0.0) / 1e6 / c["batches"]
                           if c["batches"] else 0.0)
            yield avg
        last = GaugeMetricFamily("liftstream_last_event_timestamp_seconds",
                                 "newest event time applied (event time, epoch seconds)")
        last.add_metric([], c.get(keys.LAST_EVENT_TS, 0.0))
        yield last
        parts = GaugeMetricFamily("liftstream_partitions", "topic partitions the workers run")
        parts.add_metric([], float(partitions))
        yield parts

    def _experiments(self, c: Mapping[str, float], defs: list[ExperimentDef]
                     ) -> Iterator[Metric]:
        exposures = CounterMetricFamily("liftstream_experiment_exposures",
                                        "units exposed per experiment", labels=["experiment"])
        other = CounterMetricFamily("liftstream_experiment_counter",
                                    "per-experiment ingest counters",
                                    labels=["experiment", "counter"])
        running = GaugeMetricFamily("liftstream_experiment_running",
                                    "1 for running experiments, 0 for stopped ones",
                                    labels=["experiment"])
        ids = {d.id for d in defs}
        for d in defs:
            exposures.add_metric([d.id], c.get(keys.experiment_counter(d.id, "exposures"), 0.0))
            running.add_metric([d.id], 1.0 if d.status == "running" else 0.0)
        last = GaugeMetricFamily("liftstream_experiment_last_event_timestamp_seconds",
                                 "newest event time applied to the experiment (event time)",
                                 labels=["experiment"])
        for name, v in sorted(c.items()):
            split = keys.split_experiment_counter(name)
            if split is None or split[0] not in ids:
                continue
            exp, counter = split
            if counter == keys.LAST_EVENT_TS:
                last.add_metric([exp], v)
            elif counter != "exposures":
                other.add_metric([exp, counter], v)
        yield exposures
        yield other
        yield running
        yield last

    def _lag(self) -> Iterator[Metric]:
        monitor = self.api.lag
        reading = monitor.latest() if monitor is not None else None
        if reading is None:
            return
        lag = GaugeMetricFamily("liftstream_consumer_lag_messages",
                                "messages published but not yet applied to Redis (NaN: "
                                "unknown, stored offsets lie outside the log)",
                                labels=["topic"])
        bad = GaugeMetricFamily("liftstream_consumer_offsets_out_of_range",
                                "partitions whose stored offsets lie outside the log",
                                labels=["topic"])
        for topic, v in reading.by_topic.items():
            lag.add_metric([topic], float("nan") if v is None else float(v))
            bad.add_metric([topic], float(sum(1 for t, *_ in reading.out_of_range
                                              if t == topic)))
        yield lag
        yield bad
        age = GaugeMetricFamily("liftstream_consumer_lag_age_seconds",
                                "seconds since the lag was measured")
        age.add_metric([], max(0.0, time.time() - reading.measured_at))
        yield age

    def _cache_metrics(self) -> Iterator[Metric]:
        m = CounterMetricFamily("liftstream_api_results_cache",
                                "results lookups: hit (cached), stale (expired less than a "
                                "TTL ago, served while refreshing), shared (joined a running "
                                "computation), miss (computed)", labels=["outcome"])
        cache = self.api.results
        m.add_metric(["hit"], float(cache.hits))
        m.add_metric(["stale"], float(cache.stale_hits))
        m.add_metric(["shared"], float(cache.shared))
        m.add_metric(["miss"], float(cache.misses))
        yield m
        evicted = CounterMetricFamily("liftstream_api_results_cache_evictions",
                                      "cached results dropped to stay within "
                                      "LIFTSTREAM_RESULTS_CACHE_ENTRIES / _BYTES")
        evicted.add_metric([], float(cache.evictions))
        yield evicted
        size = GaugeMetricFamily("liftstream_api_results_cache_bytes",
                                 "bytes charged to the cached results")
        size.add_metric([], float(cache.bytes))
        yield size
        refused = CounterMetricFamily("liftstream_api_computations_refused",
                                      "requests answered 503 busy: more computations than "
                                      "LIFTSTREAM_API_COMPUTE_THREADS + _QUEUE")
        refused.add_metric([], float(cache.gate.refused))
        yield refused
        pending = GaugeMetricFamily("liftstream_api_computations_pending",
                                    "result and history computations running or waiting")
        pending.add_metric([], float(cache.gate.pending))
        yield pending


def _refused_snapshots(refusals: Mapping[str, int]) -> Metric:
    m = CounterMetricFamily("liftstream_model_snapshots_refused",
                            "model snapshots refused (HMAC does not verify, or unreadable) by "
                            "workers and the learner", labels=["model"])
    for model_id, n in sorted(refusals.items()):
        m.add_metric([model_id], float(n))
    return m


# --------------------------------------------------------------------------- the app
