"""``liftstream api``: the query API, Prometheus metrics and the live dashboard (FastAPI).

Endpoints (OpenAPI docs at ``/docs``, schema at ``/openapi.json``):

=========================================  =======  =========================================
``GET /``                                   —        the dashboard (data calls need a token)
``GET /healthz``                            —        the process is up
``GET /readyz``                             —        Redis reachable and registry readable
``GET /metrics``                            read     Prometheus text: ingest counters from
                                                     Redis, consumer lag, API request metrics
``GET /v1/experiments``                     read     all definitions
``POST /v1/experiments``                    admin    create (201; 409 if the id exists)
``GET /v1/experiments/{id}``                read     one definition
``PUT /v1/experiments/{id}``                admin    replace an existing definition
``POST /v1/experiments/{id}/stop``          admin    mark stopped
``GET /v1/experiments/{id}/results``        read     the result document + ``freshness``
``GET /v1/experiments/{id}/history``        read     snapshots since the experiment's start
                                                     (tiered), one series per metric ×
                                                     treatment × estimator
=========================================  =======  =========================================

Authentication: ``Authorization: Bearer <token>``; tokens come from
``LIFTSTREAM_API_READ_TOKENS`` and ``LIFTSTREAM_API_ADMIN_TOKENS`` (admin implies read).
A missing or unknown token gets 401, a read token on an admin endpoint 403, both with a JSON
body ``{"error": ..., "detail": ...}``. **When no token is configured** ``liftstream api``
does not run open: it generates a random admin token for this run and prints it (with the
dashboard URL) on standard error. ``--insecure`` runs without authentication instead (every
caller is admin; only sensible behind an authenticating proxy).

Results are cached for ``LIFTSTREAM_RESULTS_CACHE_SECONDS`` (default 1 s) per experiment,
``alpha`` and ``correction``; concurrent requests for the same key share one computation
(:mod:`workers.cache`), so N polling dashboards cost Redis one read per interval. For one more
TTL after expiry the previous document is served while a single refresh runs (so pollers never
queue behind a recomputation); ``freshness.computed_at`` in every answer says how old it is.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated, Any, Literal

import msgspec
import redis
import redis.cluster
from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from estimators.analysis import ESTIMATORS
from state import history
from state.definition import DefinitionError, ExperimentDef, parse_definition
from state.limits import check_text_size, refuse_duplicate_json_keys
from state.models import refusal_counts
from state.naming import ID_REGEX as ID_PATTERN_TEXT
from state.registry import ExperimentExists, Registry
from state.results import experiment_document_with, record_finished
from state.store import Client, partition_count, read_counters
from stream.lag import LagMonitor
from workers.api_docs import install_docs
from workers.api_guard import BodyLimit, ErrorShield, request_id
from workers.api_openapi import RESULTS_SCHEMA, allowed_methods, document_errors
from workers.cache import Busy, ComputeGate, SingleFlightCache
from workers.history_recorder import HistoryRecorder
from workers.settings import Settings

__all__ = ["ApiError", "Auth", "create_app", "resolve_auth", "shape_results"]

log = logging.getLogger("liftstream.api")

ID_REGEX = f"^{ID_PATTERN_TEXT}$"
SEQUENTIAL_FIELDS = ("seq_ci_low", "seq_ci_high", "seq_p_value", "adjusted_seq_p_value")
EstimatorName = Literal["diff", "cuped", "cupac", "mlrate", "lin_crespo", "adjusted"]
assert set(EstimatorName.__args__) == set(ESTIMATORS)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- auth


@dataclass(frozen=True)
class Auth:
    """Accepted bearer tokens by scope; ``open`` disables authentication (``--insecure``)."""

    read_tokens: frozenset[str] = frozenset()
    admin_tokens: frozenset[str] = frozenset()
    open: bool = False

    def scope_of(self, token: str) -> Literal["admin", "read"] | None:
        """``admin``, ``read`` or ``None`` for an unknown token (constant-time comparisons)."""
        found: Literal["admin", "read"] | None = None
        for t in self.admin_tokens:
            if hmac.compare_digest(t.encode(), token.encode()):
                found = "admin"
        for t in self.read_tokens:
            if hmac.compare_digest(t.encode(), token.encode()) and found is None:
                found = "read"
        return found


def resolve_auth(settings: Settings, insecure: bool = False) -> tuple[Auth, str | None]:
    """The API's tokens; with none configured, a generated admin token (returned second)."""
    if insecure:
        return Auth(open=True), None
    read, admin = frozenset(settings.api_read_tokens), frozenset(settings.api_admin_tokens)
    if read or admin:
        return Auth(read, admin), None
    token = secrets.token_urlsafe(24)
    return Auth(frozenset(), frozenset({token})), token


class ApiError(Exception):
    """An error answered as ``{"error": code, "detail": text}`` with an HTTP status."""

    def __init__(self, status: int, error: str, detail: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})


def _error_response(status: int, error: str, detail: str,
                    headers: Mapping[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status,
                        headers=dict(headers or {}))


_bearer = HTTPBearer(auto_error=False, description="A read or admin token from the settings.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _scope(request: Request, creds: HTTPAuthorizationCredentials | None) -> str:
    auth: Auth = request.app.state.api.auth
    if auth.open:
        return "admin"
    challenge = {"WWW-Authenticate": 'Bearer realm="liftstream"'}
    if creds is None:
        raise ApiError(401, "unauthorized",
                       "missing bearer token: send 'Authorization: Bearer <token>' (the "
                       "dashboard takes it as ?token=...)", challenge)
    scope = auth.scope_of(creds.credentials)
    if scope is None:
        raise ApiError(401, "unauthorized", "invalid bearer token", challenge)
    return scope


async def require_read(request: Request, creds: Credentials) -> str:
    """Dependency: a read or admin token (async: FastAPI runs sync dependencies in threads)."""
    return _scope(request, creds)


async def require_admin(request: Request, creds: Credentials) -> str:
    """Dependency: an admin token."""
    scope = _scope(request, creds)
    if scope != "admin":
        raise ApiError(403, "forbidden", "this endpoint needs a token with the admin scope; "
                                         "the given token has the read scope")
    return scope


Read = Annotated[str, Depends(require_read)]
Admin = Annotated[str, Depends(require_admin)]


# --------------------------------------------------------------------------- results

ExperimentId = Annotated[str, PathParam(pattern=ID_REGEX,
                                        description=f"experiment id ({ID_PATTERN_TEXT})")]
DEFINITION_EXAMPLE: dict[str, Any] = {"id": "checkout-button", "variations": ["control", "green"],
                      "weights": [0.5, 0.5],
                      "metrics": [{"name": "revenue", "event": "purchase",
                                   "aggregate": "sum", "cap": 500},
                                  {"name": "converted", "event": "purchase",
                                   "aggregate": "binary"}],
                      "covariates": ["pre_revenue"], "primary_metric": "revenue",
                      "guardrails": ["converted"]}
DefinitionBody = Annotated[dict[str, Any], Body(examples=[DEFINITION_EXAMPLE],
                                                description="an experiment definition")]


async def _strict_definition_text(request: Request) -> None:
    """The definition's raw JSON held to what ``experiments create`` holds a file to: at most
    ``LIFTSTREAM_MAX_DEFINITION_BYTES``, no key given twice (``json`` would keep the last)."""
    raw = await request.body()
    try:
        check_text_size(raw, "request body", request.app.state.api.settings.definition_limits())
        refuse_duplicate_json_keys(raw, "request body")
    except DefinitionError as exc:
        raise ApiError(422, "invalid_definition", str(exc)) from None


StrictDefinitionText = Annotated[None, Depends(_strict_definition_text)]




@dataclass
class CachedResult:
    """One computed result document (kept as JSON: compact, and nothing for the garbage
    collector to walk) and its encodings per response shape."""

    definition: ExperimentDef
    doc: bytes
    computed_at: float
    bodies: dict[tuple[str | None, bool], bytes] = field(default_factory=dict)


def shape_results(doc: Mapping[str, Any], estimator: str | None, sequential: bool
                  ) -> dict[str, Any]:
    """The document restricted to one estimator and/or without the anytime-valid fields."""
    if estimator is None and sequential:
        return dict(doc)

    def est(e: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in e.items() if sequential or k not in SEQUENTIAL_FIELDS}

    def comp(c: Mapping[str, Any]) -> dict[str, Any]:
        kept = {n: est(e) for n, e in c["estimators"].items()
                if estimator is None or n == estimator}
        return {**c, "estimators": kept}

    slices = []
    for sl in doc["slices"]:
        srm = dict(sl["srm"])
        if not sequential:
            srm.pop("sequential_p_value", None)
        metrics = [{**m, "comparisons": [comp(c) for c in m["comparisons"]]}
                   for m in sl["metrics"]]
        slices.append({**sl, "srm": srm, "metrics": metrics})
    return {**doc, "slices": slices}


# --------------------------------------------------------------------------- metrics


class _RequestMetrics:
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

    def __init__(self, app: ASGIApp, metrics: _RequestMetrics) -> None:
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


class _IngestCollector(Collector):
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
        for reason in ("epoch", "offset", "shift", "side_outputs"):
            refused.add_metric([reason], c.get(f"refused_{reason}", 0.0))
        yield refused
        other = CounterMetricFamily("liftstream_ingest_counter", "other ingest counters",
                                    labels=["counter"])
        skip = {*simple, "last_event_ts", "batches", "batch_micros",
                "refused_epoch", "refused_offset", "refused_shift", "refused_side_outputs"}
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
        last.add_metric([], c.get("last_event_ts", 0.0))
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
            exposures.add_metric([d.id], c.get(f"{d.id}:exposures", 0.0))
            running.add_metric([d.id], 1.0 if d.status == "running" else 0.0)
        last = GaugeMetricFamily("liftstream_experiment_last_event_timestamp_seconds",
                                 "newest event time applied to the experiment (event time)",
                                 labels=["experiment"])
        for name, v in sorted(c.items()):
            exp, sep, counter = name.rpartition(":")
            if sep and exp in ids and counter == "last_event_ts":
                last.add_metric([exp], v)
            elif sep and exp in ids and counter != "exposures":
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


@dataclass
class ApiState:
    """Everything the request handlers share."""

    settings: Settings
    auth: Auth
    client: Client
    registry: Registry
    results: SingleFlightCache[CachedResult | None]
    histories: SingleFlightCache[tuple[ExperimentDef, list[dict[str, Any]]] | None]
    metrics_registry: CollectorRegistry
    lag: LagMonitor | None = None


def api_client(settings: Settings) -> Client:
    """A Redis client with bounded timeouts, so a hung Redis cannot hang requests forever."""
    opts: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 5.0}
    if settings.redis_cluster:
        return redis.cluster.RedisCluster.from_url(settings.redis_url, **opts)
    return redis.Redis.from_url(settings.redis_url, health_check_interval=30, **opts)


def _result_size(res: CachedResult | None) -> int:
    """Bytes charged to a cached result: 3 × its JSON (the document and its encodings)."""
    return 0 if res is None else 3 * len(res.doc)


def _dashboard_html() -> bytes:
    return resources.files("workers").joinpath("static/dashboard.html").read_bytes()


_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                               "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _plain_validation(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    problems: list[dict[str, Any]] = []
    texts: list[str] = []
    for e in exc.errors():
        loc = [str(x) for x in e.get("loc", ())]
        where = loc[0] if loc else "request"
        name = ".".join(loc[1:])
        if where == "body":
            label = f"request body{' field ' + repr(name) if name else ''}"
        elif where in ("query", "path", "header"):
            label = f"{where} parameter {name!r}"
        else:
            label = ".".join(loc) or "request"
        msg = str(e.get("msg", "invalid value"))
        got = e.get("input")
        text = f"{label}: {msg}"
        if where in ("query", "path") and got is not None:
            shown = repr(got)
            text += f" (got {shown if len(shown) <= 80 else shown[:76] + '…' + shown[-1]})"
        problems.append({"location": where, "field": name or None, "message": msg,
                         "text": text})
        texts.append(text)
    return "; ".join(texts) or "invalid request", problems


def create_app(settings: Settings, *, auth: Auth | None = None, client: Client | None = None,
               lag_interval: float | None = 5.0, record_history: bool = False) -> FastAPI:
    """The FastAPI application; ``lag_interval=None`` disables the Kafka lag monitor;
    ``record_history`` records result history while the app runs (``liftstream api`` does)."""
    client = client if client is not None else api_client(settings)
    metrics_registry = CollectorRegistry(auto_describe=False)
    ttl = settings.results_cache_seconds
    lag = None
    if lag_interval is not None:
        lag = LagMonitor(client, settings.kafka_bootstrap,
                         [settings.topic_exposures, settings.topic_events], lag_interval,
                         settings.kafka_options())
    gate = ComputeGate(settings.api_compute_threads, settings.api_compute_queue)
    api = ApiState(settings, auth if auth is not None else resolve_auth(settings)[0], client,
                   Registry(client),
                   SingleFlightCache(ttl, settings.results_cache_entries,
                                     max_bytes=settings.results_cache_bytes,
                                     size_of=_result_size, gate=gate),
                   SingleFlightCache(ttl, settings.results_cache_entries, gate=gate),
                   metrics_registry, lag)
    request_metrics = _RequestMetrics(metrics_registry)
    metrics_registry.register(_IngestCollector(api))
    page = _dashboard_html()

    recorder = (HistoryRecorder(client, settings.alert_interval_seconds)
                if record_history else None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if api.lag is not None:
            api.lag.start()
        if recorder is not None:
            recorder.start()
        try:
            yield
        finally:
            if recorder is not None:
                recorder.stop()
            if api.lag is not None:
                api.lag.stop()

    app = FastAPI(
        title="liftstream", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
        description="Live A/B-test results: variance-reduced effects, fixed-horizon and "
                    "anytime-valid confidence intervals, posterior means, SRM checks. "
                    "Authenticate with `Authorization: Bearer <token>` (read or admin scope).")
    app.state.api = api
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes,
                       setting="LIFTSTREAM_API_MAX_BODY_BYTES")
    app.add_middleware(MetricsMiddleware, metrics=request_metrics)  # counts the 413s too
    app.add_middleware(ErrorShield)  # outermost: request ids, generic 500s
    install_docs(app)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail, problems = _plain_validation(exc)
        return _error_response(422, "invalid_request", detail, problems=problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
        if exc.status_code == 405:  # every method of the path, not only one route's
            headers["Allow"] = ", ".join(allowed_methods(app, request.scope))
        if exc.status_code == 400 and detail == "There was an error parsing the body":
            return _error_response(422, "invalid_request",
                                   "request body: not a JSON document (UTF-8 text expected)")
        return _error_response(exc.status_code, codes.get(exc.status_code, "http_error"),
                               detail, headers)

    # Unexpected exceptions: workers.api_guard.ErrorShield (generic 500 with a request id).

    @app.exception_handler(redis.RedisError)
    async def _redis_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("request %s: Redis error answering %s: %s", request_id(request.scope),
                    request.url.path, exc)
        return _error_response(503, "unavailable", "Redis is unavailable; retry later",
                               {"Retry-After": "1"})

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy) -> JSONResponse:
        return _error_response(503, "busy", "too many result computations in progress; "
                                            f"retry in {exc.retry_after} s",
                               {"Retry-After": str(exc.retry_after)})

    # -- page and probes ------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def dashboard() -> HTMLResponse:
        return HTMLResponse(page, headers=_PAGE_HEADERS)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/healthz", tags=["operations"], summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Redis reachable and registry readable",
             responses={503: {"description": "not ready"}})
    def readyz() -> JSONResponse:
        try:
            api.client.ping()
            version = api.registry.version()
            count = len(api.registry.list())
        except (redis.RedisError, redis.cluster.RedisClusterException, OSError) as exc:
            log.warning("readyz: Redis is not reachable: %s", exc)  # addresses: log only
            return _error_response(503, "not_ready", "Redis is not reachable")
        except (DefinitionError, ValueError) as exc:
            log.warning("readyz: registry is not readable: %s", exc)
            return _error_response(503, "not_ready", "the experiment registry is not readable")
        return JSONResponse({"status": "ready", "redis": "ok",
                             "registry": {"experiments": count, "version": version}})

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics",
             response_class=Response)
    def metrics(_: Read) -> Response:
        return Response(generate_latest(metrics_registry),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- registry -------------------------------------------------------------------------
    def forget(experiment_id: str) -> None:
        for cache in (api.results, api.histories):
            cache.invalidate(lambda k: isinstance(k, tuple) and k[0] == experiment_id)

    def parse(body: Any) -> ExperimentDef:
        if not isinstance(body, dict):
            raise ApiError(422, "invalid_definition",
                           "request body: expected a JSON object with the experiment "
                           "definition")
        try:
            return parse_definition(body, api.settings.definition_limits())
        except DefinitionError as exc:  # its message is bounded (state/limits.py)
            raise ApiError(422, "invalid_definition", str(exc)) from None

    def must_get(experiment_id: str) -> ExperimentDef:
        d = api.registry.get(experiment_id)
        if d is None:
            raise ApiError(404, "not_found", f"no experiment {experiment_id!r}")
        return d

    @app.get("/v1/experiments", tags=["experiments"], summary="List experiments")
    def list_experiments(_: Read) -> dict[str, Any]:
        return {"experiments": [d.to_dict() for d in api.registry.list()]}

    @app.post("/v1/experiments", tags=["experiments"], status_code=201,
              summary="Create an experiment",
              responses={409: {"description": "id exists"}, 422: {"description": "invalid"}})
    def create_experiment(body: DefinitionBody, _: Admin,
                          __: StrictDefinitionText) -> dict[str, Any]:
        d = parse(body)
        try:
            api.registry.create(d)
        except ExperimentExists:
            raise ApiError(409, "conflict", f"experiment {d.id!r} already exists; use PUT "
                                            f"/v1/experiments/{d.id} to replace it") from None
        forget(d.id)
        return d.to_dict()

    @app.get("/v1/experiments/{experiment_id}", tags=["experiments"],
             summary="One experiment's definition")
    def get_experiment(experiment_id: ExperimentId, _: Read) -> dict[str, Any]:
        return must_get(experiment_id).to_dict()

    @app.put("/v1/experiments/{experiment_id}", tags=["experiments"],
             summary="Replace an experiment's definition")
    def replace_experiment(experiment_id: ExperimentId, body: DefinitionBody,
                           _: Admin, __: StrictDefinitionText) -> dict[str, Any]:
        if isinstance(body, dict):
            body_id = body.setdefault("id", experiment_id)
            if body_id != experiment_id:
                raise ApiError(422, "invalid_definition",
                               f"id: the body's id {body_id!r} differs from the URL's "
                               f"{experiment_id!r}")
        d = parse(body)
        must_get(experiment_id)
        try:
            api.registry.create(d, replace=True)
        except DefinitionError as exc:  # e.g. a layout field changed on a running experiment
            raise ApiError(409, "conflict", str(exc)) from None
        forget(d.id)
        return d.to_dict()

    @app.post("/v1/experiments/{experiment_id}/stop", tags=["experiments"],
              summary="Stop an experiment")
    def stop_experiment(experiment_id: ExperimentId, _: Admin) -> dict[str, Any]:
        try:
            d = api.registry.stop(experiment_id)
        except KeyError:
            raise ApiError(404, "not_found", f"no experiment {experiment_id!r}") from None
        forget(experiment_id)
        try:  # the finished-experiments store; read lazily later if this fails
            record_finished(api.client, d)
        except (redis.RedisError, ValueError, ArithmeticError) as exc:
            log.warning("finished record of %s not written now (later, lazily): %s", d.id, exc)
        return d.to_dict()

    # -- results --------------------------------------------------------------------------
    def compute(experiment_id: str, alpha: float | None, correction: str | None
                ) -> CachedResult | None:
        d = api.registry.get(experiment_id)
        if d is None:
            return None
        corr: Any = correction
        doc = experiment_document_with(api.client, d, corr, alpha)
        res = CachedResult(d, msgspec.json.encode(doc), time.time())
        encode(res, None, True, alpha, correction, doc)  # here, in the worker thread
        return res

    def encode(res: CachedResult, estimator: str | None, sequential: bool,
               alpha: float | None, correction: str | None,
               computed: dict[str, Any] | None = None) -> bytes:
        key = (estimator, sequential)
        body = res.bodies.get(key)
        if body is None:
            source = computed if computed is not None else msgspec.json.decode(res.doc)
            doc = shape_results(source, estimator, sequential)
            last = doc["slices"][0].get("freshness", {}).get("last_event_ts")
            reading = api.lag.latest() if api.lag is not None else None
            doc["status"] = res.definition.status
            doc["query"] = {"alpha": alpha if alpha is not None else res.definition.alpha,
                            "correction": correction or res.definition.correction,
                            "estimator": estimator, "sequential": sequential}
            doc["freshness"] = {
                "computed_at": res.computed_at,
                "last_event_ts": last,
                "last_event_age_seconds": (max(0.0, res.computed_at - last)
                                           if last else None),
                "consumer_lag": reading.as_dict() if reading is not None else None,
                "cache_seconds": api.settings.results_cache_seconds,
            }
            body = msgspec.json.encode(doc)
            res.bodies[key] = body
        return body

    @app.get("/v1/experiments/{experiment_id}/results", tags=["results"],
             summary="Current results (cached briefly)",
             responses={200: {"description": "the result document plus freshness",
                              "content": {"application/json": {"schema": RESULTS_SCHEMA}}}})
    async def results(
        experiment_id: ExperimentId, _: Read,
        estimator: Annotated[EstimatorName | None, Query(
            description="only this estimator in every comparison")] = None,
        alpha: Annotated[float | None, Query(
            gt=0.0, lt=1.0, description="significance level (default: the definition's)")
        ] = None,
        correction: Annotated[Literal["holm", "bh"] | None, Query(
            description="adjust p-values across metrics × treatments")] = None,
        sequential: Annotated[bool, Query(
            description="include the anytime-valid fields (seq_ci_low, seq_ci_high, "
                        "seq_p_value, srm.sequential_p_value)")] = True,
    ) -> Response:
        res = await api.results.get((experiment_id, alpha, correction),
                                    lambda: compute(experiment_id, alpha, correction))
        if res is None:
            raise ApiError(404, "not_found", f"no experiment {experiment_id!r}")
        found: CachedResult = res
        body = found.bodies.get((estimator, sequential))
        if body is None:  # another shape: encoded in a worker thread too
            body = await gate.run_admitted(
                lambda: encode(found, estimator, sequential, alpha, correction))
        return Response(body, media_type="application/json")

    def load_history(experiment_id: str, limit: int | None, max_points: int | None
                     ) -> tuple[ExperimentDef, list[dict[str, Any]]] | None:
        d = api.registry.get(experiment_id)
        if d is None:
            return None
        return d, history.read(api.client, experiment_id, limit, max_points)

    @app.get("/v1/experiments/{experiment_id}/history", tags=["results"],
             summary="Results over time since the experiment's start (tiered resolution)")
    async def experiment_history(
        experiment_id: ExperimentId, _: Read,
        metric: Annotated[str | None, Query(description="only this metric")] = None,
        treatment: Annotated[str | None, Query(description="only this treatment")] = None,
        estimator: Annotated[EstimatorName | None, Query(
            description="only this estimator")] = None,
        limit: Annotated[int | None, Query(ge=1, le=history.MAX_POINTS,
                                           description="only the newest snapshots (default: "
                                                       "all, since the start)")] = None,
        max_points: Annotated[int | None, Query(
            ge=2, le=history.MAX_POINTS,
            description="thin the snapshots evenly in time to at most this many (the first "
                        "of each equal time bucket, and the newest; never interpolated)")
        ] = None,
    ) -> dict[str, Any]:
        got = await api.histories.get((experiment_id, limit, max_points),
                                      lambda: load_history(experiment_id, limit, max_points))
        if got is None:
            raise ApiError(404, "not_found", f"no experiment {experiment_id!r}")
        d, snaps = got  # thinned evenly in time before decoding (history.read)
        if metric is not None and metric not in d.metric_names():
            raise ApiError(422, "invalid_request",
                           f"query parameter 'metric': {metric!r} is not a metric of "
                           f"{experiment_id!r}; metrics: {', '.join(d.metric_names())}")
        if treatment is not None and treatment not in d.variations[1:]:
            raise ApiError(422, "invalid_request",
                           f"query parameter 'treatment': {treatment!r} is not a treatment "
                           f"of {experiment_id!r}; treatments: {', '.join(d.variations[1:])}")
        interval = api.settings.alert_interval_seconds
        return {"experiment": experiment_id, "points": len(snaps),
                "interval_seconds": interval,
                "tiers": [{"resolution_seconds": t.resolution, "span_seconds": t.span}
                          for t in history.tiers(interval)],
                "series": history.series(snaps, metric, treatment, estimator),
                "srm": {"ts": [s["ts"] for s in snaps],
                        "p_value": [s.get("srm_p") for s in snaps],
                        "sequential_p_value": [s.get("srm_seq_p") for s in snaps]}}

    document_errors(app, read=require_read, admin=require_admin,
                    definition_routes={"create_experiment", "replace_experiment"},
                    redis_free={"healthz"})
    return app
