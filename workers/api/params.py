"""Request parameters shared by the API routers: ids, estimator names, definition bodies."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Body, Depends, Request
from fastapi import Path as PathParam

from estimators.analysis import ESTIMATORS
from state.definition import DefinitionError
from state.limits import check_text_size, refuse_duplicate_json_keys
from state.naming import ID_REGEX as ID_PATTERN_TEXT
from workers.api.errors import ApiError

ID_REGEX = f"^{ID_PATTERN_TEXT}$"
EstimatorName = Literal["diff", "cuped", "cupac", "mlrate", "lin_crespo", "adjusted"]
assert set(EstimatorName.__args__) == set(ESTIMATORS)  # type: ignore[attr-defined]

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
