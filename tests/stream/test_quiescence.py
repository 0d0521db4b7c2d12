"""The quiescence rule the tests wait on (tests.support.quiescence via stream.lag): caught
up means every stored offset equals its partition's high watermark."""

from __future__ import annotations

from stream.kafka import LogRange
from stream.lag import lag_reading


def test_caught_up_only_at_the_high_watermark() -> None:
    ranges = {("x", 0): LogRange(0, 5), ("x", 1): LogRange(0, 0), ("y", 0): LogRange(2, 7)}
    done = lag_reading(["x", "y"], ranges, {0: {"x": 5, "y": 7}}, set())
    assert done.total == 0 and not done.out_of_range
    half = lag_reading(["x", "y"], ranges, {0: {"x": 4, "y": 7}}, set())
    assert half.by_partition["x"] == {0: 1, 1: 0} and half.total == 1
    never = lag_reading(["x", "y"], ranges, {}, set())  # nothing stored yet: all of the log
    assert never.total == 5 + 5
    past = lag_reading(["x", "y"], ranges, {0: {"x": 9, "y": 7}}, set())  # beyond the end
    assert past.by_topic["x"] is None and [(t, p) for t, p, _, _ in past.out_of_range] == \
        [("x", 0)]
