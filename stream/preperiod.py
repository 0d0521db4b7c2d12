"""The metric's own pre-period from the stream (DESIGN §2 "Slices and pre-periods").

With ``pre_period: [spend]`` and ``lookback_seconds: L``, a unit exposed at ``t₀`` gets the
covariate ``pre_spend``: the metric's aggregate (sum, count or binary, with its cap) over the
unit's events timestamped in ``[t₀ − L, t₀)``. Such an event counts there whenever it is
applied: held until the exposure arrived (the held-event store, bounded with its grace period
and counted evictions), or arriving after the exposure (it updates the covariate). Events at or
after ``t₀`` count only as outcomes; events before ``t₀ − L`` count nowhere
(``events_outside_window``). Event ids de-duplicate pre-period events like outcome events.
"""

from __future__ import annotations

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
