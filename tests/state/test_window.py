"""state.window: the half-open window, status and phase."""

from __future__ import annotations

import pytest

from state.window import accepts, in_window, phase


@pytest.mark.parametrize(("start", "end", "ts", "inside"), [
    (10.0, 20.0, 9.999, False), (10.0, 20.0, 10.0, True), (10.0, 20.0, 19.999, True),
    (10.0, 20.0, 20.0, False), (None, 20.0, -1e9, True), (10.0, None, 1e12, True),
])
def test_half_open(start: float | None, end: float | None, ts: float, inside: bool) -> None:
    assert in_window(start, end, ts) is inside


def test_back_to_back_windows_never_share_a_time() -> None:
    for ts in (9.0, 10.0, 15.0, 20.0, 25.0, 30.0):
        assert not (in_window(0.0, 20.0, ts) and in_window(20.0, 30.0, ts))


def test_stopped_accepts_nothing() -> None:
    assert accepts("running", None, None, 5.0)
    assert not accepts("stopped", None, None, 5.0)
    assert [phase("running", 10.0, 20.0, t) for t in (5.0, 10.0, 20.0)] == \
        ["scheduled", "running", "ended"]
    assert phase("stopped", 10.0, 20.0, 15.0) == "stopped"
