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
(:mod:`workers.api.cache`), so N polling dashboards cost Redis one read per interval. For one more
TTL after expiry the previous document is served while a single refresh runs (so pollers never
queue behind a recomputation); ``freshness.computed_at`` in every answer says how old it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from state.registry import Registry
from state.store import Client
from stream.lag import LagMonitor
from workers.api.auth import Auth, require_admin, require_read, resolve_auth
from workers.api.cache import ComputeGate, SingleFlightCache
from workers.api.compute_process import ComputeProcesses, history_snapshot
from workers.api.docs import install_docs
from workers.api.errors import ApiError, install_error_handlers
from workers.api.experiments import experiments_router
from workers.api.guard import BodyLimit, ErrorShield
from workers.api.history_recorder import HistoryRecorder
from workers.api.metrics import IngestCollector, MetricsMiddleware, RequestMetrics
from workers.api.openapi import document_errors
from workers.api.ops import ops_router
from workers.api.results import results_router
from workers.api.state import ApiState, api_client, result_size, shape_results
from workers.settings import Settings

__all__ = ["ApiError", "Auth", "create_app", "resolve_auth", "shape_results"]


def create_app(settings: Settings, *, auth: Auth | None = None, client: Client | None = None,
               lag_interval: float | None = 5.0, record_history: bool = False,
               compute_processes: bool = False) -> FastAPI:
    """The FastAPI application; ``lag_interval=None`` disables the Kafka lag monitor;
    ``record_history`` records result history while the app runs; ``compute_processes``
    computes documents in child processes instead of threads (:mod:`.compute_process`;
    ``liftstream api`` does both)."""
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
                                     size_of=result_size, gate=gate),
                   SingleFlightCache(ttl, settings.results_cache_entries, gate=gate),
                   metrics_registry, lag)
    request_metrics = RequestMetrics(metrics_registry)
    metrics_registry.register(IngestCollector(api))

    processes = (ComputeProcesses(settings, settings.api_compute_threads)
                 if compute_processes else None)
    recorder = (HistoryRecorder(client, settings.alert_interval_seconds,
                                snapshot_of=None if processes is None else
                                lambda d, now: processes.call(history_snapshot, d, now))
                if record_history else None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if api.lag is not None:
            api.lag.start()
        if processes is not None:
            processes.start()
        recording = (asyncio.get_running_loop().create_task(recorder.run_through(
            gate.run_admitted)) if recorder is not None else None)  # through the gate
        try:
            yield
        finally:
            if recording is not None:
                recording.cancel()
                with suppress(asyncio.CancelledError):
                    await recording
            if processes is not None:
                processes.stop()
            if api.lag is not None:
                api.lag.stop()

    app = FastAPI(
        title="liftstream", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
        description="Live A/B-test results: variance-reduced effects, fixed-horizon and "
                    "anytime-valid confidence intervals, posterior means, SRM checks. "
                    "Authenticate with `Authorization: Bearer <token>` (read or admin scope).")
    app.state.api = api
    app.state.compute = processes  # None: documents computed in the gate's threads
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes,
                       setting="LIFTSTREAM_API_MAX_BODY_BYTES")
    app.add_middleware(MetricsMiddleware, metrics=request_metrics)  # counts the 413s too
    app.add_middleware(ErrorShield)  # outermost: request ids, generic 500s
    install_docs(app)
    install_error_handlers(app)
    app.include_router(ops_router(api, metrics_registry))
    app.include_router(experiments_router(api))
    app.include_router(results_router(api, gate, processes))

    document_errors(app, read=require_read, admin=require_admin,
                    definition_routes={"create_experiment", "replace_experiment"},
                    redis_free={"healthz"})
    return app
