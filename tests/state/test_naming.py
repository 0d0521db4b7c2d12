"""Model ids are unambiguous across experiments; legacy dotted ids still resolve."""

from __future__ import annotations

from typing import Any

import pytest

from state.definition import ExperimentDef, parse_definition
from state.layout import ExperimentLayout
from state.models import ModelRegistry
from state.naming import (
    legacy_model_id,
    legacy_targets,
    model_id,
    parse_model_id,
    resolve_model_id,
)
from workers.learner.checkpoint import resolve_kind


def experiment(exp_id: str, metric: str, model: str = "linear") -> ExperimentDef:
    return parse_definition({"id": exp_id, "variations": ["a", "b"], "covariates": ["x"],
                             "model": model,
                             "metrics": [{"name": metric, "event": "buy", "aggregate": "sum"}]})


def test_colliding_legacy_ids_are_now_distinct() -> None:
    a, b = experiment("shop.v2", "rev", "tree"), experiment("shop", "v2.rev", "linear")
    ids_a, ids_b = ExperimentLayout.of(a).model_ids, ExperimentLayout.of(b).model_ids
    assert legacy_model_id("shop.v2", "rev") == legacy_model_id("shop", "v2.rev")  # the bug
    assert ids_a == {"rev": "shop.v2/rev"} and ids_b == {"v2.rev": "shop/v2.rev"}
    assert ids_a["rev"] != ids_b["v2.rev"]
    defs = {a.id: a, b.id: b}
    assert resolve_model_id("shop.v2/rev", defs) == ("shop.v2", "rev")
    assert resolve_model_id("shop/v2.rev", defs) == ("shop", "v2.rev")
    assert resolve_kind("shop.v2/rev", defs) == "tree"
    assert resolve_kind("shop/v2.rev", defs) == "linear"
    # the shared legacy id names both (they trained one model before)
    assert sorted(legacy_targets("shop.v2.rev", defs)) == [("shop", "v2.rev"),
                                                           ("shop.v2", "rev")]


@pytest.mark.parametrize(("exp", "metric"), [("a", "b"), ("a.b", "c.d"), ("-", "_"),
                                             ("x" * 64, "y" * 64), ("1.2.3", "4")])
def test_round_trip(exp: str, metric: str) -> None:
    assert parse_model_id(model_id(exp, metric)) == (exp, metric)


@pytest.mark.parametrize("mid", ["shop.rev", "a/b/c", "/b", "a/", "", "a b/c", "hist.a",
                                 "x" * 65 + "/m"])
def test_other_ids_do_not_parse(mid: str) -> None:
    assert parse_model_id(mid) is None


def test_unregistered_and_legacy_ids_resolve() -> None:
    d = experiment("exp.v2", "rev.net", "tree")
    defs: dict[str, Any] = {d.id: d}
    assert resolve_model_id("exp.v2.rev.net", defs) == ("exp.v2", "rev.net")  # legacy
    assert resolve_model_id("exp.v2/other", defs) is None
    assert resolve_model_id("nope/rev.net", defs) is None
    assert resolve_model_id("history.revenue", defs) is None
    assert resolve_kind("history.revenue", defs) == "linear"


def test_short_hmac_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="LIFTSTREAM_MODEL_HMAC_KEY: at least 32 bytes"):
        ModelRegistry(None, "k")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got 31"):
        ModelRegistry(None, b"k" * 31)  # type: ignore[arg-type]
    assert ModelRegistry(None, "k" * 32).key == b"k" * 32  # type: ignore[arg-type]
