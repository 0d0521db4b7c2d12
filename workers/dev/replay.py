"""``liftstream replay FILE.csv``: publish a unit-level dataset as exposures and events.

Every row is one unit: one exposure (variation and covariates from the row) and, per metric
column with a non-zero value, one event named after the column carrying that value. Exposure
*i* has ``ts = start_ts + i * 0.001``; its events ``ts + 1``. Each event has the id
``"{unit}:{column}"``, so re-delivered copies count once. Messages are keyed by the unit id,
so a unit's exposure and events land in the same partition number of both topics.

:func:`publish` (also used by :mod:`workers.dev.simulate`) sends with ``acks="all"``, an optional
rate limit and a plain-text progress bar on stderr, and returns only after the broker
acknowledged every message.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pandas as pd
import redis.exceptions

from state.definition import ExperimentDef
from state.registry import Registry
from state.store import connect
from stream.kafka import ensure_topics, make_producer, wait_for_broker
from stream.messages import Event, Exposure, encode_event, encode_exposure
from workers.batch.columns import InputError, numeric_column
from workers.cli.prologue import fail, run
from workers.dev.progress import Progress
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

#: (topic kind ``"exposures"`` | ``"events"``, key, value)
Message = tuple[str, bytes, bytes]
KINDS: Final = ("exposures", "events")
DEFAULT_START_TS: Final = 1_700_000_000.0
ROW_SPACING: Final = 0.001  # seconds between consecutive exposures
EVENT_DELAY: Final = 1.0  # seconds from a unit's exposure to its events


class ReplayError(ValueError):
    """Bad input (file, column, value, experiment); the CLI exits with status 2."""


class PublishError(RuntimeError):
    """The broker did not acknowledge every message, or the topics are unusable."""


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


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class _Rows:
    """Validated columns of a frame, ready to become messages."""

    units: list[str]
    variations: list[str]
    metrics: dict[str, np.ndarray]
    covariates: dict[str, np.ndarray]
    # --attribute: column → per row its text, None where empty (the attribute is left out)
    attributes: dict[str, list[str | None]] = field(default_factory=dict)
    # --pre-period: column → (event name, values): one event per unit before its exposure
    pre_period: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)


def _require(frame: pd.DataFrame, column: str, role: str) -> None:
    if column not in frame.columns:
        shown = ", ".join(map(str, frame.columns))
        raise ReplayError(f"column {column!r} ({role}) not found; columns: {shown}")


def _text_column(frame: pd.DataFrame, column: str) -> list[str]:
    s = frame[column]
    bad = s.isna().to_numpy() | (s.astype(str).str.strip() == "").to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise ReplayError(f"column {column!r}: empty value in data row {row + 1}")
    return [str(v) for v in s.tolist()]


def _numbers(frame: pd.DataFrame, column: str) -> np.ndarray:
    try:
        return numeric_column(frame, column)
    except InputError as exc:
        raise ReplayError(str(exc)) from None


def _attribute_column(frame: pd.DataFrame, column: str) -> list[str | None]:
    """Text per row; an empty cell leaves the attribute out (its slice is ``(none)``)."""
    s = frame[column]
    empty = s.isna().to_numpy() | (s.astype(str).str.strip() == "").to_numpy()
    return [None if e else str(v) for v, e in zip(s.tolist(), empty, strict=True)]


def parse_pre_period(text: str) -> tuple[str, str]:
    """``COL`` (events named after the column) or ``COL=EVENT``."""
    column, _, event = text.partition("=")
    if not column or (_ and not event):
        raise ReplayError(f"--pre-period {text!r}: expected COL or COL=EVENT")
    return column, event or column


def _extract(frame: pd.DataFrame, unit: str | None, variation: str, metrics: Sequence[str],
             covariates: Sequence[str], attributes: Sequence[str] = (),
             pre_period: Sequence[str] = ()) -> _Rows:
    """Check and convert the columns; ReplayError names the first bad column."""
    if not metrics:
        raise ReplayError("give at least one --metric column")
    for name, values in (("metric", metrics), ("covariate", covariates),
                         ("attribute", attributes)):
        repeated = sorted({c for c in values if list(values).count(c) > 1})
        if repeated:
            raise ReplayError(f"column {repeated[0]!r} given twice as {name}")
    _require(frame, variation, "variation")
    if unit is not None:
        _require(frame, unit, "unit")
    for c in metrics:
        _require(frame, c, "metric")
    for c in covariates:
        _require(frame, c, "covariate")
    for c in attributes:
        _require(frame, c, "attribute")
    pre = dict(parse_pre_period(t) for t in pre_period)
    for c in pre:
        _require(frame, c, "pre-period")
    if unit is None:
        units = [f"u{i}" for i in range(len(frame))]
    else:
        units = _text_column(frame, unit)
        counts = pd.Series(units).value_counts()
        if len(counts) and int(counts.iloc[0]) > 1:
            dup = int((counts > 1).sum())
            raise ReplayError(f"column {unit!r}: unit ids must be unique, {dup} repeat "
                              f"(e.g. {counts.index[0]!r}); omit --unit to use row numbers")
    return _Rows(units, _text_column(frame, variation),
                 {c: _numbers(frame, c) for c in metrics},
                 {c: _numbers(frame, c) for c in covariates},
                 {c: _attribute_column(frame, c) for c in attributes},
                 {c: (event, _numbers(frame, c)) for c, event in pre.items()})


def _build(rows: _Rows, experiment: str, start_ts: float, pre_offset: float = EVENT_DELAY
           ) -> list[Message]:
    out: list[Message] = []
    metric_items = list(rows.metrics.items())
    cov_items = list(rows.covariates.items())
    attr_items = list(rows.attributes.items())
    for i, (unit, variation) in enumerate(zip(rows.units, rows.variations, strict=True)):
        key = unit.encode()
        ts = start_ts + i * ROW_SPACING
        covs = {name: float(values[i]) for name, values in cov_items}
        attrs = {name: v for name, values in attr_items if (v := values[i]) is not None}
        out.append(("exposures", key,
                    encode_exposure(Exposure(experiment, unit, variation, ts, covs, attrs))))
        for column, (event, values) in rows.pre_period.items():
            value = float(values[i])
            if value != 0.0:  # inside [ts - lookback, ts): the unit's pre_<metric>
                out.append(("events", key, encode_event(Event(
                    unit, event, ts - pre_offset, value, experiment, f"{unit}:pre:{column}"))))
        for column, values in metric_items:
            value = float(values[i])
            if value != 0.0:
                ev = Event(unit, column, ts + EVENT_DELAY, value, experiment,
                           f"{unit}:{column}")
                out.append(("events", key, encode_event(ev)))
    return out


def _shuffle_and_duplicate(messages: list[Message], shuffle: bool, duplicate: float,
                           seed: int) -> tuple[list[Message], int]:
    rng = np.random.default_rng(seed)
    n = len(messages)
    if shuffle and n > 1:
        messages = [messages[j] for j in rng.permutation(n)]
    k = round(duplicate * n)
    if k == 0:
        return messages, 0
    chosen = np.sort(rng.choice(n, size=k, replace=False))
    # originals sit at positions 0..n-1; a copy of message i goes into a random gap after i
    gap = rng.integers(chosen + 1, n + 1)  # the copy lands just before original `gap`
    positions = np.concatenate([np.arange(n, dtype=np.float64),
                                gap - 0.75 + 0.5 * rng.random(k)])
    items = messages + [messages[int(j)] for j in chosen]
    order = np.argsort(positions, kind="stable")
    return [items[int(j)] for j in order], k


def replay_messages(frame: pd.DataFrame, experiment: str, unit: str | None, variation: str,
                    metrics: Sequence[str], covariates: Sequence[str], shuffle: bool = False,
                    duplicate: float = 0.0, seed: int = 0,
                    start_ts: float = DEFAULT_START_TS,
                    attributes: Sequence[str] = (), pre_period: Sequence[str] = (),
                    pre_offset: float = EVENT_DELAY) -> list[Message]:
    """All messages of a frame in publish order: ``(kind, key, value)``.

    ``shuffle`` permutes the whole list (events may then precede their exposure);
    ``duplicate`` re-sends that fraction of all messages, each at a random later position.
    """
    if not 0.0 <= duplicate <= 1.0:
        raise ReplayError(f"--duplicate must be between 0 and 1, got {duplicate}")
    rows = _extract(frame, unit, variation, metrics, covariates, attributes, pre_period)
    messages = _build(rows, experiment, start_ts, pre_offset)
    return _shuffle_and_duplicate(messages, shuffle, duplicate, seed)[0]


# --------------------------------------------------------------------------- publishing


def prepare_topics(settings: Settings, timeout_s: float = 30.0) -> int:
    """Wait for the broker, create missing topics; return their (equal) partition count."""
    sec = settings.kafka_options()
    wait_for_broker(settings.kafka_bootstrap, timeout_s=timeout_s, **sec)
    exposures, events = settings.topic_exposures, settings.topic_events
    counts = ensure_topics(settings.kafka_bootstrap,
                           {exposures: settings.partitions, events: settings.partitions},
                           strict=False, timeout_s=timeout_s, **sec)
    if counts[exposures] != counts[events]:
        raise PublishError(f"topics {exposures!r} ({counts[exposures]} partitions) and "
                           f"{events!r} ({counts[events]} partitions) must have the same "
                           f"partition count: a unit's exposure and events must meet")
    return counts[exposures]


def publish(settings: Settings, messages: Iterable[Message], *, total: int | None = None,
            rate: float | None = None, progress: bool = True, label: str = "publishing",
            client_id: str = "liftstream-replay") -> int:
    """Send every message (acks=all), flush, and return the count; PublishError on failure.

    ``rate`` limits to that many messages per second; the progress bar goes to stderr when
    it is a TTY and ``progress`` is true.
    """
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise ReplayError(f"--rate must be a positive number of messages/s, got {rate}")
    prepare_topics(settings)
    topics = {"exposures": settings.topic_exposures, "events": settings.topic_events}
    producer = make_producer(settings.kafka_bootstrap, client_id=client_id, acks="all",
                             **settings.kafka_options())
    failures: list[BaseException] = []

    def failed(exc: BaseException) -> None:
        failures.append(exc)

    bar = Progress(label, total, progress)
    sent = 0
    start = time.monotonic()
    try:
        for kind, key, value in messages:
            topic = topics.get(kind)
            if topic is None:
                raise ValueError(f"unknown topic kind {kind!r}; expected one of {KINDS}")
            producer.send(topic, key=key, value=value).add_errback(failed)
            sent += 1
            if rate is not None:
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0.002:
                    time.sleep(ahead)
            bar.update(sent)
        producer.flush()
    finally:
        bar.close(sent)
        producer.close(timeout=10)
    if failures:
        raise PublishError(f"{len(failures)} of {sent} messages were not acknowledged by the "
                           f"broker; first error: {failures[0]!r}")
    return sent


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


def _check_against(d: ExperimentDef, rows: _Rows) -> None:
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
    if not 0.0 <= duplicate <= 1.0:
        raise ReplayError(f"--duplicate must be between 0 and 1, got {duplicate}")
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise ReplayError(f"--rate must be a positive number of messages/s, got {rate}")
    frame = _read_csv(path, unit, variation, attributes)
    rows = _extract(frame, unit, variation, metrics, covariates, attributes, pre_period)
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
    messages, duplicates = _shuffle_and_duplicate(_build(rows, experiment, start_ts, offset),
                                                  shuffle, duplicate, seed)
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
    try:
        report = replay_file(settings, args.file, args.experiment, args.unit, args.variation,
                             args.metric, args.covariate, rate=args.rate,
                             shuffle=args.shuffle, duplicate=args.duplicate, seed=args.seed,
                             progress=not args.no_progress, attributes=args.attribute,
                             pre_period=args.pre_period)
    except ReplayError as exc:
        return fail("replay", str(exc))
    except (PublishError, TimeoutError) as exc:
        return fail("replay", str(exc), 1)
    except redis.exceptions.RedisError as exc:
        return fail("replay", f"Redis at {settings.redacted()['redis_url']}: {exc}", 1)
    print(report)
    return 0


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
