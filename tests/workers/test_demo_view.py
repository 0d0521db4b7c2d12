"""The demo's summary: plain text blocks off a terminal, a view redrawn in place on one."""

from __future__ import annotations

import io
from typing import Any

from workers.dev.demo_view import SummaryView, summary_parts, summary_text


def _doc() -> dict[str, Any]:
    est = {"effect": 0.25, "ci_low": 0.15, "ci_high": 0.35, "seq_ci_low": 0.05,
           "seq_ci_high": 0.45, "variance_reduction": 0.4}
    return {"slices": [{
        "counters": {"dead_letters": 3},
        "variations": [{"name": "control", "n": 1200}, {"name": "treatment_1", "n": 1180}],
        "srm": {"flagged": False},
        "metrics": [{"metric": "revenue", "comparisons": [{
            "treatment": "treatment_1", "primary": "cuped",
            "estimators": {"diff": {**est, "ci_low": 0.05, "ci_high": 0.45}, "cuped": est}}]}]}],
        "decision": {"recommendation": "ship", "reasons": ["primary metric significant"]}}


def _parts() -> Any:
    return summary_parts(_doc(), {"revenue": {"treatment_1": 0.2}}, 12_345, 678.0, 42.0,
                         "http://x/")


def test_plain_summary_has_the_numbers() -> None:
    text = summary_text(_parts())
    lines = text.splitlines()
    assert lines[0] == "liftstream demo — dashboard: http://x/"
    assert "messages applied 12,345  (678/s)  dead letters 3" in lines[1]
    assert lines[2] == "units: control=1,200, treatment_1=1,180   SRM ok"
    assert lines[3].split() == ["metric", "treatment", "truth", "diff", "adjusted", "anytime",
                                "CI", "(adj.)", "VR"]
    assert lines[4].split() == ["revenue", "treatment_1", "+0.2000", "+0.2500±0.2000",
                                "+0.2500±0.1000", "[+0.0500,", "+0.4500]", "40%"]
    assert lines[5] == "decision: ship — primary metric significant"


def test_view_appends_plain_blocks_off_a_terminal() -> None:
    out = io.StringIO()
    with SummaryView(out) as view:
        view.show(_parts())
        view.show(_parts())
    assert out.getvalue() == 2 * (summary_text(_parts()) + "\n\n")
    assert "\x1b" not in out.getvalue()


def test_view_redraws_in_place_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    with SummaryView(out, width=160) as view:
        view.show(_parts())
        first = len(out.getvalue())
        view.show(_parts())
    shown = out.getvalue()
    assert "+0.2500±0.1000" in shown and "40%" in shown
    assert "\x1b[1A" in shown[first:] or "\x1b[2K" in shown[first:]  # cursor up / erase line
