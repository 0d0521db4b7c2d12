"""The alerter's SRM condition is ``srm.flagged``, the anytime-valid decision (issue 12,
item 5): a χ² p-value below 0.001 alone no longer fires. Pure evaluation, no I/O."""

from __future__ import annotations

from estimators.report import slice_document
from state.definition import ExperimentDef, MetricDef
from workers.alerter.rules import evaluate_experiment

DEF = ExperimentDef("e", ("a", "b"), (0.5, 0.5), (MetricDef("m", "m", "binary"),))


def srm_alerts(counts: dict[str, int]) -> list[str]:
    doc = {"slices": [slice_document(None, ["a", "b"], counts, [0.5, 0.5], [])]}
    alerts, _ = evaluate_experiment(DEF, doc, {}, now=1000.0, stale_after=3600.0)
    return [a.kind for a in alerts if a.kind == "srm"]


def test_chi_square_alone_does_not_fire() -> None:
    """5,200 / 4,800: χ² p = 6e-5 < 0.001 but the anytime-valid p-value is not: no alert
    (the old rule fired here, and at every poll such peeks add false alarms)."""
    doc = slice_document(None, ["a", "b"], {"a": 5200, "b": 4800}, [0.5, 0.5], [])
    assert doc["srm"]["p_value"] < 0.001 and doc["srm"]["sequential_p_value"] > 0.001
    assert doc["srm"]["flagged"] is False
    assert srm_alerts({"a": 5200, "b": 4800}) == []


def test_anytime_valid_mismatch_fires() -> None:
    """52,000 / 48,000: flagged (sequential p < 0.001), one srm alert."""
    doc = slice_document(None, ["a", "b"], {"a": 52_000, "b": 48_000}, [0.5, 0.5], [])
    assert doc["srm"]["flagged"] is True
    assert srm_alerts({"a": 52_000, "b": 48_000}) == ["srm"]


def test_fires_on_flagged_even_if_the_p_value_field_is_absent() -> None:
    """The alerter reads ``flagged`` (documents shaped without the sequential fields keep it)."""
    doc = {"slices": [{"variations": [{"name": "a", "n": 1}, {"name": "b", "n": 1}],
                       "srm": {"p_value": 0.5, "flagged": True}, "metrics": []}]}
    alerts, _ = evaluate_experiment(DEF, doc, {}, now=1000.0, stale_after=3600.0)
    assert [a.kind for a in alerts] == ["srm"]
