"""What the API request handlers share: the app state, cached results and their shapes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.cluster
from prometheus_client import CollectorRegistry

from state.registry import (
    ExperimentDef,
    Registry,
)
from state.store import Client
from stream.lag import LagMonitor
from workers.api.auth import Auth
from workers.api.cache import SingleFlightCache
from workers.settings import Settings

SEQUENTIAL_FIELDS = ("seq_ci_low", "seq_ci_high", "seq_p_value", "adjusted_seq_p_value")


@dataclass
class CachedResult:
    """One computed result document (kept as JSON: compact, and nothing for the garbage
    collector to walk) and its encodings per response shape."""

    definition: ExperimentDef
    doc: bytes
    computed_at: float
    last_event_ts: float | None  # the first slice's freshness (the response's freshness)
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


def result_size(res: CachedResult | None) -> int:
    """Bytes charged to a cached result: 3 × its JSON (the document and its encodings)."""
    return 0 if res is None else 3 * len(res.doc)
