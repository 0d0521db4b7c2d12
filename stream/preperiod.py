"""The metric's own pre-period from the stream (DESIGN §2 "Slices and pre-periods").

With ``pre_period: [spend]`` and ``lookback_seconds: L``, a unit exposed at ``t₀`` gets the
covariate ``pre_spend``: the metric's aggregate (sum, count or binary, with its cap) over the
unit's events timestamped in ``[t₀ − L, t₀)``. Such an event counts there whenever it is
applied: held until the exposure arrived (the held-event store: a unit whose held events wait
for a pre-period experiment stays held ``max(grace, L)``, see :func:`hold_extension`; bounded
by ``LIFTSTREAM_MAX_PENDING_EVENTS`` units with counted evictions), or arriving after the
exposure (it updates the covariate). Events at or
after ``t₀`` count only as outcomes; events before ``t₀ − L`` count nowhere
(``events_outside_window``). Event ids de-duplicate pre-period events like outcome events.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from state.layout import ExperimentLayout

_NONE: tuple[int, ...] = ()


def pre_columns(lay: ExperimentLayout, event: str, ts: float, exposed_at: float
                ) -> tuple[int, ...]:
    """The ``pre_<metric>`` columns an event at ``ts`` adds to (empty: not a pre-period
    event of this experiment)."""
    cols = lay.pre_period_columns.get(event, _NONE)
    if not cols or not exposed_at - lay.definition.lookback_seconds <= ts < exposed_at:
        return _NONE
    return cols


def hold_extension(layouts: Mapping[str, ExperimentLayout],
                   targets: Callable[[Any], Sequence[str]], held: Sequence[Any],
                   grace: float) -> float:
    """Seconds added to a newly held unit's queue score so that, when one of its held events
    waits for an experiment with that event in its ``pre_period``, the unit stays held for
    ``max(grace, lookback_seconds)`` of processing time (the expiry is ``score < now −
    grace``). Its units then also count as held later for the oldest-first eviction at
    ``LIFTSTREAM_MAX_PENDING_EVENTS`` (counted ``<experiment>:held_evicted``, warning
    ``held_events_evicted``)."""
    most = 0.0
    for h in held:
        for x in targets(h):
            lay = layouts.get(x)
            if lay is not None and h.event in lay.pre_period_columns:
                most = max(most, lay.definition.lookback_seconds)
    return max(0.0, most - grace)
