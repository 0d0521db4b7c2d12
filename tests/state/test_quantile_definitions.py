"""A definition with a quantile metric: parsed, laid out, and refused naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from state.layout import ExperimentLayout
from state.registry import DefinitionError, parse_definition


def _definition(**metric: Any) -> dict[str, Any]:
    return {"id": "q", "variations": ["a", "b"],
            "metrics": [{"name": "spend", "event": "purchase", "aggregate": "quantile",
                         **metric},
                        {"name": "revenue", "event": "purchase", "aggregate": "sum"}]}


def test_quantile_metric_parses_and_round_trips() -> None:
    d = parse_definition(_definition(q=0.9, quantiles=[0.5, 0.99], accuracy=0.005))
    m = d.metrics[0]
    assert m.quantiles == (0.5, 0.9, 0.99) and m.accuracy == 0.005
    assert parse_definition(d.to_dict()) == d
    lay = ExperimentLayout.of(d)
    assert [s.name for s in lay.metric_specs()] == ["revenue"]  # means only
    (spec,) = lay.quantile_specs()
    assert spec.quantiles == (0.5, 0.9, 0.99) and spec.accuracy == 0.005
    assert not lay.counts_events[lay.columns.index("spend")]  # the unit value sums values
    default = ExperimentLayout.of(parse_definition(_definition(q=0.5))).quantile_specs()[0]
    assert default.accuracy == 0.01


@pytest.mark.parametrize("metric,field,says", [
    ({}, "metrics[0].q", "needs q"),
    ({"q": 1.0}, "metrics[0].quantiles[0]", "(0, 1)"),
    ({"q": 0.0}, "metrics[0].quantiles[0]", "(0, 1)"),
    ({"quantiles": [0.5, -0.1]}, "metrics[0].quantiles[0]", "(0, 1)"),
    ({"quantiles": "0.5"}, "metrics[0].quantiles", "list"),
    ({"q": "x"}, "metrics[0].q", ""),
    ({"q": 0.5, "accuracy": 0.05}, "metrics[0].accuracy", "[0.0001, 0.01]"),
    ({"q": 0.5, "accuracy": 0.0}, "metrics[0].accuracy", "[0.0001, 0.01]"),
    ({"q": 0.5, "cap": 10.0}, "metrics[0].cap", "not capped"),
    ({"q": 0.5, "mde": 0.02}, "metrics[0].mde", "mean metrics"),
    ({"quantiles": [i / 20 for i in range(1, 13)]}, "metrics[0].quantiles", "at most 10"),
])
def test_bad_quantile_metric_is_refused_naming_the_field(metric: dict[str, Any], field: str,
                                                          says: str) -> None:
    with pytest.raises(DefinitionError) as err:
        parse_definition(_definition(**metric))
    assert str(err.value).startswith(field), str(err.value)
    assert says in str(err.value)


def test_q_on_a_mean_metric_is_refused() -> None:
    d = _definition(q=0.5)
    d["metrics"][1]["q"] = 0.5
    with pytest.raises(DefinitionError, match=r"^metrics\[1\]\.quantiles"):
        parse_definition(d)


def test_a_quantile_metric_is_no_verdict_input() -> None:
    d = parse_definition(_definition(q=0.5))
    assert d.primary == "revenue"  # the first mean metric
    for extra, field in (({"primary_metric": "spend"}, "primary_metric"),
                         ({"guardrails": ["revenue", "spend"]}, "guardrails[1]")):
        with pytest.raises(DefinitionError) as err:
            parse_definition({**_definition(q=0.5), **extra})
        assert str(err.value).startswith(field) and "quantile metric" in str(err.value)
