"""Pre-period rules (issue 13 item 2): the window [t0 − L, t0) and the held-unit extension."""

from __future__ import annotations

from state.layout import ExperimentLayout
from state.registry import parse_definition
from stream.batch import HeldEvent
from stream.preperiod import hold_extension, pre_columns

LAY = ExperimentLayout.of(parse_definition({
    "id": "x", "variations": ["a", "b"], "covariates": ["age"],
    "metrics": [{"name": "spend", "event": "buy", "aggregate": "sum", "cap": 50},
                {"name": "visits", "event": "visit", "aggregate": "count"}],
    "pre_period": ["spend"], "lookback_seconds": 100.0}))


def test_pre_period_column_and_covariates() -> None:
    assert LAY.columns[-1] == "pre_spend"
    assert LAY.covariates == ("age", "pre_spend")  # cuped's default covariates
    col = LAY.columns.index("pre_spend")
    assert LAY.caps[col] == 50.0  # the metric's aggregate, cap included
    assert all(s.covariates == ("age", "pre_spend") for s in LAY.metric_specs())


def test_window_is_half_open_before_exposure() -> None:
    col = (LAY.columns.index("pre_spend"),)
    assert pre_columns(LAY, "buy", 900.0, 1000.0) == col  # t0 − L: in
    assert pre_columns(LAY, "buy", 999.9, 1000.0) == col
    assert pre_columns(LAY, "buy", 899.9, 1000.0) == ()  # older than t0 − L
    assert pre_columns(LAY, "buy", 1000.0, 1000.0) == ()  # at t0: an outcome
    assert pre_columns(LAY, "visit", 950.0, 1000.0) == ()  # not a pre-period metric


def test_held_units_of_pre_period_experiments_stay_for_the_lookback() -> None:
    layouts = {"x": LAY}
    buy, visit = HeldEvent("buy", 1.0, 5.0), HeldEvent("visit", 1.0, 5.0)
    assert hold_extension(layouts, lambda h: ["x"], [visit, buy], 30.0) == 70.0
    assert hold_extension(layouts, lambda h: ["x"], [visit], 30.0) == 0.0
    assert hold_extension(layouts, lambda h: ["x"], [buy], 600.0) == 0.0  # grace is longer
