"""The ingest rules as pure functions (stream/rules.py): no broker, no Redis."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from state.layout import ExperimentLayout
from state.registry import parse_definition
from state.units import UnitState
from stream import rules
from stream.rules import COUNTED, IGNORED, HeldEvent, UnitMessage

END = 1_700_100_000.0
LAY = ExperimentLayout.of(parse_definition({
    "id": "x", "variations": ["control", "treatment"], "end": END,
    "metrics": [{"name": "revenue", "event": "purchase", "aggregate": "sum"},
                {"name": "clicks", "event": "click", "aggregate": "count"}],
    "covariates": ["pre"]}))
T0 = 1_700_000_000.0


def unit(variation: int = 0, ts: float = T0) -> UnitState:
    return rules.new_unit(LAY, variation, ts, {"pre": 3.0, "unknown": 9.0})


def test_first_exposure_creates_the_state_with_covariates() -> None:
    st = unit(1)
    assert st.variation == 1 and st.exposed_at == T0 and not st.withdrawn
    assert st.raw[LAY.covariate_columns["pre"]] == 3.0 and sum(st.raw) == 3.0
    assert rules.expose(None, 1, st) == (st, "exposures")


def test_repeat_exposure_is_ignored_and_another_variation_withdraws() -> None:
    st = unit(0)
    assert rules.expose(st, 0, None) == (st, "repeat_exposures")
    gone, outcome = rules.expose(st, 1, None)
    assert outcome == "withdrawn" and gone is not None and gone.withdrawn
    assert gone.variation == 0 and gone.raw == st.raw
    assert rules.expose(gone, 1, None) == (gone, "repeat_exposures")


def test_exposures_of_a_stopped_or_out_of_window_experiment_are_refused() -> None:
    assert rules.exposure_refusal(LAY, T0) is None
    assert rules.exposure_refusal(LAY, END) == "exposures_outside_window"
    stopped = dataclasses.replace(LAY, definition=dataclasses.replace(LAY.definition,
                                                                      status="stopped"))
    assert rules.exposure_refusal(stopped, T0) == "exposures_after_stop"


def test_counting_sums_values_and_counts_events() -> None:
    st = unit()
    c = rules.count_event(LAY, st, "purchase", 2.5, T0 + 1, None, 10)
    c = rules.count_event(LAY, c.state, "click", 99.0, T0 + 2, None, 10)
    assert c.outcome == COUNTED
    assert c.state.raw[LAY.columns.index("revenue")] == 2.5
    assert c.state.raw[LAY.columns.index("clicks")] == 1.0


def test_events_before_exposure_or_at_the_end_are_outside_the_window() -> None:
    st = unit()
    assert rules.count_event(LAY, st, "purchase", 1.0, T0 - 1, None, 10) == \
        (st, "events_outside_window", 0)
    assert rules.count_event(LAY, st, "purchase", 1.0, END, None, 10).outcome == \
        "events_outside_window"
    assert rules.count_event(LAY, st, "purchase", 1.0, T0, None, 10).outcome == COUNTED


def test_a_withdrawn_unit_counts_nothing() -> None:
    gone, _ = rules.expose(unit(0), 1, None)
    assert gone is not None
    assert rules.count_event(LAY, gone, "purchase", 1.0, T0 + 1, None, 10) == \
        (gone, IGNORED, 0)


def test_an_event_id_counts_once_and_the_oldest_ids_are_forgotten_first() -> None:
    st = unit()
    c = rules.count_event(LAY, st, "purchase", 1.0, T0 + 1, "a", 2)
    assert rules.count_event(LAY, c.state, "purchase", 1.0, T0 + 1, "a", 2).outcome == \
        "duplicate_events"
    c = rules.count_event(LAY, c.state, "purchase", 1.0, T0 + 1, "b", 2)
    c = rules.count_event(LAY, c.state, "purchase", 1.0, T0 + 1, "c", 2)
    assert c.ids_evicted == 1 and c.state.seen == (rules.fingerprint("b"),
                                                   rules.fingerprint("c"))
    again = rules.count_event(LAY, c.state, "purchase", 1.0, T0 + 1, "a", 2)  # forgotten
    assert again.outcome == COUNTED and again.state.raw[0] == 4.0


def test_held_events_are_released_at_exposure_for_their_experiment_only() -> None:
    held = [HeldEvent("purchase", 2.0, T0 + 1), HeldEvent("purchase", 5.0, T0 + 1, "other"),
            HeldEvent("view", 1.0, T0 + 1), HeldEvent("click", 0.0, T0 - 5)]
    st, outcomes = rules.release_held(LAY, unit(), held, 10)
    assert st.raw[0] == 2.0 and st.raw[1] == 0.0
    assert [c.outcome for _, c in outcomes] == [COUNTED, "events_outside_window"]


def test_window_end_is_the_outcome_window_capped_at_the_end() -> None:
    lay = dataclasses.replace(LAY, definition=dataclasses.replace(
        LAY.definition, outcome_window_seconds=3600.0))
    assert rules.window_end(lay, T0) == T0 + 3600.0
    assert rules.window_end(lay, END - 10) == END
    assert rules.window_end(LAY, T0) == END


def test_unit_rows_move_a_changed_unit_and_drop_a_withdrawn_one() -> None:
    a, b = unit(0), unit(1)
    counted = rules.count_event(LAY, a, "purchase", 4.0, T0 + 1, None, 10).state
    gone, _ = rules.expose(b, 0, None)
    assert gone is not None
    rows = rules.unit_rows(LAY, [(None, a), (a, counted), (b, gone)])
    assert rows == {"control": ([a.raw, counted.raw], [a.raw]), "treatment": ([], [b.raw])}


def test_shifted_delta_is_the_change_of_the_moment_sums() -> None:
    rng = np.random.default_rng(7)
    old, new = rng.normal(5, 1, (40, LAY.width)), rng.normal(5, 1, (60, LAY.width))
    first = rules.shifted_delta(LAY.columns, None, old, old[:0])
    assert first.base is None and first.matrix.sums[0, 0] == 40.0
    out = rules.shifted_delta(LAY.columns, first.matrix, new, old[:10])
    both = np.vstack([old[10:], new])
    direct = rules.outer_sum(both, out.shift)
    np.testing.assert_allclose(out.matrix.sums, direct, rtol=1e-9, atol=1e-9)


# -- order independence -------------------------------------------------------------------
# Values are multiples of 1/4 below 2^20, so every order sums them exactly in float64; ids
# are redeliveries (one id, one event); at most 8 ids, below the remembered bound.
_EVENTS = st.lists(st.tuples(st.sampled_from(["purchase", "click", "view"]),
                             st.integers(0, 4 * 2**20).map(lambda n: n / 4),
                             st.integers(-3, 5),  # seconds from the exposure (<0: before)
                             st.one_of(st.none(), st.integers(0, 7))), max_size=12)


@st.composite
def one_unit(draw: st.DrawFn) -> list[UnitMessage]:
    variation = draw(st.integers(0, 1))
    exposure = UnitMessage(T0, variation, {"pre": draw(st.integers(0, 100)) / 4})
    out = [exposure] * draw(st.integers(1, 3))
    by_id: dict[int, UnitMessage] = {}
    for event, value, dt, ident in draw(_EVENTS):
        m = UnitMessage(T0 + dt, None, {}, event, value, None if ident is None else str(ident))
        if ident is not None:
            m = by_id.setdefault(ident, m)  # a redelivery is the same event
        out += [m] * draw(st.integers(1, 2))
    return out


def _statistic(state: UnitState | None) -> tuple[object, ...]:
    """What a unit contributes: its state (ids as a set: their order only decides which is
    forgotten first, beyond the bound) and its moment-matrix delta around a fixed shift."""
    if state is None:
        return (None,)
    rows = rules.unit_rows(LAY, [(None, state)])
    shift = np.array([1.0] * LAY.width)
    deltas = {v: rules.outer_sum(rules.vectors(LAY, new), shift).tobytes()
              for v, (new, _) in rows.items()}
    return (state.variation, state.flags, state.exposed_at, state.raw, frozenset(state.seen),
            state.versions, deltas)


@settings(max_examples=300, deadline=None)
@given(one_unit(), st.randoms(use_true_random=False))
def test_any_arrival_order_gives_the_same_state_and_matrix_delta(
        messages: list[UnitMessage], rnd: object) -> None:
    reference, held = rules.fold_unit(LAY, messages, 1000)
    shuffled = list(messages)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    state, held_after = rules.fold_unit(LAY, shuffled, 1000)
    assert _statistic(state) == _statistic(reference)
    assert reference is not None and held == held_after == []
