"""The result endpoints: current results (cached, shaped) and history."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, Query
from fastapi.responses import Response

from estimators import document
from state import history
from state.definition import ExperimentDef
from state.results import experiment_document_with
from workers.api.auth import Read
from workers.api.cache import ComputeGate
from workers.api.compute_process import ComputeProcesses, results_body
from workers.api.errors import ApiError
from workers.api.openapi import RESULTS_SCHEMA
from workers.api.params import EstimatorName, ExperimentId
from workers.api.state import ApiState, CachedResult, shape_results


def _check_dimension(d: ExperimentDef | None, experiment_id: str, by: str) -> None:
    """404 for an unknown experiment, and for an unknown ``by`` (no such slices; the detail
    names the dimensions)."""
    if d is None:
        raise ApiError(404, "not_found", f"no experiment {experiment_id!r}")
    names = [x.name for x in d.dimensions]
    if by not in names:
        raise ApiError(404, "not_found", f"by: {by[:70]!r} is not a dimension of "
                       f"experiment {experiment_id!r} (dimensions: "
                       f"{', '.join(names) or 'none'})")


def results_router(api: ApiState, gate: ComputeGate,
                   processes: ComputeProcesses | None = None) -> APIRouter:
    """The result endpoints: current results (cached, shaped) and history; documents are
    computed in ``processes`` when given, else in the gate's threads."""
    router = APIRouter()

    # -- results --------------------------------------------------------------------------
    def compute(experiment_id: str, alpha: float | None, correction: str | None,
                by: str | None = None) -> CachedResult | None:
        top: dict[str, Any]
        if processes is not None:  # the document built and encoded in a child process
            got = processes.call(results_body, experiment_id, alpha, correction, by)
            if got is None:
                return None
            d, body = got
            top = msgspec.json.decode(body, type=dict[str, msgspec.Raw])  # top level only
        else:
            found = api.registry.get(experiment_id)
            if found is None:
                return None
            d = found
            corr: Any = correction
            top = experiment_document_with(api.client, d, corr, alpha, by)
            body = msgspec.json.encode(top)
        fresh = document.first_freshness(body)
        res = CachedResult(d, body, time.time(),
                           fresh.last_event_ts if fresh is not None else None)
        encode(res, None, True, alpha, correction, top)  # here, in the worker thread
        return res

    def encode(res: CachedResult, estimator: str | None, sequential: bool,
               alpha: float | None, correction: str | None,
               computed: dict[str, Any] | None = None) -> bytes:
        key = (estimator, sequential)
        body = res.bodies.get(key)
        if body is None:
            source = computed if computed is not None else msgspec.json.decode(res.doc)
            doc = shape_results(source, estimator, sequential)
            last = res.last_event_ts
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

    @router.get("/v1/experiments/{experiment_id}/results", tags=["results"],
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
        by: Annotated[str | None, Query(
            max_length=128, description="one slice per value of this dimension (its "
                                        "definition's `dimensions`), BH-adjusted across "
                                        "values")] = None,
    ) -> Response:
        if by is not None:
            _check_dimension(await gate.run_admitted(
                lambda: api.registry.get(experiment_id)), experiment_id, by)
        res = await api.results.get((experiment_id, alpha, correction, by),
                                    lambda: compute(experiment_id, alpha, correction, by))
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

    @router.get("/v1/experiments/{experiment_id}/history", tags=["results"],
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
    return router
