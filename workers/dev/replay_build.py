"""From a unit-level frame to messages: the columns checked and converted, one exposure per
row and one event per non-zero metric cell, optionally shuffled and duplicated (the layout is
described in :mod:`workers.dev.replay`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import pandas as pd

from stream.messages import Event, Exposure, encode_event, encode_exposure
from workers.batch.columns import InputError, numeric_column
from workers.dev.publish import Message, ReplayError

__all__ = ["DEFAULT_START_TS", "EVENT_DELAY", "ROW_SPACING", "Rows", "build_messages",
           "check_duplicate", "extract_rows", "parse_pre_period", "replay_messages",
           "shuffle_and_duplicate"]

DEFAULT_START_TS: Final = 1_700_000_000.0
ROW_SPACING: Final = 0.001  # seconds between consecutive exposures
EVENT_DELAY: Final = 1.0  # seconds from a unit's exposure to its events


def check_duplicate(duplicate: float) -> None:
    """ReplayError unless ``duplicate`` is a fraction in [0, 1]."""
    if not 0.0 <= duplicate <= 1.0:
        raise ReplayError(f"--duplicate must be between 0 and 1, got {duplicate}")


@dataclass(frozen=True)
class Rows:
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


def extract_rows(frame: pd.DataFrame, unit: str | None, variation: str,
                 metrics: Sequence[str], covariates: Sequence[str],
                 attributes: Sequence[str] = (), pre_period: Sequence[str] = ()) -> Rows:
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
    return Rows(units, _text_column(frame, variation),
                 {c: _numbers(frame, c) for c in metrics},
                 {c: _numbers(frame, c) for c in covariates},
                 {c: _attribute_column(frame, c) for c in attributes},
                 {c: (event, _numbers(frame, c)) for c, event in pre.items()})


def build_messages(rows: Rows, experiment: str, start_ts: float,
                   pre_offset: float = EVENT_DELAY) -> list[Message]:
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


def shuffle_and_duplicate(messages: list[Message], shuffle: bool, duplicate: float,
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
    check_duplicate(duplicate)
    rows = extract_rows(frame, unit, variation, metrics, covariates, attributes, pre_period)
    messages = build_messages(rows, experiment, start_ts, pre_offset)
    return shuffle_and_duplicate(messages, shuffle, duplicate, seed)[0]
