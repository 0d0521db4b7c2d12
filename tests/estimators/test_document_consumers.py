"""Consumers read the typed document (estimators.document): a produced slice, parsed, gives
the verdict, the finished-experiment record and the power numbers its mapping held."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from estimators import document, power
from estimators.analysis import MetricSpec, analyze_metric
from estimators.decision import decide_document
from estimators.empirical_bayes import finished_record
from estimators.moments import MomentMatrix
from estimators.report import slice_document

SPEC = MetricSpec("y", "numeric", outcome="y", covariates=("x",))


def _slice(lift: float, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    arms = {}
    for name, d in (("control", 0.0), ("t", lift)):
        x = rng.normal(size=600)
        arms[name] = MomentMatrix.from_rows(("y", "x"), np.c_[1.0 + d + x + rng.normal(
            size=600), x])
    sl = slice_document(None, ["control", "t"], {v: arms[v].n for v in arms}, None,
                        [analyze_metric(SPEC, arms, "control")])
    return power.annotate(sl, 0.05, 1000.0, {"y": 0.05}, 3600.0)


def test_parse_returns_a_typed_document_as_is() -> None:
    doc = document.parse({"slices": [_slice(0.3, 1)]})
    assert document.parse(doc) is doc
    assert document.parse_slice(doc.first) is doc.first


def test_verdict_and_finished_record_same_from_mapping_and_typed() -> None:
    seen = set()
    for lift, seed in ((0.0, 2), (0.4, 3)):
        raw = _slice(lift, seed)
        typed = document.parse_slice(raw)
        a = decide_document(raw, "y", [], {}, 3600.0, 60.0)
        b = decide_document(typed, "y", [], {}, 3600.0, 60.0)
        assert a == b
        seen.add(a.recommendation)
        doc = {"slices": [raw]}
        assert finished_record("e", 1.0, doc) == finished_record("e", 1.0,
                                                                 document.parse(doc))
    assert seen == {"no_effect", "ship"}
    rec = finished_record("e", 1.0, {"slices": [_slice(0.4, 3)]})
    assert rec["units"] == 1200 and rec["metrics"]["y"][0]["estimator"] == "adjusted"
    assert rec["metrics"]["y"][0]["rel_effect"] is not None


def test_power_is_typed_with_the_annotated_numbers() -> None:
    raw = _slice(0.3, 4)
    c = document.parse_slice(raw).metrics[0].comparisons[0]
    assert c.power is not None
    got = msgspec.to_builtins(c.power)
    assert {k: got[k] for k in raw["metrics"][0]["comparisons"][0]["power"]} == \
        raw["metrics"][0]["comparisons"][0]["power"]
    assert c.power.units == 1200 and c.power.mde is not None and c.power.mde > 0

