"""The dashboard page and the operations endpoints (probes, /metrics)."""

from __future__ import annotations

import logging
from importlib import resources

import redis
import redis.cluster
from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CollectorRegistry, generate_latest

from state.registry import DefinitionError
from workers.api.auth import Read
from workers.api.errors import error_response
from workers.api.state import ApiState

log = logging.getLogger("liftstream.api")


def _dashboard_html() -> bytes:
    return resources.files("workers.api").joinpath("static/dashboard.html").read_bytes()


_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                               "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def ops_router(api: ApiState, metrics_registry: CollectorRegistry) -> APIRouter:
    """The dashboard page and the operations endpoints (probes, /metrics)."""
    router = APIRouter()
    page = _dashboard_html()

    @router.get("/", include_in_schema=False)
    def dashboard() -> HTMLResponse:
        return HTMLResponse(page, headers=_PAGE_HEADERS)

    @router.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @router.get("/healthz", tags=["operations"], summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", tags=["operations"], summary="Redis reachable and registry readable",
             responses={503: {"description": "not ready"}})
    def readyz() -> JSONResponse:
        try:
            api.client.ping()
            version = api.registry.version()
            count = len(api.registry.list())
        except (redis.RedisError, redis.cluster.RedisClusterException, OSError) as exc:
            log.warning("readyz: Redis is not reachable: %s", exc)  # addresses: log only
            return error_response(503, "not_ready", "Redis is not reachable")
        except (DefinitionError, ValueError) as exc:
            log.warning("readyz: registry is not readable: %s", exc)
            return error_response(503, "not_ready", "the experiment registry is not readable")
        return JSONResponse({"status": "ready", "redis": "ok",
                             "registry": {"experiments": count, "version": version}})

    @router.get("/metrics", tags=["operations"], summary="Prometheus metrics",
             response_class=Response)
    def metrics(_: Read) -> Response:
        return Response(generate_latest(metrics_registry),
                        media_type="text/plain; version=0.0.4; charset=utf-8")
    return router
