"""state.alerts against a real Redis: condition states survive a restart; one lease holder."""

from __future__ import annotations

from state.alerts import AlertStateStore
from state.store import Client


def test_states_round_trip_and_clear(redis_client: Client) -> None:
    store = AlertStateStore(redis_client)
    store.save("shop", {"srm": {"fired": True, "at": 12.5}})
    store.save("shop", {"significance:revenue:t1": {"fired": False}})
    again = AlertStateStore(redis_client)  # a restarted alerter
    assert again.load("shop") == {"srm": {"fired": True, "at": 12.5},
                                  "significance:revenue:t1": {"fired": False}}
    assert again.load("other") == {}
    again.clear("shop")
    assert again.load("shop") == {}


def test_one_lease_holder(redis_client: Client) -> None:
    a, b = AlertStateStore(redis_client), AlertStateStore(redis_client)
    assert a.hold_lease("a", 30.0)
    assert not b.hold_lease("b", 30.0)
    assert a.hold_lease("a", 30.0)  # renewed
    b.release_lease("b")  # not b's: nothing happens
    assert not b.hold_lease("b", 30.0)
    a.release_lease("a")
    assert b.hold_lease("b", 30.0)
