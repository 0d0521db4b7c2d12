"""The alerter's decision and guardrail-direction conditions (pure evaluate_experiment)."""

from __future__ import annotations

from typing import Any

from state.definition import parse_definition
from workers.alerter.rules import evaluate_experiment


def _definition(**extra: Any) -> Any:
    return parse_definition({
        "id": "x", "variations": ["c", "t"],
        "metrics": [{"name": "conv", "event": "buy", "aggregate": "binary", "mde": 0.05},
                    {"name": "latency", "event": "page", "aggregate": "sum",
                     "higher_is_better": False}],
        "guardrails": ["latency"], **extra})


def _doc(rec: str, latency: tuple[float, float] = (-1.0, 1.0)) -> dict[str, Any]:
    def comp(lo: float, hi: float) -> dict[str, Any]:
        p = 1e-6 if lo > 0 or hi < 0 else 0.5
        return {"treatment": "t", "control": "c", "primary": "diff", "estimators": {"diff": {
            "effect": (lo + hi) / 2, "seq_ci_low": lo, "seq_ci_high": hi, "seq_p_value": p,
            "treatment_mean": 1.0, "control_mean": 1.0}}}
    return {"decision": {"recommendation": rec, "reasons": [f"because {rec}"]},
            "slices": [{"variations": [{"name": "c", "n": 10}, {"name": "t", "n": 10}],
                        "srm": {}, "metrics": [
                            {"metric": "conv", "comparisons": [comp(-0.1, 0.1)]},
                            {"metric": "latency", "comparisons": [comp(*latency)]}]}]}


def _run(d: Any, recs: list[str]) -> list[tuple[str | None, str]]:
    states: dict[str, dict[str, Any]] = {}
    out = []
    for i, rec in enumerate(recs):
        alerts, changed = evaluate_experiment(d, _doc(rec), states, float(i), 1e9)
        states.update(changed)
        out += [(a.fields["previous"], a.fields["recommendation"]) for a in alerts
                if a.kind == "decision"]
    return out


def test_decision_alerts_fire_on_transitions_only() -> None:
    got = _run(_definition(), ["keep_running", "keep_running", "ship", "ship", "keep_running",
                               "roll_back"])
    assert got == [("keep_running", "ship"), ("ship", "keep_running"),
                   ("keep_running", "roll_back")]
    assert _run(_definition(), ["no_effect"]) == [(None, "no_effect")]


def test_no_decision_alerts_without_a_plan() -> None:
    d = parse_definition({"id": "x", "variations": ["c", "t"],
                          "metrics": [{"name": "conv", "event": "buy", "aggregate": "binary"}]})
    assert _run(d, ["keep_running", "ship"]) == []
    assert _run(_definition(), ["keep_running", "ship"]) != []
    d2 = parse_definition({"id": "x", "variations": ["c", "t"], "min_runtime_seconds": 10,
                           "metrics": [{"name": "conv", "event": "buy", "aggregate": "binary"}]})
    assert _run(d2, ["keep_running", "ship"]) == [("keep_running", "ship")]


def test_lower_is_better_guardrail_harmed_by_an_increase() -> None:
    d = _definition()
    up, _ = evaluate_experiment(d, _doc("keep_running", (2.0, 5.0)), {}, 0.0, 1e9)
    assert [(a.kind, a.fields["direction"]) for a in up] == [("guardrail_harm", "positive")]
    assert "significant increase" in up[0].text
    down, _ = evaluate_experiment(d, _doc("keep_running", (-5.0, -2.0)), {}, 0.0, 1e9)
    assert [a.kind for a in down] == []  # lower latency is good
