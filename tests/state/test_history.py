"""The history tiering rule as pure functions: tiers, levels, selection, coarsening, bounds."""

from __future__ import annotations

import math

import pytest

from state import history
from state.history import Tier, coarsening, expected_times, level_of, point_bound, tiers

DAY = 86400.0
T0 = 1_790_000_003.0  # not aligned to any bucket


def simulate(ts: tuple[Tier, ...], times: list[float], max_points: int
             ) -> list[list[float]]:
    """What the Redis side does, in memory: each snapshot stored once at its level, levels
    trimmed to their spans, the last level coarsened when its resolution doubles."""
    levels: list[list[float]] = [[] for _ in ts]
    prev: float | None = None
    first: float | None = None
    for t in times:
        if prev is not None and first is not None:
            gone, moved = coarsening(ts, levels[-1], first, prev, t, max_points)
            levels[-2] += [levels[-1][i] for i in moved]
            levels[-2].sort()
            levels[-1] = [x for i, x in enumerate(levels[-1]) if i not in set(gone)]
        levels[level_of(ts, t, prev, first, max_points)].append(t)
        for i, tier in enumerate(ts):
            if tier.span is not None:
                levels[i] = [x for x in levels[i] if x > t - tier.span]
        prev, first = t, first if first is not None else t
    return levels


def test_tiers_default_and_never_finer_than_the_interval() -> None:
    assert [(t.resolution, t.span) for t in tiers(10.0)] == [
        (10.0, 3600.0), (60.0, DAY), (600.0, 7 * DAY), (3600.0, None)]
    assert [t.resolution for t in tiers(120.0)] == [120.0, 120.0, 600.0, 3600.0]
    assert len(tiers(7200.0)) == history.LEVELS


def test_level_is_the_coarsest_bucket_the_snapshot_opens() -> None:
    ts = tiers(10.0)
    assert level_of(ts, 100.0, None, None) == 3  # the first snapshot opens every bucket
    assert level_of(ts, 110.0, 100.0, 0.0) == 0  # same minute
    assert level_of(ts, 120.0, 110.0, 0.0) == 1  # new minute, same 10 min
    assert level_of(ts, 600.0, 590.0, 0.0) == 2
    assert level_of(ts, 7200.0, 7190.0, 0.0) == 3


def test_first_per_bucket_and_even_thinning() -> None:
    assert history.first_per_bucket([0.0, 5.0, 10.0, 19.9, 20.0], 10.0) == [0, 2, 4]
    times = [1002.0, 1003.0, 1004.0, 1005.0, 1006.0]
    assert [times[i] for i in history.thin_evenly(times, 3)] == [1002.0, 1004.0, 1006.0]
    # tiered times (dense at the end): evenly in time, the newest always kept
    dense = [float(x) for x in range(0, 10_000, 100)] + [9_990.0 + k for k in range(10)]
    kept = [dense[i] for i in history.thin_evenly(dense, 11)]
    assert len(kept) <= 11 and kept[0] == 0.0 and kept[-1] == 9_999.0
    assert kept[:10] == [1000.0 * k for k in range(10)]


def test_thirty_days_at_ten_seconds_points_and_rule() -> None:
    """The documented count (3,157) and bound (4,972); the incremental store equals the
    rule's definition; every level holds only what its span allows."""
    ts = tiers(10.0)
    times = [T0 + 10.0 * k for k in range(int(30 * DAY / 10))]
    want = expected_times(ts, times, times[-1])
    assert len(want) == 3157 and point_bound(ts) == 4972
    levels = simulate(ts, times, history.COARSE_MAX_POINTS)
    assert sorted(x for lv in levels for x in lv) == want
    assert [len(lv) for lv in levels] == [300, 1296, 840, 721]
    # downsampling by selection: every kept time is a recorded one, first in its bucket
    hours = {math.floor(t / 3600.0) for t in levels[3]}
    assert len(hours) == len(levels[3]) == 721


@pytest.mark.parametrize("interval,days,cap", [(600.0, 200.0, 500), (3600.0, 3000.0, 300)])
def test_the_last_tier_coarsens_instead_of_growing(interval: float, days: float,
                                                   cap: int) -> None:
    """Past ``cap`` hours the last tier doubles its resolution: bounded for any duration,
    still exactly the rule's selection."""
    ts = tiers(interval)
    times = [T0 + interval * k for k in range(int(days * DAY / interval))]
    levels = simulate(ts, times, cap)
    assert sorted(x for lv in levels for x in lv) == expected_times(ts, times, times[-1], cap)
    assert len(levels[3]) <= cap + 1
    assert sum(len(lv) for lv in levels) <= point_bound(ts, cap)
    res = history.coarse_resolution(3600.0, times[0], times[-1], cap)
    assert res > 3600.0 and levels[3][0] == times[0]  # the start is always kept
    assert len({math.floor(t / res) for t in levels[3]}) == len(levels[3])
