"""Conditions that make a live result document's numbers incomplete: its ``warnings`` list.

Two sources, both per partition in Redis (keys in :mod:`state.keys`):

* per-experiment counters in ``ls:{p}:c`` named ``<experiment>:<counter>``; a counter listed
  in :data:`COUNTER_WARNINGS` that is above zero yields a warning with that code;
* partition-wide conditions in ``ls:{p}:warn`` (hash ``code → detail``), set and cleared by the
  partition's owner (e.g. ``offsets_out_of_range``: nothing of that partition is applied).
  They concern every experiment.

A document with nothing to warn about carries ``"warnings": []``.

>>> [w["code"] for w in experiment_warnings("shop", {"shop:held_evicted": 3.0}, {})]
['held_events_evicted']
>>> experiment_warnings("shop", {}, {2: {"offsets_out_of_range": "stored 90 > log end 10"}})
[{'code': 'offsets_out_of_range', 'detail': 'partition 2: stored 90 > log end 10'}]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from state import keys

__all__ = ["COUNTER_WARNINGS", "experiment_warnings"]

# counter name (after "<experiment>:") → (warning code, detail template with {n} and {exp})
COUNTER_WARNINGS: Final[dict[str, tuple[str, str]]] = {
    "held_evicted": ("held_events_evicted",
                     "{n} held events of {exp} were evicted (the held store was full; "
                     "oldest first)"),
    "build_failed": ("build_failed",
                     "{n} messages of {exp} were not applied: building its part of a batch "
                     "failed (dead-letter topic, with the reason)"),
    "event_ids_evicted": ("event_ids_evicted",
                          "{n} remembered event ids of {exp} were forgotten (over "
                          "LIFTSTREAM_EVENT_IDS_PER_UNIT for a unit, oldest first): a "
                          "re-delivery of one of them would count again"),
    "events_after_stop": ("events_after_stop",
                          "{n} events named {exp} after it was stopped and were not counted"),
    "exposures_after_stop": ("exposures_after_stop",
                             "{n} exposures of {exp} arrived after it was stopped and were "
                             "not counted"),
}


def experiment_warnings(experiment: str, counters: Mapping[str, float],
                        partition_flags: Mapping[int, Mapping[str, str]]
                        ) -> list[dict[str, str]]:
    """The ``warnings`` of one experiment's document, from summed counters and the flags of
    every partition (``partition → code → detail``)."""
    out: list[dict[str, str]] = []
    for name, (code, template) in COUNTER_WARNINGS.items():
        n = counters.get(keys.experiment_counter(experiment, name), 0.0)
        if n > 0:
            out.append({"code": code, "detail": template.format(n=int(n), exp=experiment)})
    for p in sorted(partition_flags):
        for code, detail in sorted(partition_flags[p].items()):
            out.append({"code": code, "detail": f"partition {p}: {detail}"})
    return out
