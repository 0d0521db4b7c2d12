"""state.layout: the column order, event routing and per-unit rules of a definition."""

from __future__ import annotations

import numpy as np

from estimators.analysis import AnalysisSettings
from state.definition import parse_definition
from state.layout import ExperimentLayout, analysis_settings

DEF = {"id": "shop", "variations": ["control", "t1"],
       "metrics": [{"name": "buy", "event": "purchase", "aggregate": "binary"},
                   {"name": "revenue", "event": "purchase", "aggregate": "sum", "cap": 100}],
       "in_experiment": [{"name": "views", "event": "view", "aggregate": "count"}],
       "covariates": ["age"], "model": "linear", "alpha": 0.1}


def test_columns_routes_and_predictions() -> None:
    lay = ExperimentLayout.of(parse_definition(DEF))
    assert lay.columns == ("buy", "revenue", "views", "age", "buy:pred", "revenue:pred")
    assert lay.event_columns == {"purchase": (0, 1), "view": (2,)}
    assert lay.counts_events == (True, False, True, False, False, False)
    assert lay.covariate_columns == {"age": 3}
    assert lay.prediction_columns == {"buy": 4, "revenue": 5}
    assert lay.model_ids == {"buy": "shop/buy", "revenue": "shop/revenue"}
    assert [(s.name, s.kind, s.prediction) for s in lay.metric_specs()] == \
        [("buy", "binary", "buy:pred"), ("revenue", "numeric", "revenue:pred")]


def test_unit_vectors_apply_binary_and_cap() -> None:
    lay = ExperimentLayout.of(parse_definition(DEF))
    raw = np.array([[3.0, 250.0, 7.0, 40.0, 0.2, 55.0], [0.0, 20.0, 0.0, 30.0, 0.1, 9.0]])
    np.testing.assert_array_equal(lay.unit_vectors(raw),
                                  [[1.0, 100.0, 7.0, 40.0, 0.2, 55.0],
                                   [0.0, 20.0, 0.0, 30.0, 0.1, 9.0]])


def test_settings_from_the_definition() -> None:
    d = parse_definition(DEF)
    assert analysis_settings(d) == ExperimentLayout.of(d).analysis_settings() == \
        AnalysisSettings(alpha=0.1)
