"""The verdict rule (estimators.decision) on constructed cases, one per recommendation."""

from __future__ import annotations

from typing import Any

import pytest

from estimators.decision import MetricOutcome, Readiness, decide_document, decide_treatment

UP = MetricOutcome("conv", 0.01, 0.03, 0.02)  # significantly higher
DOWN = MetricOutcome("conv", -0.03, -0.01, -0.02)
FLAT = MetricOutcome("conv", -0.01, 0.01, 0.0)
READY = Readiness(power_reached=True)
NOT_READY = Readiness(power_reached=False, elapsed_seconds=10.0, min_runtime_seconds=3600.0)


def test_ship_when_better_no_harm_no_srm_and_ready() -> None:
    v = decide_treatment(UP, [MetricOutcome("latency", -1.0, 2.0, higher_is_better=False)],
                         False, READY)
    assert v.recommendation == "ship"
    assert any("significantly better" in r for r in v.reasons)


def test_roll_back_when_a_guardrail_is_harmed_even_if_primary_wins() -> None:
    latency_up = MetricOutcome("latency", 5.0, 9.0, 7.0, higher_is_better=False)
    v = decide_treatment(UP, [latency_up], False, READY)
    assert v.recommendation == "roll_back" and "guardrail latency harmed" in v.reasons[0]
    assert decide_treatment(DOWN, [], False, READY).recommendation == "roll_back"


def test_lower_is_better_primary_flips_the_direction() -> None:
    faster = MetricOutcome("latency", -9.0, -5.0, -7.0, higher_is_better=False)
    assert decide_treatment(faster, [], False, READY).recommendation == "ship"
    slower = MetricOutcome("latency", 5.0, 9.0, 7.0, higher_is_better=False)
    assert decide_treatment(slower, [], False, READY).recommendation == "roll_back"


def test_keep_running_when_not_ready_or_srm_or_no_interval() -> None:
    assert decide_treatment(UP, [], False, NOT_READY).recommendation == "keep_running"
    assert decide_treatment(FLAT, [], False, NOT_READY).recommendation == "keep_running"
    v = decide_treatment(UP, [], True, READY)
    assert v.recommendation == "keep_running" and "sample-ratio mismatch" in v.reasons[0]
    none = MetricOutcome("conv", None, None)
    assert decide_treatment(none, [], False, READY).recommendation == "keep_running"


def test_no_effect_when_interval_contains_zero_and_power_or_runtime_reached() -> None:
    assert decide_treatment(FLAT, [], False, READY).recommendation == "no_effect"
    runtime = Readiness(None, elapsed_seconds=7200.0, min_runtime_seconds=3600.0)
    assert decide_treatment(FLAT, [], False, runtime).recommendation == "no_effect"
    # neither a target MDE nor a minimum runtime: never concludes "no effect"
    assert decide_treatment(FLAT, [], False, Readiness()).recommendation == "keep_running"
    assert decide_treatment(UP, [], False, Readiness()).recommendation == "ship"


def _comp(t: str, lo: float, hi: float, reached: bool | None = None) -> dict[str, Any]:
    return {"treatment": t, "control": "c", "primary": "adjusted",
            "estimators": {"adjusted": {"seq_ci_low": lo, "seq_ci_high": hi,
                                        "effect": (lo + hi) / 2}},
            "power": {"reached": reached}}


@pytest.mark.parametrize(("conv", "guard", "srm", "expected"), [
    ([(0.01, 0.03, True)], [(-1.0, 1.0)], False, "ship"),
    ([(0.01, 0.03, True)], [(-3.0, -1.0)], False, "roll_back"),
    ([(0.01, 0.03, False)], [(-1.0, 1.0)], False, "keep_running"),
    ([(-0.01, 0.03, True)], [(-1.0, 1.0)], False, "no_effect"),
    ([(0.01, 0.03, True)], [(-1.0, 1.0)], True, "keep_running"),
])
def test_decide_document(conv: list, guard: list, srm: bool, expected: str) -> None:
    sl = {"srm": {"flagged": srm}, "metrics": [
        {"metric": "conv", "comparisons": [_comp("t", *conv[0])]},
        {"metric": "revenue", "comparisons": [_comp("t", *guard[0])]}]}
    v = decide_document(sl, "conv", ["revenue"], {}, None, None)
    assert v.recommendation == expected and v.treatment == "t"
    assert v.as_dict()["reasons"]


def test_several_treatments_roll_back_wins_then_best_ship() -> None:
    sl = {"srm": {"flagged": False}, "metrics": [{"metric": "conv", "comparisons": [
        _comp("a", 0.01, 0.03, True), _comp("b", 0.02, 0.06, True)]}]}
    v = decide_document(sl, "conv", [], {}, None, None)
    assert v.recommendation == "ship" and v.treatment == "b"
    assert set(v.by_treatment) == {"a", "b"}
    sl["metrics"][0]["comparisons"].append(_comp("c", -0.05, -0.01, True))
    v = decide_document(sl, "conv", [], {}, None, None)
    assert v.recommendation == "roll_back" and v.treatment == "c"
