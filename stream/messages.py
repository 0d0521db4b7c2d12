"""Wire messages: exposures and events as JSON, validated fast with msgspec.

``parse_exposure`` / ``parse_event`` never raise: any input gives either a valid, frozen
struct (finite numbers, timestamps normalised to float epoch seconds) or a :class:`Rejected`
with a one-line reason naming the offending field, ready for the dead-letter topic.

Wire format (JSON objects; unknown extra fields are ignored)::

    exposure  {"experiment", "unit", "variation", "ts", "covariates": {name: number}?}
    event     {"unit", "event", "value"?, "ts", "experiment"?, "id"?}

``ts`` is epoch seconds (int or float) or an ISO-8601 string (naive means UTC).
"""

from __future__ import annotations

import base64
import contextlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import msgspec

from state.limits import MAX_ATTRIBUTE_LENGTH, MAX_ATTRIBUTES
from state.naming import ID_PATTERN, ID_REGEX

__all__ = [
    "EXPERIMENT_ID_PATTERN",
    "MAX_ABS_VALUE",
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTE_LENGTH",
    "MAX_COVARIATES",
    "MAX_ID_LENGTH",
    "MAX_MESSAGE_BYTES",
    "MAX_TS",
    "MIN_TS",
    "Event",
    "Exposure",
    "Rejected",
    "dead_letter",
    "encode_event",
    "encode_exposure",
    "parse_event",
    "parse_exposure",
    "parse_timestamp",
]

MAX_MESSAGE_BYTES: Final = 64 * 1024
MAX_ID_LENGTH: Final = 256
MAX_COVARIATES: Final = 64
MAX_ABS_VALUE: Final = 1e15
EXPERIMENT_ID_PATTERN: Final = ID_PATTERN
#: Accepted timestamps: 2000-01-01T00:00Z <= ts < 2101-01-01T00:00Z (years 2000..2100).
MIN_TS: Final = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
MAX_TS: Final = datetime(2101, 1, 1, tzinfo=UTC).timestamp()
_MAX_TS_TEXT = 64


class Exposure(msgspec.Struct, frozen=True):
    """A unit was assigned to ``variation`` of ``experiment`` at ``ts`` (epoch seconds)."""

    experiment: str
    unit: str
    variation: str
    ts: float
    covariates: dict[str, float] = msgspec.field(default_factory=dict)
    attributes: dict[str, str] = msgspec.field(default_factory=dict)  # dimension values


class Event(msgspec.Struct, frozen=True):
    """Something a unit did at ``ts``; ``experiment`` optionally scopes it to one experiment."""

    unit: str
    event: str
    ts: float
    value: float = 1.0
    experiment: str | None = None
    id: str | None = None  # when set, a re-delivered copy of the event counts once


@dataclass(frozen=True)
class Rejected:
    """An input that failed validation, with a one-line reason naming the field."""

    reason: str


# Wire shapes: like the public structs but ``ts`` may still be an ISO string.
class _ExposureWire(msgspec.Struct):
    experiment: str
    unit: str
    variation: str
    ts: float | str
    covariates: dict[str, float] = msgspec.field(default_factory=dict)
    attributes: dict[str, str] = msgspec.field(default_factory=dict)


class _EventWire(msgspec.Struct):
    unit: str
    event: str
    ts: float | str
    value: float = 1.0
    experiment: str | None = None
    id: str | None = None


_exposure_decoder = msgspec.json.Decoder(_ExposureWire)
_event_decoder = msgspec.json.Decoder(_EventWire)
_encoder = msgspec.json.Encoder()
_Parsed = TypeVar("_Parsed", Exposure, Event)

_EXPECTED = re.compile(r"Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`(?: - at `\$(?P<at>.*)`)?")
_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]+)`(?: - at `\$(?P<at>.*)`)?")
_WANT = {
    "float": "a number",
    "str": "a string",
    "str | null": "a string or null",
    "float | str": "epoch seconds or an ISO-8601 string",
    "object": "an object",
}
_AT = re.compile(r"^(?P<msg>.*?) - at `\$(?P<at>.*)`$")


class _Invalid(Exception):
    """Internal: a validation failure carrying its reason."""


def _path(at: str | None) -> str:
    return (at or "").lstrip(".") or "message"


def _reason_from_validation(msg: str) -> str:
    """Rewrite a msgspec validation message as ``field: problem``."""
    msg = msg.splitlines()[0] if msg else "invalid message"
    m = _MISSING.fullmatch(msg)
    if m:
        prefix = _path(m["at"])
        field = m["field"] if prefix == "message" else f"{prefix}.{m['field']}"
        return f"{field}: missing required field"
    m = _EXPECTED.fullmatch(msg)
    if m:
        where, want, got = _path(m["at"]), m["want"], m["got"]
        if where == "message":
            return f"message: expected a JSON object, got {got}"
        want = _WANT.get(want, want)
        if where.endswith("[...]"):
            return f"{where[:-5]}: every value must be {want}, got {got}"
        return f"{where}: expected {want}, got {got}"
    m = _AT.fullmatch(msg)
    if m:
        return f"{_path(m['at'])}: {m['msg'][:1].lower()}{m['msg'][1:]}"
    return msg


def _check_id(field: str, s: str) -> None:
    if not s:
        raise _Invalid(f"{field}: must not be empty")
    if len(s) > MAX_ID_LENGTH:
        raise _Invalid(f"{field}: longer than {MAX_ID_LENGTH} characters ({len(s)})")


_VALID_EXPERIMENTS: set[str] = set()  # ids already matched (few; bounded below)
_MAX_REMEMBERED = 4096


def _check_experiment(field: str, s: str) -> None:
    if s in _VALID_EXPERIMENTS:
        return
    if EXPERIMENT_ID_PATTERN.fullmatch(s) is not None:
        if len(_VALID_EXPERIMENTS) < _MAX_REMEMBERED:
            _VALID_EXPERIMENTS.add(s)
        return
    shown = s if len(s) <= 70 else s[:67] + "..."
    raise _Invalid(f"{field}: {shown!r} does not match {ID_REGEX}")


def _check_number(field: str, x: float) -> None:
    if not math.isfinite(x):
        raise _Invalid(f"{field}: must be a finite number, got {x}")
    if abs(x) > MAX_ABS_VALUE:
        raise _Invalid(f"{field}: magnitude above {MAX_ABS_VALUE:g} ({x:g})")


def parse_timestamp(ts: float | str, field: str = "ts") -> float:
    """Epoch seconds from a number or an ISO-8601 string (naive = UTC); ValueError if invalid."""
    try:
        return _timestamp(ts, field)
    except _Invalid as exc:
        raise ValueError(str(exc)) from None


def _timestamp(ts: float | str, field: str) -> float:
    if isinstance(ts, str):
        text = ts.strip()
        if len(text) > _MAX_TS_TEXT:
            raise _Invalid(f"{field}: timestamp string longer than {_MAX_TS_TEXT} characters")
        try:
            dt = datetime.fromisoformat(text)
        except (ValueError, OverflowError):
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise _Invalid(
                f"{field}: not an ISO-8601 timestamp or epoch seconds: {shown!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        try:
            value = dt.timestamp()
        except (ValueError, OverflowError):
            raise _Invalid(f"{field}: timestamp out of range: {text!r}") from None
    else:
        value = float(ts)
        if not math.isfinite(value):
            raise _Invalid(f"{field}: must be a finite number, got {value}")
    if not MIN_TS <= value < MAX_TS:
        ms = not isinstance(ts, str) and MAX_TS <= value < MAX_TS * 1000
        hint = " (milliseconds? ts is epoch seconds)" if ms else ""
        raise _Invalid(f"{field}: timestamp {ts!r} outside years 2000-2100{hint}")
    return value


def _precheck(raw: Any) -> None:
    if raw.__class__ is bytes and 0 < len(raw) <= MAX_MESSAGE_BYTES and raw.isascii():
        return  # the common case, every check below passes
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise _Invalid(f"message: expected bytes, got {type(raw).__name__}")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise _Invalid(f"message: {len(raw)} bytes, over the {MAX_MESSAGE_BYTES} byte limit")
    if not len(raw):
        raise _Invalid("message: empty")
    if not bytes(raw).isascii():
        try:
            bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Invalid(f"message: invalid UTF-8 at byte {exc.start}") from None


def _decode(decoder: msgspec.json.Decoder[Any], raw: bytes) -> Any:
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise _Invalid(_reason_from_validation(str(exc))) from None
    except msgspec.DecodeError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else "malformed"
        raise _Invalid(f"message: not JSON ({detail})") from None
    except RecursionError:
        raise _Invalid("message: nested too deeply") from None


def _exposure(raw: bytes) -> Exposure:
    _precheck(raw)
    w: _ExposureWire = _decode(_exposure_decoder, raw)
    _check_id("experiment", w.experiment)
    _check_experiment("experiment", w.experiment)
    _check_id("unit", w.unit)
    _check_id("variation", w.variation)
    ts = _timestamp(w.ts, "ts")
    covs = w.covariates
    _check_count("covariates", len(covs), MAX_COVARIATES)
    for name, x in covs.items():
        _check_name("covariates", "covariate", name, MAX_ID_LENGTH)
        if not -MAX_ABS_VALUE <= x <= MAX_ABS_VALUE:  # NaN too; the field named on failure
            _check_number(f"covariates.{name}", x)
    _check_attributes(w.attributes)
    return Exposure(w.experiment, w.unit, w.variation, ts, covs, w.attributes)


def _check_count(section: str, count: int, most: int) -> None:
    """A map of at most ``most`` entries."""
    if count > most:
        raise _Invalid(f"{section}: {count} entries, more than {most}")


def _check_name(section: str, what: str, name: str, longest: int) -> None:
    """A map's key: non-empty, at most ``longest`` characters."""
    if not name:
        raise _Invalid(f"{section}: empty {what} name")
    if len(name) > longest:
        raise _Invalid(f"{section}: name longer than {longest} characters ({len(name)})")


def _check_attributes(attrs: dict[str, str]) -> None:
    """Dimension values: bounded count and lengths, non-empty names (DESIGN §2 slices)."""
    _check_count("attributes", len(attrs), MAX_ATTRIBUTES)
    for name, value in attrs.items():
        _check_name("attributes", "attribute", name, MAX_ATTRIBUTE_LENGTH)
        if len(value) > MAX_ATTRIBUTE_LENGTH:
            raise _Invalid(f"attributes.{name}: value longer than {MAX_ATTRIBUTE_LENGTH} "
                           f"characters ({len(value)})")


def _event(raw: bytes) -> Event:
    _precheck(raw)
    w: _EventWire = _decode(_event_decoder, raw)
    _check_id("unit", w.unit)
    _check_id("event", w.event)
    ts = _timestamp(w.ts, "ts")
    _check_number("value", w.value)
    if w.experiment is not None:
        _check_id("experiment", w.experiment)
        _check_experiment("experiment", w.experiment)
    if w.id is not None:
        _check_id("id", w.id)
    return Event(w.unit, w.event, ts, float(w.value), w.experiment, w.id)


def _never_raising(parse: Callable[[bytes], _Parsed], raw: bytes, what: str) -> _Parsed | Rejected:
    try:
        return parse(raw)
    except _Invalid as exc:
        return Rejected(str(exc) or f"invalid {what}")
    except Exception as exc:  # defensive: the worker must never crash on input
        return Rejected(f"message: unexpected {type(exc).__name__} while parsing")


def parse_exposure(raw: bytes) -> Exposure | Rejected:
    """Validate one exposure message; never raises."""
    return _never_raising(_exposure, raw, "exposure")


def parse_event(raw: bytes) -> Event | Rejected:
    """Validate one event message; never raises."""
    return _never_raising(_event, raw, "event")


def encode_exposure(e: Exposure) -> bytes:
    """JSON bytes of an exposure (``ts`` as epoch seconds); parses back to an equal struct."""
    return _encoder.encode(e)


def encode_event(e: Event) -> bytes:
    """JSON bytes of an event (``ts`` as epoch seconds); parses back to an equal struct."""
    return _encoder.encode(e)


DEAD_LETTER_ORIGINAL_BYTES: Final = 64 * 1024


def dead_letter(raw: bytes | None, topic: str, partition: int, offset: int,
                reason: str) -> bytes:
    """A dead-letter record: reason, origin, the original bytes (base64, and text if UTF-8).

    A tombstone (``None`` value) is recorded as such; an original over 64 KiB is truncated
    (``original_size`` keeps its length), so a dead letter always fits a Kafka message.
    """
    data = b"" if raw is None else bytes(raw)
    kept = data[:DEAD_LETTER_ORIGINAL_BYTES]
    doc: dict[str, Any] = {
        "reason": reason,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "original_size": len(data),
        "original_b64": base64.b64encode(kept).decode("ascii"),
    }
    if raw is None:
        doc["tombstone"] = True
    if len(kept) < len(data):
        doc["truncated"] = True
    elif len(data) <= 4096:
        with contextlib.suppress(UnicodeDecodeError):
            doc["original"] = data.decode("utf-8")
    return _encoder.encode(doc)
