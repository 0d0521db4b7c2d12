"""The API's OpenAPI document as the app really answers: error bodies, statuses, headers.

FastAPI documents only the success answer and its own 422 shape; the API answers every error
as ``{"error": code, "detail": text, ...}`` (:data:`ERROR_SCHEMA`). :func:`document_errors`
adds to every operation the error statuses it can answer (401 for a missing or unknown token,
403 on admin endpoints, 404 for unknown ids, 413 for oversized bodies, 422 for bad
parameters, 503 when Redis is down or too much work is queued) with that schema, and the
definition request body gets a JSON Schema (:data:`DEFINITION_SCHEMA`) of its fields.
Cross-field rules (the primary metric is one of the metrics, names unique, ...) cannot be
expressed in JSON Schema: ``parse_definition`` checks them and answers 422 naming the field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Scope

from estimators import document
from state.definition import AGGREGATES, CANDIDATE_AGGREGATES, CORRECTIONS, MODELS, STATUSES
from state.naming import ID_REGEX

__all__ = ["DEFINITION_SCHEMA", "ERROR_SCHEMA", "RESULTS_SCHEMA", "allowed_methods",
           "api_routes", "document_errors"]

#: The results endpoint's answer, generated from the typed document (estimators.document).
RESULTS_SCHEMA, _RESULT_COMPONENTS = document.json_schema()

_ID = {"type": "string", "pattern": f"^{ID_REGEX}$"}
_NAME = {"type": "string", "minLength": 1}
_NUMBER = {"type": "number"}
_POSITIVE = {"type": "number", "exclusiveMinimum": 0}
_PROBABILITY = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}


def _obj(properties: dict[str, Any], required: Iterable[str]) -> dict[str, Any]:
    """An object of ``properties``; the optional ones may be null (null means "not set")."""
    need = list(required)
    props = {k: v if k in need else {"anyOf": [v, {"type": "null"}]}
             for k, v in properties.items()}
    return {"type": "object", "properties": props, "required": need,
            "additionalProperties": False}


_Q = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
_QUANTILE_FIELDS: dict[str, Any] = {  # aggregate: quantile (estimators.quantiles)
    "q": _Q, "quantiles": {"type": "array", "items": _Q, "minItems": 1, "maxItems": 10},
    "accuracy": {"type": "number", "minimum": 0.0001, "maximum": 0.01}}


DEFINITION_SCHEMA: dict[str, Any] = {
    **_obj({
        "id": _ID,
        "variations": {"type": "array", "items": _NAME, "minItems": 2, "uniqueItems": True,
                       "description": "the first is the control"},
        "weights": {"type": "array", "items": _POSITIVE,
                    "description": "one per variation (normalised to sum 1)"},
        "metrics": {"type": "array", "minItems": 1, "items": _obj({
            "name": _ID, "event": _NAME,
            "aggregate": {"enum": list(AGGREGATES)},
            "cap": _POSITIVE, **_QUANTILE_FIELDS}, ("name", "event", "aggregate"))},
        "ratios": {"type": "array", "items": _obj(
            {"name": _ID, "numerator": _NAME, "denominator": _NAME},
            ("name", "numerator", "denominator"))},
        "covariates": {"type": "array", "items": _NAME, "uniqueItems": True},
        "pre_period": {"type": "array", "items": _NAME, "uniqueItems": True},
        "lookback_seconds": _NUMBER,
        "dimensions": {"type": "array", "items": {"anyOf": [_NAME, _obj(
            {"name": _NAME, "max_values": {"type": "integer", "minimum": 1}}, ("name",))]}},
        "in_experiment": {"type": "array", "items": _obj({
            "name": _ID, "event": _NAME,
            "aggregate": {"enum": list(CANDIDATE_AGGREGATES)}},
            ("name", "event", "aggregate"))},
        "start": {"type": ["number", "string"],
                  "description": "epoch seconds or an ISO 8601 time"},
        "end": {"type": ["number", "string"],
                "description": "epoch seconds or an ISO 8601 time"},
        "status": {"enum": list(STATUSES)},
        "primary_metric": _NAME,
        "guardrails": {"type": "array", "items": _NAME, "uniqueItems": True},
        "model": {"enum": list(MODELS)},
        "outcome_window_seconds": _POSITIVE,
        "alpha": _PROBABILITY,
        "sequential_tuning": _POSITIVE,
        "prior_sigma": _POSITIVE,
        "selection_alpha": _PROBABILITY,
        "selection_holm": {"type": "boolean"},
        "correction": {"enum": list(CORRECTIONS)},
    }, ("id", "variations", "metrics")),
    "description": "an experiment definition (docs/api.md); cross-field rules (names unique, "
                   "the primary metric and guardrails among the metrics, ...) are checked by "
                   "the server and answered with 422 naming the field",
}

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "title": "Error",
    "properties": {
        "error": {"type": "string", "description": "a stable code, e.g. not_found"},
        "detail": {"type": "string", "description": "what went wrong and how to fix it"},
        "problems": {"type": "array", "items": {
            "type": "object",
            "properties": {"location": {"type": "string"},
                           "field": {"type": ["string", "null"]},
                           "message": {"type": "string"}, "text": {"type": "string"}},
            "required": ["location", "message", "text"]},
            "description": "422: one entry per invalid parameter"},
        "request_id": {"type": "string", "description": "500: the id in the server log"},
        "limit": {"type": "integer", "description": "413: the body size limit in bytes"},
    },
    "required": ["error", "detail"],
}

_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                                "schema": {"type": "string"}}}
_WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": "Bearer challenge",
                                          "schema": {"type": "string"}}}
_DESCRIPTIONS = {
    401: "missing or unknown bearer token",
    403: "the token lacks the admin scope",
    404: "no such experiment",
    409: "conflict: the id exists (create) or a layout field changed (replace)",
    413: "request body larger than LIFTSTREAM_API_MAX_BODY_BYTES",
    422: "invalid parameter or body; `problems` lists each invalid parameter",
    503: "Redis unavailable (`unavailable`) or too many computations in progress (`busy`)",
}


def _error(status: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": _DESCRIPTIONS[status],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if status == 401:
        out["headers"] = _WWW_AUTHENTICATE
    if status == 503:
        out["headers"] = _RETRY_AFTER
    return out


def _calls(dependant: Dependant) -> set[Callable[..., Any]]:
    found: set[Callable[..., Any]] = set()
    for d in dependant.dependencies:
        if d.call is not None:
            found.add(d.call)
        found |= _calls(d)
    return found


def document_errors(app: FastAPI, *, read: Callable[..., Any], admin: Callable[..., Any],
                    definition_routes: set[str], redis_free: set[str]) -> None:
    """Make ``app.openapi()`` document the error answers of every operation.

    ``read`` / ``admin``: the auth dependencies; ``definition_routes``: endpoint names whose
    body is a definition; ``redis_free``: endpoint names that never read Redis.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description,
                          routes=app.routes)
        doc.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
        doc["components"]["schemas"].update(_RESULT_COMPONENTS)
        for schemas in (doc["components"]["schemas"],):
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
        for route in api_routes(app.routes):
            if route.include_in_schema:
                for method in route.methods or ():
                    op = doc["paths"][route.path_format][method.lower()]
                    _patch(op, route, read, admin, route.name in definition_routes,
                           route.name not in redis_free)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _patch(op: dict[str, Any], route: APIRoute, read: Callable[..., Any],
           admin: Callable[..., Any], definition: bool, uses_redis: bool) -> None:
    calls = _calls(route.dependant)
    responses: dict[str, Any] = op.setdefault("responses", {})
    codes: list[int] = []
    if read in calls or admin in calls:
        codes.append(401)
    if admin in calls:
        codes.append(403)
    if route.dependant.path_params:
        codes.append(404)
    if route.dependant.body_params:
        codes.append(413)
    if route.dependant.body_params or route.dependant.query_params or \
            route.dependant.path_params:
        codes.append(422)
    if definition:
        codes.append(409)
    if uses_redis:
        codes.append(503)
    for code in codes:
        responses[str(code)] = _error(code)
    for status, answer in list(responses.items()):  # e.g. 503 declared on the route
        if status.startswith(("4", "5")) and "content" not in answer:
            answer["content"] = _error(422)["content"]
    if definition:  # PUT: the id may be left out (it is the URL's)
        schema = DEFINITION_SCHEMA
        if route.dependant.path_params:
            schema = {**schema, "required": [r for r in schema["required"] if r != "id"]}
        op["requestBody"]["content"]["application/json"]["schema"] = schema


def api_routes(routes: Iterable[Any]) -> Iterator[APIRoute]:
    """Every endpoint of ``routes``, also inside included routers (FastAPI ≥ 0.150 keeps an
    included router as one route holding the original router; earlier versions copy its
    routes). The app's routers are included without a prefix."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from api_routes(inner.routes)


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route of the request's path accepts (for a 405's ``Allow``)."""
    methods: set[str] = set()
    for route in api_routes(app.router.routes):
        match, _ = route.matches({**scope, "method": "__none__"})
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)
