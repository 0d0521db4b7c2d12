"""Reading and checking a unit-level CSV file's columns: specs, numbers, missing values,
errors naming what to fix."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from estimators.analysis import MetricKind


class InputError(ValueError):
    """Bad input: the message names the column or value to fix."""


Missing = Literal["error", "drop", "zero"]
MISSING_CHOICES: tuple[Missing, ...] = ("error", "drop", "zero")
SHOWN = 60  # longest value or name quoted in a message
LISTED = 20  # most names listed in a message
#: Largest |value| accepted: the estimators use up to fourth powers of values (variances of
#: variances, Welch degrees of freedom), which must stay finite in float64 (max ≈ 1.8e308).
MAX_ABS_VALUE = 1e75


@dataclass(frozen=True)
class MetricColumn:
    column: str
    kind: MetricKind | None = None  # None: detect (binary if every value is 0/1)
    quantiles: tuple[float, ...] = ()  # COL:quantile=Q[,Q…]: a quantile metric


@dataclass(frozen=True)
class RatioColumns:
    name: str
    numerator: str
    denominator: str


def brief(value: Any, limit: int = SHOWN) -> str:
    """``repr`` of a name or cell, one line, at most ``limit`` characters."""
    if isinstance(value, np.generic):
        value = value.item()
    text = repr(value) if isinstance(value, str) else str(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def listing(values: Sequence[Any]) -> str:
    shown = ", ".join(brief(str(v), 30) for v in values[:LISTED])
    return shown + (f", … ({len(values)} in all)" if len(values) > LISTED else "")


def parse_metric(text: str) -> MetricColumn:
    col, _, kind = text.partition(":")
    if kind.startswith("quantile"):
        return MetricColumn(col, None, _parse_quantiles(text, kind))
    if kind not in ("", "binary", "numeric"):
        raise InputError(f"metric {text!r}: kind must be 'binary' or 'numeric'")
    return MetricColumn(col, kind or None)  # type: ignore[arg-type]


def _parse_quantiles(text: str, kind: str) -> tuple[float, ...]:
    """``quantile=0.9`` or ``quantile=0.5,0.9``: each q in (0, 1)."""
    head, eq, rest = kind.partition("=")
    if head != "quantile" or not eq or not rest:
        raise InputError(f"metric {text!r}: expected COL:quantile=Q[,Q…] with Q in (0, 1)")
    out = []
    for part in rest.split(","):
        try:
            q = float(part)
        except ValueError:
            raise InputError(f"metric {text!r}: quantile {part!r} is not a number") from None
        if not 0.0 < q < 1.0:
            raise InputError(f"metric {text!r}: quantile {part!r} must be in (0, 1)")
        out.append(q)
    return tuple(sorted(set(out)))


def parse_ratio(text: str) -> RatioColumns:
    name, eq, rest = text.partition("=")
    num, slash, den = rest.partition("/")
    if not (eq and slash and name and num and den):
        raise InputError(f"ratio {text!r}: expected NAME=NUM_COL/DEN_COL")
    return RatioColumns(name, num, den)


def parse_weights(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in text.split(","):
        name, eq, value = part.rpartition("=")
        try:
            w = float(value)
        except ValueError:
            w = math.nan
        if not eq or not name or not math.isfinite(w) or w <= 0:
            raise InputError(f"weights {text!r}: expected NAME=POSITIVE_NUMBER,… at {part!r}")
        out[name] = w
    return out


def read_table(path: str, columns: Sequence[str], text_columns: Sequence[str] = ()
               ) -> pd.DataFrame:
    """The used ``columns`` of a CSV file; ``text_columns`` are read as text, as written."""
    try:
        header = pd.read_csv(path, nrows=0)
    except FileNotFoundError:
        raise InputError(f"file not found: {brief(path)}") from None
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read {brief(path)} as CSV: {brief(exc, 200)}") from None
    missing = [c for c in columns if c not in header.columns]
    if missing:
        raise InputError(f"column {brief(missing[0])} not found in {brief(path)} "
                         f"(columns: {listing(list(header.columns))})")
    try:
        return pd.read_csv(path, usecols=list(dict.fromkeys(columns)), low_memory=False,
                           dtype={c: str for c in text_columns})
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read {brief(path)} as CSV: {brief(exc, 200)}") from None


def missing_mask(s: pd.Series) -> np.ndarray:
    """Cells that are missing: NA, or text that is empty or only whitespace."""
    mask = np.array(s.isna(), dtype=bool)
    if str(s.dtype).startswith("str"):
        mask |= np.array(s.str.strip().eq("").fillna(False), dtype=bool)
    elif s.dtype == object:  # mixed cells: only text can be blank
        text = s.where(~mask, "x").astype(str).str.strip()
        mask |= np.array(text == "", dtype=bool)
    return mask


def missing_message(column: str, mask: np.ndarray, rows: np.ndarray | None = None) -> str:
    """``column 'y' has 3 missing values (first in data row 17)``."""
    k = int(mask.sum())
    first = int(np.argmax(mask))
    row = int(rows[first]) if rows is not None else first + 1
    return (f"column {brief(column)} has {k} missing value{'s' if k != 1 else ''} "
            f"(first in data row {row})")


def numeric_column(frame: pd.DataFrame, column: str, fill: float | None = None,
                   rows: np.ndarray | None = None) -> np.ndarray:
    """A column as float64: ``true``/``false`` text as 1/0; missing cells are ``fill`` (an
    error when ``None``). ``rows``: each row's data-row number, for messages."""
    s = frame[column]
    missing = missing_mask(s)
    if missing.any() and fill is None:
        raise InputError(missing_message(column, missing, rows))
    values = _floats(s, missing)
    values[missing] = fill if fill is not None else np.nan
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.argmax(bad))
        row = int(rows[i]) if rows is not None else i + 1
        cell = s.iloc[i]
        if isinstance(cell, (int, float, np.number)) or _is_number(cell):
            raise InputError(f"column {brief(column)} has a non-finite value "
                             f"{brief(cell)} in data row {row}")
        raise InputError(f"column {brief(column)} is not numeric: value {brief(cell)} "
                         f"in data row {row}")
    big = np.abs(values) > MAX_ABS_VALUE
    if big.any():
        i = int(np.argmax(big))
        row = int(rows[i]) if rows is not None else i + 1
        raise InputError(f"column {brief(column)} has a value too large for the float64 "
                         f"statistics: {brief(s.iloc[i])} in data row {row} (limit "
                         f"±{MAX_ABS_VALUE:g}; rescale the column)")
    return values


def _floats(s: pd.Series, missing: np.ndarray) -> np.ndarray:
    if s.dtype == bool or (isinstance(s.dtype, np.dtype) and s.dtype.kind in "iuf"):
        return np.array(s.to_numpy(dtype=np.float64), dtype=np.float64)  # a writable copy
    if s.dtype == object or str(s.dtype).startswith("str"):
        present = s.astype(object)[~missing]
        lowered = present.astype(str).str.strip().str.lower()
        if len(present) and lowered.isin(["true", "false"]).all():
            out = np.zeros(len(s))
            out[~missing] = (lowered == "true").to_numpy(dtype=np.float64)
            return out
    out_values: np.ndarray = pd.to_numeric(s.astype(object).where(~missing, np.nan),
                                           errors="coerce").to_numpy(dtype=np.float64)
    return out_values.copy()


def _is_number(cell: Any) -> bool:
    try:
        float(str(cell))
    except ValueError:
        return False
    return True
