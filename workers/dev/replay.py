"""``liftstream replay FILE.csv``: publish a unit-level dataset as exposures and events.

Every row is one unit: one exposure (variation and covariates from the row) and, per metric
column with a non-zero value, one event named after the column carrying that value. Exposure
*i* has ``ts = start_ts + i * 0.001``; its events ``ts + 1``. Each event has the id
``"{unit}:{column}"``, so re-delivered copies count once. Messages are keyed by the unit id,
so a unit's exposure and events land in the same partition number of both topics.

:func:`~workers.dev.publish.publish` (also used by :mod:`workers.dev.simulate`) sends with
``acks="all"``, an optional rate limit and a progress bar on stderr, and returns only after the
broker acknowledged every message; :mod:`workers.dev.replay_build` turns the rows into
messages.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from state.definition import ExperimentDef
from state.registry import Registry
from state.store import connect
from workers.cli.prologue import run
from workers.dev.publish import (
    KINDS,
    Message,
    PublishError,
    ReplayError,
    check_rate,
    guard_publishing,
    prepare_topics,
    publish,
)
from workers.dev.replay_build import (
    DEFAULT_START_TS,
    EVENT_DELAY,
    ROW_SPACING,
    Rows,
    build_messages,
    check_duplicate,
    extract_rows,
    replay_messages,
    shuffle_and_duplicate,
)
from workers.settings import Settings

__all__ = [
    "DEFAULT_START_TS",
    "KINDS",
    "Message",
    "PublishError",
    "ReplayError",
    "ReplayReport",
    "add_replay_parser",
    "prepare_topics",
    "publish",
    "replay_file",
    "replay_messages",
]


@dataclass(frozen=True)
class ReplayReport:
    """What a replay published and how long it took (including the final flush)."""

    exposures: int
    events: int
    duplicates: int
    seconds: float

    def __str__(self) -> str:
        total = self.exposures + self.events + self.duplicates
        rate = total / self.seconds if self.seconds > 0 else math.inf
        return (f"replayed {self.exposures} exposures and {self.events} events "
                f"(+{self.duplicates} duplicates) = {total} messages in "
                f"{self.seconds:.1f} s ({rate:,.0f} msg/s)")


# --------------------------------------------------------------------------- replay_file


def _read_csv(path: str, unit: str | None, variation: str, attributes: Sequence[str] = ()
              ) -> pd.DataFrame:
    text_columns = {c: str for c in (unit, variation, *attributes) if c is not None}
    try:
        return pd.read_csv(path, dtype=text_columns, low_memory=False)
    except FileNotFoundError:
        raise ReplayError(f"file not found: {path}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
            IsADirectoryError) as exc:
        raise ReplayError(f"cannot read {path} as CSV: {exc}") from None


def _warn(message: str) -> None:
    print(f"liftstream replay: warning: {message}", file=sys.stderr)


def _check_against(d: ExperimentDef, rows: Rows) -> None:
    """Errors for input the worker would reject; warnings for input it would ignore."""
    if d.status != "running":
        raise ReplayError(f"experiment {d.id!r} is {d.status}: its exposures would be ignored")
    unknown = sorted(set(rows.variations) - set(d.variations))
    if unknown:
        raise ReplayError(f"variation value(s) {', '.join(map(repr, unknown[:5]))} are not "
                          f"variations of experiment {d.id!r} ({', '.join(d.variations)})")
    events = {m.event for m in d.metrics} | {c.event for c in d.in_experiment}
    for column in rows.metrics:
        if column not in events:
            _warn(f"column {column!r} is not the event of any metric or in-experiment "
                  f"candidate of {d.id!r} (events: {', '.join(sorted(events))}): "
                  f"its events will not be counted")
    for column in rows.covariates:
        if column not in d.covariates:
            _warn(f"column {column!r} is not a covariate of {d.id!r} "
                  f"(covariates: {', '.join(d.covariates) or 'none'}): it will be ignored")
    dims = [x.name for x in d.dimensions]
    for column in rows.attributes:
        if column not in dims:
            _warn(f"column {column!r} is not a dimension of {d.id!r} "
                  f"(dimensions: {', '.join(dims) or 'none'}): no slices will use it")


def replay_file(settings: Settings, path: str, experiment: str, unit: str | None,
                variation: str, metrics: Sequence[str], covariates: Sequence[str] = (),
                rate: float | None = None, shuffle: bool = False, duplicate: float = 0.0,
                seed: int = 0, progress: bool = True, attributes: Sequence[str] = (),
                pre_period: Sequence[str] = ()) -> ReplayReport:
    """Publish a CSV file's rows to the experiment's topics; returns after the broker acked.

    The experiment must be registered (ReplayError otherwise). Timestamps start at the
    definition's ``start`` when it has one, else at :data:`DEFAULT_START_TS`.
    """
    check_duplicate(duplicate)
    check_rate(rate)
    frame = _read_csv(path, unit, variation, attributes)
    rows = extract_rows(frame, unit, variation, metrics, covariates, attributes, pre_period)
    client = connect(settings.redis_url, settings.redis_cluster)
    try:
        d = Registry(client).get(experiment)
    finally:
        client.close()
    if d is None:
        raise ReplayError(f"experiment {experiment!r} is not registered: register its "
                          f"definition first (metrics named after the event columns)")
    _check_against(d, rows)
    start_ts = d.start if d.start is not None else DEFAULT_START_TS
    if d.end is not None and start_ts + len(rows.units) * ROW_SPACING + EVENT_DELAY > d.end:
        _warn(f"the replay's timestamps run past the end of {experiment!r}: late rows and "
              f"events will fall outside its window")
    # pre-period events half the lookback before the exposure (inside [t0 - L, t0))
    offset = d.lookback_seconds / 2 if d.lookback_seconds > 0 else EVENT_DELAY
    messages, duplicates = shuffle_and_duplicate(
        build_messages(rows, experiment, start_ts, offset), shuffle, duplicate, seed)
    t0 = time.monotonic()
    publish(settings, messages, total=len(messages), rate=rate, progress=progress,
            label="replay")
    seconds = time.monotonic() - t0
    n_events = len(messages) - duplicates - len(rows.units)  # pre-period events included
    return ReplayReport(len(rows.units), n_events, duplicates, seconds)


# --------------------------------------------------------------------------- CLI


def _replay_command(args: argparse.Namespace) -> int:
    return run("replay", lambda settings: _replay_with(args, settings))


def _replay_with(args: argparse.Namespace, settings: Settings) -> int:
    def body() -> int:
        print(replay_file(settings, args.file, args.experiment, args.unit, args.variation,
                          args.metric, args.covariate, rate=args.rate, shuffle=args.shuffle,
                          duplicate=args.duplicate, seed=args.seed,
                          progress=not args.no_progress, attributes=args.attribute,
                          pre_period=args.pre_period))
        return 0

    return guard_publishing("replay", settings, body)


def add_replay_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the ``replay`` sub-command to a sub-parser collection."""
    p = sub.add_parser("replay", help="publish a unit-level CSV file as exposures and events",
                       description="Publish one exposure per row and one event per non-zero "
                                   "metric cell to the registered experiment's topics.")
    p.add_argument("file", help="CSV file, one row per unit")
    p.add_argument("--experiment", required=True, help="id of the registered experiment")
    p.add_argument("--unit", default=None, help="column with unit ids (default: row numbers)")
    p.add_argument("--variation", required=True, help="column with the variation name")
    p.add_argument("--metric", action="append", required=True,
                   help="metric column; its events are named after it (repeatable)")
    p.add_argument("--covariate", action="append", default=[],
                   help="pre-experiment covariate column sent with the exposure (repeatable)")
    p.add_argument("--attribute", action="append", default=[],
                   help="column sent as an exposure attribute (a dimension's value; empty "
                        "cells leave it out) (repeatable)")
    p.add_argument("--pre-period", action="append", default=[], metavar="COL[=EVENT]",
                   help="column published as one event per unit (named EVENT, default the "
                        "column) half the definition's lookback before its exposure: the "
                        "metric's own pre-period value (repeatable)")
    p.add_argument("--rate", type=float, default=None, help="messages per second (no limit)")
    p.add_argument("--shuffle", action="store_true",
                   help="publish in random order (events may precede their exposure)")
    p.add_argument("--duplicate", type=float, default=0.0, metavar="FRACTION",
                   help="re-send this fraction of all messages at random later positions")
    p.add_argument("--seed", type=int, default=0, help="seed of --shuffle / --duplicate (0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(handler=_replay_command)
