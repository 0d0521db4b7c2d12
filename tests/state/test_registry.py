"""Experiment definitions: validation messages name the field; YAML and JSON round trips."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from estimators.analysis import AnalysisSettings
from state.definition import (
    CandidateDef,
    DefinitionError,
    ExperimentDef,
    MetricDef,
    RatioDef,
    load_definition,
    parse_definition,
)
from state.layout import analysis_settings
from tests.support.data import HILL_YAML

FULL: dict[str, Any] = {
    "id": "checkout.v2",
    "variations": ["control", "treatment"],
    "weights": [1, 3],
    "metrics": [
        {"name": "revenue", "event": "purchase", "aggregate": "sum", "cap": 1000},
        {"name": "orders", "event": "purchase", "aggregate": "count"},
        {"name": "sessions", "event": "session", "aggregate": "count"},
        {"name": "converted", "event": "purchase", "aggregate": "binary"},
    ],
    "ratios": [{"name": "revenue_per_session", "numerator": "revenue",
                "denominator": "sessions"}],
    "covariates": ["age_days"],
    "pre_period": ["revenue"],
    "lookback_seconds": 14 * 86400,
    "in_experiment": [{"name": "pageviews", "event": "pageview", "aggregate": "count"}],
    "start": "2024-03-01T00:00:00Z",
    "end": 1712000000,
    "status": "running",
    "primary_metric": "revenue_per_session",
    "guardrails": ["orders"],
    "model": "forest",
    "outcome_window_seconds": 7 * 86400,
    "alpha": 0.1,
    "sequential_tuning": 20000,
    "prior_sigma": 0.2,
    "selection_alpha": 0.01,
    "selection_holm": True,
    "correction": "bh",
}


def minimal(**overrides: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": "exp",
        "variations": ["a", "b"],
        "metrics": [{"name": "m", "event": "e", "aggregate": "sum"}],
    }
    d.update(overrides)
    return {k: v for k, v in d.items() if v is not ...}


def error(data: dict[str, Any]) -> str:
    with pytest.raises(DefinitionError) as info:
        parse_definition(data)
    return str(info.value)


def test_example_yaml_parses(tmp_path: Path) -> None:
    path = tmp_path / "hill.yaml"
    path.write_text(HILL_YAML)
    d = load_definition(str(path))
    assert d.id == "hill"
    assert d.variations == ("No E-Mail", "Mens E-Mail", "Womens E-Mail")
    assert d.control == "No E-Mail"
    assert sum(d.weights) == pytest.approx(1.0)
    assert d.weights == pytest.approx((0.333, 0.333, 0.334))
    assert d.metrics == (MetricDef("spend", "spend", "sum", 500.0),
                         MetricDef("visit", "visit", "binary"))
    assert d.covariates == ("recency", "history")
    assert d.in_experiment == (CandidateDef("pageviews", "pageview", "count"),)
    assert d.primary == "spend" and d.primary_metric is None
    assert d.status == "running" and d.model is None  # no learner unless asked for
    assert analysis_settings(d) == AnalysisSettings()


def test_full_definition() -> None:
    d = parse_definition(FULL)
    assert d.weights == (0.25, 0.75)
    assert d.ratios == (RatioDef("revenue_per_session", "revenue", "sessions"),)
    assert d.start == datetime(2024, 3, 1, tzinfo=UTC).timestamp()
    assert d.end == 1712000000.0
    assert d.primary == "revenue_per_session"
    assert d.metric_names()[-1] == "revenue_per_session"
    assert analysis_settings(d) == AnalysisSettings(0.1, 20000, 0.01, True, 0.2)
    assert d.is_active(d.start or 0) and not d.is_active(d.end or 0)
    assert not d.is_active((d.start or 0) - 1)


def test_defaults() -> None:
    d = parse_definition(minimal(variations=["a", "b", "c"]))
    assert d.weights == pytest.approx((1 / 3,) * 3)
    assert d.ratios == () and d.covariates == () and d.pre_period == ()
    assert (d.start, d.end, d.correction, d.outcome_window_seconds) == (None,) * 4
    assert d.alpha == 0.05 and d.sequential_tuning == 5000.0 and d.prior_sigma == 0.3


def test_weights_are_normalised() -> None:
    assert parse_definition(minimal(weights=[2, 2])).weights == (0.5, 0.5)
    assert parse_definition(minimal(weights=[10, 30])).weights == (0.25, 0.75)


def test_json_round_trip() -> None:
    for d in (parse_definition(FULL), parse_definition(minimal()),
              load_definition_from_text(HILL_YAML)):
        raw = d.to_json()
        assert isinstance(raw, bytes)
        back = ExperimentDef.from_json(raw)
        assert back == d
        assert ExperimentDef.from_json(raw.decode()) == d
        assert back.to_json() == raw
        assert parse_definition(json.loads(raw)) == d


def load_definition_from_text(text: str) -> ExperimentDef:
    import yaml

    return parse_definition(yaml.safe_load(text))


def test_yaml_and_json_files_agree(tmp_path: Path) -> None:
    import yaml

    y = tmp_path / "full.yml"
    y.write_text(yaml.safe_dump(FULL))
    j = tmp_path / "full.json"
    j.write_text(json.dumps(FULL))
    assert load_definition(str(y)) == load_definition(str(j)) == parse_definition(FULL)


def test_yaml_dates_and_naive_times_are_utc(tmp_path: Path) -> None:
    p = tmp_path / "d.yaml"
    p.write_text(HILL_YAML + "start: 2024-01-01\nend: 2024-01-02 12:00:00\n")
    d = load_definition(str(p))
    assert d.start == datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    assert d.end == datetime(2024, 1, 2, 12, tzinfo=UTC).timestamp()


def test_replace_keeps_validation() -> None:
    d = parse_definition(minimal())
    assert replace(d, status="stopped").status == "stopped"
    with pytest.raises(DefinitionError, match=r"^status"):
        replace(d, status="paused")  # type: ignore[arg-type]


def test_direct_construction_validates_and_normalises() -> None:
    d = ExperimentDef("x", ("a", "b"), (), (MetricDef("m", "e", "count"),))
    assert d.weights == (0.5, 0.5)
    d = ExperimentDef("x", ("a", "b"), (1.0, 3.0), (MetricDef("m", "e", "count"),))
    assert d.weights == (0.25, 0.75)
    with pytest.raises(DefinitionError, match=r"^metrics\[0\]\.cap"):
        ExperimentDef("x", ("a", "b"), (), (MetricDef("m", "e", "binary", cap=3.0),))


BAD: list[tuple[dict[str, Any], str]] = [
    (minimal(id=...), "id: required"),
    (minimal(id=""), "id: must not be empty"),
    (minimal(id="has space"), "id: 'has space' must match"),
    (minimal(id="x" * 65), "id:"),
    (minimal(id=2024), "id: expected a string, got an integer 2024 (quote it in YAML)"),
    (minimal(variations=...), "variations: required"),
    (minimal(variations="a,b"), "variations: expected a list"),
    (minimal(variations=["a"]), "variations: need at least 2"),
    (minimal(variations=["a", "a"]), "variations[1]: duplicate variation 'a'"),
    (minimal(variations=["a", ""]), "variations[1]: must not be empty"),
    (minimal(variations=["a", 1]), "variations[1]: expected a string"),
    (minimal(variations=["a", "b" * 257]), "variations[1]: longer than 256"),
    (minimal(weights=[1]), "weights: 1 weights for 2 variations"),
    (minimal(weights=[1, 0]), "weights[1]: must be > 0"),
    (minimal(weights=[1, -1]), "weights[1]: must be > 0"),
    (minimal(weights=[1, True]), "weights[1]: expected a number, got a boolean"),
    (minimal(weights=[1, "x"]), "weights[1]: expected a number"),
    (minimal(weights=[1, float("nan")]), "weights[1]: must be finite"),
    (minimal(weights=[1, float("inf")]), "weights[1]: must be finite"),
    (minimal(weights=[1e308, 1e308]), "weights: too large"),
    (minimal(metrics=...), "metrics: required"),
    (minimal(metrics=[]), "metrics: at least one metric"),
    (minimal(metrics={"name": "m"}), "metrics: expected a list"),
    (minimal(metrics=["m"]), "metrics[0]: expected a mapping"),
    (minimal(metrics=[{"name": "m", "event": "e"}]), "metrics[0].aggregate: required"),
    (minimal(metrics=[{"event": "e", "aggregate": "sum"}]), "metrics[0].name: required"),
    (minimal(metrics=[{"name": "m", "aggregate": "sum"}]), "metrics[0].event: required"),
    (minimal(metrics=[{"name": "m", "event": "e", "aggregate": "sum"},
                      {"name": "n", "event": "e", "aggregate": "mean"}]),
     "metrics[1].aggregate: must be one of binary, count, sum"),
    (minimal(metrics=[{"name": "m", "event": "e", "aggregate": "sum", "capp": 3}]),
     "metrics[0]: unknown field(s) capp"),
    (minimal(metrics=[{"name": "m", "event": "e", "aggregate": "sum", "cap": 0}]),
     "metrics[0].cap: must be > 0"),
    (minimal(metrics=[{"name": "m", "event": "e", "aggregate": "sum", "cap": "big"}]),
     "metrics[0].cap: expected a number"),
    (minimal(metrics=[{"name": "m", "event": "e", "aggregate": "binary", "cap": 1}]),
     "metrics[0].cap: only count and sum"),
    (minimal(metrics=[{"name": "bad name", "event": "e", "aggregate": "sum"}]),
     "metrics[0].name:"),
    (minimal(metrics=[{"name": "m", "event": "", "aggregate": "sum"}]),
     "metrics[0].event: must not be empty"),
    (minimal(metrics=[{"name": "m", "event": "e", "aggregate": "sum"},
                      {"name": "m", "event": "f", "aggregate": "count"}]),
     "metrics[1].name: name 'm' is already used by metrics[0].name"),
    (minimal(covariates=["m"]), "metrics[0].name: name 'm' is already used by covariates[0]"),
    (minimal(covariates=["x", "x"]), "covariates[1]: name 'x' is already used"),
    (minimal(covariates="x"), "covariates: expected a list"),
    (minimal(ratios=[{"name": "r", "numerator": "m", "denominator": "nope"}]),
     "ratios[0].denominator: 'nope' is not a metric"),
    (minimal(ratios=[{"name": "r", "numerator": "zz", "denominator": "m"}]),
     "ratios[0].numerator: 'zz' is not a metric"),
    (minimal(ratios=[{"name": "r", "numerator": "m", "denominator": "m"}]),
     "ratios[0]: numerator and denominator must differ"),
    (minimal(ratios=[{"name": "m", "numerator": "m", "denominator": "n"}],
             metrics=[{"name": "m", "event": "e", "aggregate": "sum"},
                      {"name": "n", "event": "e", "aggregate": "count"}]),
     "ratios[0].name: name 'm' is already used"),
    (minimal(ratios=[{"name": "r", "numerator": "m"}]), "ratios[0].denominator: required"),
    (minimal(in_experiment=[{"name": "m", "event": "e", "aggregate": "count"}]),
     "in_experiment[0].name: name 'm' is already used by metrics[0].name"),
    (minimal(in_experiment=[{"name": "z", "event": "e", "aggregate": "binary"}]),
     "in_experiment[0].aggregate: must be one of count, sum"),
    (minimal(in_experiment=[{"name": "z", "event": "e", "aggregate": "sum", "cap": 1}]),
     "in_experiment[0]: unknown field(s) cap"),
    (minimal(pre_period=["nope"], lookback_seconds=10), "pre_period[0]: 'nope' is not a metric"),
    (minimal(pre_period=["m"]), "lookback_seconds: must be > 0 when pre_period"),
    (minimal(pre_period=["m", "m"], lookback_seconds=1), "pre_period[1]: duplicate"),
    (minimal(lookback_seconds=-1), "lookback_seconds: must be >= 0"),
    (minimal(start="2024-02-01", end="2024-01-01"), "end: must be after start"),
    (minimal(start=5, end=5), "end: must be after start"),
    (minimal(start="soon"), "start: not an ISO-8601 time"),
    (minimal(end=True), "end: expected a number"),
    (minimal(status="paused"), "status: must be one of running, stopped"),
    (minimal(primary_metric="nope"), "primary_metric: 'nope' is not a metric or ratio"),
    (minimal(guardrails=["nope"]), "guardrails[0]: 'nope' is not a metric or ratio"),
    (minimal(guardrails=["m", "m"]), "guardrails[1]: duplicate"),
    (minimal(model="xgboost"), "model: must be one of linear, logistic, tree, forest"),
    (minimal(outcome_window_seconds=0), "outcome_window_seconds: must be > 0"),
    (minimal(alpha=1), "alpha: must be between 0 and 1"),
    (minimal(alpha=0), "alpha: must be between 0 and 1"),
    (minimal(alpha="0.05"), "alpha: expected a number"),
    (minimal(sequential_tuning=0), "sequential_tuning: must be > 0"),
    (minimal(prior_sigma=-0.1), "prior_sigma: must be > 0"),
    (minimal(selection_alpha=1.5), "selection_alpha: must be between 0 and 1"),
    (minimal(selection_holm="yes"), "selection_holm: expected true or false"),
    (minimal(correction="bonferroni"), "correction: must be one of holm, bh"),
    (minimal(colour="red", size=3), "colour, size: unknown field(s)"),
]


@pytest.mark.parametrize(("data", "message"), BAD)
def test_errors_name_the_field(data: dict[str, Any], message: str) -> None:
    assert error(copy.deepcopy(data)).startswith(message)


def test_not_a_mapping() -> None:
    with pytest.raises(DefinitionError, match=r"^definition: expected a mapping"):
        parse_definition([1, 2])  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match=r"^definition: expected a JSON object"):
        ExperimentDef.from_json(b"[1]")
    with pytest.raises(DefinitionError, match=r"^definition: not valid JSON"):
        ExperimentDef.from_json(b"{")


def test_load_definition_errors(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match=r"expected a \.yaml, \.yml or \.json"):
        load_definition(str(tmp_path / "x.txt"))
    with pytest.raises(DefinitionError, match="cannot read"):
        load_definition(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: [unclosed\n")
    with pytest.raises(DefinitionError, match="not valid YAML"):
        load_definition(str(bad))
    bad.write_text("- just\n- a list\n")
    with pytest.raises(DefinitionError, match="expected a mapping at the top level"):
        load_definition(str(bad))
    badj = tmp_path / "bad.json"
    badj.write_text("{nope")
    with pytest.raises(DefinitionError, match="not valid JSON"):
        load_definition(str(badj))
    typo = tmp_path / "typo.yaml"
    typo.write_text(HILL_YAML.replace("covariates:", "covariate:"))
    with pytest.raises(DefinitionError, match=r"^covariate: unknown field"):
        load_definition(str(typo))
