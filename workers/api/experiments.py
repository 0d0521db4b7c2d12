"""The registry endpoints: list, create, read, replace and stop experiment definitions."""

from __future__ import annotations

import logging
from typing import Any

import redis
import redis.cluster
from fastapi import APIRouter

from state.definition import DefinitionError, ExperimentDef, parse_definition
from state.registry import ExperimentExists
from state.results import record_finished
from workers.api.auth import Admin, Read
from workers.api.errors import ApiError
from workers.api.params import DefinitionBody, ExperimentId, StrictDefinitionText
from workers.api.state import ApiState

log = logging.getLogger("liftstream.api")


def experiments_router(api: ApiState) -> APIRouter:
    """The registry endpoints: list, create, read, replace and stop experiment definitions."""
    router = APIRouter()

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

    @router.get("/v1/experiments", tags=["experiments"], summary="List experiments")
    def list_experiments(_: Read) -> dict[str, Any]:
        return {"experiments": [d.to_dict() for d in api.registry.list()]}

    @router.post("/v1/experiments", tags=["experiments"], status_code=201,
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

    @router.get("/v1/experiments/{experiment_id}", tags=["experiments"],
             summary="One experiment's definition")
    def get_experiment(experiment_id: ExperimentId, _: Read) -> dict[str, Any]:
        return must_get(experiment_id).to_dict()

    @router.put("/v1/experiments/{experiment_id}", tags=["experiments"],
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

    @router.post("/v1/experiments/{experiment_id}/stop", tags=["experiments"],
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
    return router
