"""state.warnings: every loss counter above zero is a warning naming the count."""

from __future__ import annotations

from state import keys
from state.warnings import COUNTER_WARNINGS, experiment_warnings


def test_every_counter_warns_and_only_its_experiment() -> None:
    counters = {keys.experiment_counter("shop", name): 2.0 for name in COUNTER_WARNINGS}
    counters[keys.experiment_counter("other", "held_evicted")] = 5.0
    got = experiment_warnings("shop", counters, {})
    assert [w["code"] for w in got] == [code for code, _ in COUNTER_WARNINGS.values()]
    assert all("2 " in w["detail"] and "shop" in w["detail"] for w in got)
    assert experiment_warnings("shop", {keys.experiment_counter("shop", "held_evicted"): 0.0},
                               {}) == []


def test_partition_flags_concern_every_experiment() -> None:
    flags = {3: {"offsets_out_of_range": "x"}, 1: {"offsets_out_of_range": "y"}}
    got = experiment_warnings("any", {}, flags)
    assert [w["detail"] for w in got] == ["partition 1: y", "partition 3: x"]
