"""The finished-experiments store: what stopped experiments teach the next ones.

One hash (:func:`state.keys.finished`) maps a stopped experiment's id to a JSON record of its
recommended estimates (relative effect and its SE per metric × treatment) and its in-experiment
candidates' balance p-values (:func:`estimators.empirical_bayes.finished_record`). A record is
written when an experiment is stopped through the API, and lazily for every stopped experiment
that has none when the store is read (so stops by any path are covered). Records feed the
empirical-Bayes prior σ and Fisher pre-selection of in-experiment covariates.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import msgspec

from state import keys
from state.store import Client

log = logging.getLogger(__name__)


def write(client: Client, record: Mapping[str, Any]) -> None:
    """Store (or replace) one finished-experiment record."""
    client.hset(keys.finished(), str(record["experiment"]), msgspec.json.encode(dict(record)))


def read_all(client: Client) -> dict[str, dict[str, Any]]:
    """Every stored record by experiment id (unreadable ones are logged and skipped)."""
    out: dict[str, dict[str, Any]] = {}
    raw: Any = client.hgetall(keys.finished())
    for k, v in raw.items():
        name = k.decode() if isinstance(k, bytes) else str(k)
        try:
            rec = msgspec.json.decode(v)
        except msgspec.DecodeError as exc:
            log.warning("finished record %r unreadable, skipped: %s", name, exc)
            continue
        if isinstance(rec, dict):
            out[name] = rec
    return out
