"""The typed result document reads what main's producers add: quantile metrics (no Bayesian
model, no power) and slices' BH-adjusted p-values (estimators.document)."""

from __future__ import annotations

import numpy as np

from estimators import document
from estimators.quantiles import Histogram, quantile_document
from estimators.slices import bh_across_slices


def _quantile_metric() -> dict[str, object]:
    rng = np.random.default_rng(3)
    arms = {"control": Histogram.of(rng.lognormal(0.0, 1.0, 400)),
            "t": Histogram.of(rng.lognormal(0.2, 1.0, 400))}
    return quantile_document("spend", 0.9, arms["control"].accuracy, ["control", "t"], arms)


def test_a_quantile_metric_document_parses_with_its_own_fields() -> None:
    raw = _quantile_metric()
    doc = document.parse({"slices": [{"variations": [{"name": "control", "n": 400},
                                                     {"name": "t", "n": 400}],
                                      "metrics": [raw]}]})
    m = doc.first.metrics[0]
    assert (m.kind, m.of, m.quantile) == ("quantile", "spend", 0.9)
    assert m.histogram_buckets is not None and m.histogram_buckets["t"] > 0
    c = m.comparisons[0]
    assert c.bayes is not None and c.bayes.model is None
    assert c.power is None and c.power_note is not None
    e = c.primary_estimate()
    assert e is not None and e.effect is not None and e.effect > 0
    assert document.to_builtins(doc)["slices"][0]["metrics"][0]["of"] == "spend"


def test_slice_bh_p_values_are_typed() -> None:
    slices = [{"by": {"platform": p}, "variations": [{"name": "control", "n": 1}],
               "metrics": [{"metric": "m", "comparisons": [{"treatment": "t", "estimators": {
                   "diff": {"p_value": pv, "seq_p_value": None}}}]}]}
              for p, pv in (("ios", 0.01), ("web", 0.04))]
    bh_across_slices(slices)
    doc = document.parse({"slices": slices})
    got = [sl.metrics[0].comparisons[0].estimators["diff"] for sl in doc.slices]
    assert [e.slice_bh_p_value for e in got] == [0.02, 0.04]  # BH: 2/1·0.01, 2/2·0.04
    assert all(e.slice_bh_seq_p_value is None for e in got)
