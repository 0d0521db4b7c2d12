"""Experiment definitions (YAML or JSON): the schema, parsing and validation (pure, no I/O
but reading a definition file; storage in Redis is :mod:`state.registry`).

A definition names the variations (the first is the control) and their traffic weights, the
metrics computed from events, optional ratio metrics, pre-experiment covariates (from the
exposure message, or a metric's own pre-exposure value over a look-back window), in-experiment
covariate candidates, and analysis settings. :func:`parse_definition` turns a mapping into a
validated, normalised :class:`ExperimentDef` or raises :class:`DefinitionError` whose message
starts with the offending field, e.g. ``metrics[1].aggregate: must be one of binary, count,
sum, quantile``. Sizes are bounded (:mod:`state.limits`: variations, metrics, covariates,
candidates, columns in all, bytes of text) and names may not clash with derived columns
(:mod:`state.naming`, e.g. a covariate ``clk:pred`` next to metric ``clk``'s prediction).

>>> d = parse_definition({"id": "exp-1", "variations": ["control", "treatment"],
...                       "metrics": [{"name": "clicks", "event": "click", "aggregate": "count"}]})
>>> d.control, d.weights, d.primary
('control', (0.5, 0.5), 'clicks')
>>> parse_definition({"id": "exp 1", "variations": ["a", "b"], "metrics": []})
Traceback (most recent call last):
...
state.limits.DefinitionError: id: ...
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, cast, get_args

import msgspec

from estimators import defaults
from state.limits import (
    CEILINGS,
    DEFAULT_DIMENSION_VALUES,
    DEFAULT_LIMITS,
    MAX_ATTRIBUTE_LENGTH,
    MAX_DIMENSION_VALUES,
    MAX_DIMENSIONS,
    DefinitionError,
    DefinitionLimits,
    check_columns,
    check_counts,
    decode_definition_text,
    show,
)
from state.naming import (
    ID_PATTERN,
    ID_REGEX,
    has_predictions,
    pre_period_column,
    prediction_column,
)

__all__ = [
    "AGGREGATES",
    "CANDIDATE_AGGREGATES",
    "ID_PATTERN",
    "MODELS",
    "Aggregate",
    "CandidateDef",
    "DefinitionError",
    "DefinitionLimits",
    "DimensionDef",
    "ExperimentDef",
    "MetricDef",
    "RatioDef",
    "load_definition",
    "parse_definition",
    "parse_definition_text",
]

Aggregate = Literal["binary", "count", "sum", "quantile"]
CandidateAggregate = Literal["count", "sum"]
Model = Literal["linear", "logistic", "tree", "forest"]
Status = Literal["running", "stopped"]
Correction = Literal["holm", "bh"]
PriorKind = Literal["fixed", "empirical"]
SelectionKind = Literal["balance", "fisher"]

AGGREGATES: Final[tuple[str, ...]] = get_args(Aggregate)
CANDIDATE_AGGREGATES: Final[tuple[str, ...]] = get_args(CandidateAggregate)
MODELS: Final[tuple[str, ...]] = get_args(Model)
STATUSES: Final[tuple[str, ...]] = get_args(Status)
CORRECTIONS: Final[tuple[str, ...]] = get_args(Correction)

MAX_NAME_LENGTH: Final = 256
_WEIGHT_TOLERANCE = 1e-12


@dataclass(frozen=True)
class MetricDef:
    """A per-unit metric: ``binary`` (did the event occur), ``count`` or ``sum`` of values."""

    name: str
    event: str
    aggregate: Aggregate
    cap: float | None = None
    mde: float | None = None  # target relative MDE (power and time to decision)
    higher_is_better: bool = True  # desired direction (verdict, guardrail harm)
    # aggregate quantile (estimators.quantiles): the unit value is the sum of its events'
    # values; these quantiles of it are compared, from log-bucket histograms of this accuracy
    quantiles: tuple[float, ...] = ()
    accuracy: float | None = None


@dataclass(frozen=True)
class RatioDef:
    """A ratio metric: per-unit ``numerator`` over ``denominator`` (names of metrics)."""

    name: str
    numerator: str
    denominator: str
    mde: float | None = None  # target relative MDE
    higher_is_better: bool = True


@dataclass(frozen=True)
class CandidateDef:
    """An in-experiment covariate candidate: ``count`` or ``sum`` of an event."""

    name: str
    event: str
    aggregate: CandidateAggregate


@dataclass(frozen=True)
class DimensionDef:
    """A slice dimension: an exposure attribute with at most ``max_values`` kept values
    (first come, first kept; beyond → ``(other)``, missing → ``(none)``)."""

    name: str
    max_values: int = DEFAULT_DIMENSION_VALUES


@dataclass(frozen=True)
class ExperimentDef:
    """A validated experiment definition (weights normalised to sum 1, times epoch seconds)."""

    id: str
    variations: tuple[str, ...]
    weights: tuple[float, ...]
    metrics: tuple[MetricDef, ...]
    ratios: tuple[RatioDef, ...] = ()
    covariates: tuple[str, ...] = ()
    pre_period: tuple[str, ...] = ()
    lookback_seconds: float = 0.0
    in_experiment: tuple[CandidateDef, ...] = ()
    start: float | None = None
    end: float | None = None
    status: Status = "running"
    primary_metric: str | None = None
    guardrails: tuple[str, ...] = ()
    model: str | None = None  # online learner for CUPAC/MLRATE predictions; None = none
    outcome_window_seconds: float | None = None
    alpha: float = defaults.ALPHA
    sequential_tuning: float = defaults.SEQUENTIAL_TUNING
    prior_sigma: float = defaults.PRIOR_SIGMA
    selection_alpha: float = defaults.SELECTION_ALPHA
    selection_holm: bool = False
    correction: Correction | None = None
    prior: PriorKind = "fixed"  # ``prior: {kind: empirical}``: σ from finished experiments
    in_experiment_selection: SelectionKind = "balance"  # ``{kind: fisher}``: pre-selection
    min_runtime_seconds: float | None = None  # verdict: minimum runtime before deciding
    dimensions: tuple[DimensionDef, ...] = ()  # slices (stream/slices.py)

    def __post_init__(self) -> None:
        for name in ("variations", "weights", "metrics", "ratios", "covariates", "pre_period",
                     "in_experiment", "guardrails", "dimensions"):
            value = getattr(self, name)
            if isinstance(value, builtins.list):
                object.__setattr__(self, name, tuple(value))
        if not self.weights and len(self.variations) >= 2:
            n = len(self.variations)
            object.__setattr__(self, "weights", tuple(1.0 / n for _ in range(n)))
        _validate(self)
        try:
            total = math.fsum(self.weights)
        except OverflowError:
            total = math.inf
        if not math.isfinite(total):
            raise _fail("weights", "too large to normalise")
        if abs(total - 1.0) > _WEIGHT_TOLERANCE:
            object.__setattr__(self, "weights", tuple(w / total for w in self.weights))

    @property
    def control(self) -> str:
        """The control variation (the first one)."""
        return self.variations[0]

    @property
    def primary(self) -> str:
        """The primary metric's name: ``primary_metric``, else the first metric (the first
        mean metric: quantile metrics are not verdict inputs)."""
        means = [m.name for m in self.metrics if m.aggregate != "quantile"]
        return self.primary_metric or (means or [self.metrics[0].name])[0]

    def targets(self) -> dict[str, float]:
        """Metric or ratio name → its target relative MDE (those that declare one)."""
        out = {m.name: m.mde for m in self.metrics if m.mde is not None}
        return out | {r.name: r.mde for r in self.ratios if r.mde is not None}

    def higher_is_better(self) -> dict[str, bool]:
        """Metric or ratio name → its desired direction."""
        out = {m.name: m.higher_is_better for m in self.metrics}
        return out | {r.name: r.higher_is_better for r in self.ratios}

    def metric_names(self) -> tuple[str, ...]:
        """Names of all metrics, then all ratio metrics."""
        return tuple(m.name for m in self.metrics) + tuple(r.name for r in self.ratios)

    def is_active(self, ts: float) -> bool:
        """Whether ``ts`` lies inside the experiment's window ``[start, end)``
        (:func:`state.window.in_window`, the one predicate)."""
        from state.window import in_window

        return in_window(self.start, self.end, ts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping that :func:`parse_definition` turns back into this definition."""
        return {
            "id": self.id,
            "variations": builtins.list(self.variations),
            "weights": builtins.list(self.weights),
            "metrics": [{"name": m.name, "event": m.event, "aggregate": m.aggregate,
                         "cap": m.cap, "mde": m.mde, "higher_is_better": m.higher_is_better,
                         **({"quantiles": builtins.list(m.quantiles), "accuracy": m.accuracy}
                            if m.aggregate == "quantile" else {})}
                        for m in self.metrics],
            "ratios": [{"name": r.name, "numerator": r.numerator, "denominator": r.denominator,
                        "mde": r.mde, "higher_is_better": r.higher_is_better}
                       for r in self.ratios],
            "covariates": builtins.list(self.covariates),
            "pre_period": builtins.list(self.pre_period),
            "lookback_seconds": self.lookback_seconds,
            "in_experiment": [{"name": c.name, "event": c.event, "aggregate": c.aggregate}
                              for c in self.in_experiment],
            "start": self.start,
            "end": self.end,
            "status": self.status,
            "primary_metric": self.primary_metric,
            "guardrails": builtins.list(self.guardrails),
            "model": self.model,
            "outcome_window_seconds": self.outcome_window_seconds,
            "alpha": self.alpha,
            "sequential_tuning": self.sequential_tuning,
            "prior_sigma": self.prior_sigma,
            "selection_alpha": self.selection_alpha,
            "selection_holm": self.selection_holm,
            "correction": self.correction,
            "prior": {"kind": self.prior},
            "in_experiment_selection": {"kind": self.in_experiment_selection},
            "min_runtime_seconds": self.min_runtime_seconds,
            "dimensions": [{"name": x.name, "max_values": x.max_values}
                           for x in self.dimensions],
        }

    def to_json(self) -> bytes:
        """Compact JSON of :meth:`to_dict`."""
        return msgspec.json.encode(self.to_dict())

    @classmethod
    def from_json(cls, raw: bytes | str) -> ExperimentDef:
        """Parse and validate JSON written by :meth:`to_json` (or by hand)."""
        try:
            data = msgspec.json.decode(raw)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise DefinitionError(f"definition: not valid JSON ({exc})") from None
        if not isinstance(data, Mapping):
            raise DefinitionError(
                f"definition: expected a JSON object, got {_type_name(data)}")
        return parse_definition(data, CEILINGS)  # stored: held only to what storage can hold


# --------------------------------------------------------------------------- parsing

_T = TypeVar("_T")
_TOP_LEVEL: Final = frozenset(f.name for f in ExperimentDef.__dataclass_fields__.values())
_REQUIRED: Final = ("id", "variations", "metrics")


def _type_name(x: Any) -> str:
    if x is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            builtins.list: "a list", dict: "a mapping"}.get(type(x), type(x).__name__)


def _fail(path: str, message: str) -> DefinitionError:
    return DefinitionError(f"{path}: {message}")


def _str(path: str, x: Any) -> str:
    if not isinstance(x, str):
        hint = " (quote it in YAML)" if isinstance(x, int | float | date) else ""
        raise _fail(path, f"expected a string, got {_type_name(x)} {show(x)}{hint}")
    if not x:
        raise _fail(path, "must not be empty")
    if len(x) > MAX_NAME_LENGTH:
        raise _fail(path, f"longer than {MAX_NAME_LENGTH} characters ({len(x)})")
    return x


def _ident(path: str, x: Any) -> str:
    s = _str(path, x)
    if ID_PATTERN.fullmatch(s) is None:
        raise _fail(path, f"{show(s)} must match {ID_REGEX}")
    return s


def _number(path: str, x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise _fail(path, f"expected a number, got {_type_name(x)} {show(x)}")
    try:
        v = float(x)
    except OverflowError:
        raise _fail(path, "number out of range") from None
    if not math.isfinite(v):
        raise _fail(path, f"must be finite, got {v}")
    return v


def _positive(path: str, x: Any) -> float:
    v = _number(path, x)
    if v <= 0:
        raise _fail(path, f"must be > 0, got {show(x)}")
    return v


def _probability(path: str, x: Any) -> float:
    v = _number(path, x)
    if not 0.0 < v < 1.0:
        raise _fail(path, f"must be between 0 and 1 (exclusive), got {show(x)}")
    return v


def _bool(path: str, x: Any) -> bool:
    if not isinstance(x, bool):
        raise _fail(path, f"expected true or false, got {_type_name(x)} {show(x)}")
    return x


def _choice(path: str, x: Any, allowed: Sequence[str]) -> str:
    if not isinstance(x, str) or x not in allowed:
        raise _fail(path, f"must be one of {', '.join(allowed)}, got {show(x)}")
    return x


def _seq(path: str, x: Any) -> builtins.list[Any]:
    if isinstance(x, str | bytes) or not isinstance(x, Sequence):
        raise _fail(path, f"expected a list, got {_type_name(x)}")
    return builtins.list(x)


def _mapping(path: str, x: Any, keys: Sequence[str], required: Sequence[str]) -> dict[str, Any]:
    if not isinstance(x, Mapping):
        raise _fail(path, f"expected a mapping, got {_type_name(x)}")
    unknown = _unknown(x, keys)
    if unknown:
        raise _fail(path, f"unknown field(s) {unknown}; allowed: {', '.join(keys)}")
    for k in required:
        if x.get(k) is None:
            raise _fail(f"{path}.{k}", "required")
    return dict(x)


def _unknown(x: Mapping[Any, Any], allowed: Any) -> str:
    """The unknown keys of ``x`` (at most five shown, each elided)."""
    unknown = [k for k in x if k not in allowed]
    shown = ", ".join(sorted(show(k) if not isinstance(k, str) else show(k)[1:-1]
                             for k in unknown[:5]))
    return shown + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else "")


def _items(path: str, x: Any, item: Callable[[str, Any], _T]) -> tuple[_T, ...]:
    return tuple(item(f"{path}[{i}]", v) for i, v in enumerate(_seq(path, x)))


def _time(path: str, x: Any) -> float:
    """Epoch seconds from a number, an ISO-8601 string, or a YAML date/datetime (naive = UTC)."""
    if isinstance(x, str):
        try:
            x = datetime.fromisoformat(x.strip())
        except ValueError:
            raise _fail(path, f"not an ISO-8601 time or epoch seconds: {show(x)}") from None
    if isinstance(x, date) and not isinstance(x, datetime):
        x = datetime(x.year, x.month, x.day)
    if isinstance(x, datetime):
        if x.tzinfo is None:
            x = x.replace(tzinfo=UTC)
        try:
            return x.timestamp()
        except (ValueError, OverflowError):
            raise _fail(path, f"time out of range: {x}") from None
    return _number(path, x)


def _metric(path: str, x: Any) -> MetricDef:
    d = _mapping(path, x, ("name", "event", "aggregate", "cap", "mde", "higher_is_better",
                           *QUANTILE_FIELDS), ("name", "event", "aggregate"))
    cap, mde, hib = d.get("cap"), d.get("mde"), d.get("higher_is_better")
    qs, acc = _quantile_fields(path, d)
    return MetricDef(name=_ident(f"{path}.name", d["name"]), quantiles=qs, accuracy=acc,
                     event=_str(f"{path}.event", d["event"]),
                     aggregate=cast(Aggregate, _choice(f"{path}.aggregate", d["aggregate"],
                                                       AGGREGATES)),
                     cap=None if cap is None else _number(f"{path}.cap", cap),
                     mde=None if mde is None else _positive(f"{path}.mde", mde),
                     higher_is_better=True if hib is None else _bool(f"{path}.higher_is_better",
                                                                     hib))


def _kind(allowed: Sequence[str]) -> Callable[[str, Any], str]:
    """A ``{kind: ...}`` mapping (e.g. ``prior: {kind: empirical}``) → its kind."""
    def conv(path: str, x: Any) -> str:
        d = _mapping(path, x, ("kind",), ("kind",))
        return _choice(f"{path}.kind", d["kind"], allowed)
    return conv


def _ratio(path: str, x: Any) -> RatioDef:
    d = _mapping(path, x, ("name", "numerator", "denominator", "mde", "higher_is_better"),
                 ("name", "numerator", "denominator"))
    mde, hib = d.get("mde"), d.get("higher_is_better")
    return RatioDef(name=_ident(f"{path}.name", d["name"]),
                    numerator=_str(f"{path}.numerator", d["numerator"]),
                    denominator=_str(f"{path}.denominator", d["denominator"]),
                    mde=None if mde is None else _positive(f"{path}.mde", mde),
                    higher_is_better=True if hib is None else _bool(f"{path}.higher_is_better",
                                                                     hib))


def _candidate(path: str, x: Any) -> CandidateDef:
    d = _mapping(path, x, ("name", "event", "aggregate"), ("name", "event", "aggregate"))
    agg = _choice(f"{path}.aggregate", d["aggregate"], CANDIDATE_AGGREGATES)
    return CandidateDef(name=_ident(f"{path}.name", d["name"]),
                        event=_str(f"{path}.event", d["event"]),
                        aggregate=cast(CandidateAggregate, agg))


def _dimension(path: str, x: Any) -> DimensionDef:
    """``country`` (the default cap) or ``{name: country, max_values: 50}``."""
    if isinstance(x, str):
        return DimensionDef(_str(path, x))
    d = _mapping(path, x, ("name", "max_values"), ("name",))
    most = d.get("max_values", DEFAULT_DIMENSION_VALUES)
    if isinstance(most, bool) or not isinstance(most, int) or not 1 <= most <= \
            MAX_DIMENSION_VALUES:
        raise _fail(f"{path}.max_values", f"must be an integer in 1..{MAX_DIMENSION_VALUES}, "
                    f"got {show(most)}")
    return DimensionDef(_str(f"{path}.name", d["name"]), most)


def _optional(d: Mapping[str, Any], key: str, conv: Callable[[str, Any], _T]) -> _T | None:
    v = d.get(key)
    return None if v is None else conv(key, v)


def parse_definition(data: Mapping[str, Any],
                     limits: DefinitionLimits = DEFAULT_LIMITS) -> ExperimentDef:
    """Validate a mapping (parsed YAML/JSON) into an :class:`ExperimentDef` within ``limits``
    (the API and the CLI pass ``Settings.definition_limits()``)."""
    if not isinstance(data, Mapping):
        raise DefinitionError(f"definition: expected a mapping, got {_type_name(data)}")
    unknown = _unknown(data, _TOP_LEVEL)
    if unknown:
        raise DefinitionError(f"{unknown}: unknown field(s); allowed: "
                              f"{', '.join(sorted(_TOP_LEVEL))}")
    check_counts(data, limits)
    for key in _REQUIRED:
        if data.get(key) is None:
            raise _fail(key, "required")
    kw: dict[str, Any] = {
        "id": _ident("id", data["id"]),
        "variations": _items("variations", data["variations"], _str),
        "metrics": _items("metrics", data["metrics"], _metric),
    }
    weights = data.get("weights")
    kw["weights"] = () if weights is None else _items("weights", weights, _positive)
    lists: dict[str, Callable[[str, Any], Any]] = {
        "ratios": _ratio, "covariates": _str, "pre_period": _str,
        "in_experiment": _candidate, "guardrails": _str, "dimensions": _dimension,
    }
    for key, conv in lists.items():
        if data.get(key) is not None:
            kw[key] = _items(key, data[key], conv)
    scalars: dict[str, Callable[[str, Any], Any]] = {
        "lookback_seconds": _number, "start": _time, "end": _time,
        "status": lambda p, x: _choice(p, x, STATUSES), "primary_metric": _str,
        "model": lambda p, x: None if x is None else _choice(p, x, MODELS),
        "outcome_window_seconds": _positive,
        "alpha": _probability, "sequential_tuning": _positive, "prior_sigma": _positive,
        "selection_alpha": _probability, "selection_holm": _bool,
        "correction": lambda p, x: _choice(p, x, CORRECTIONS),
        "prior": _kind(get_args(PriorKind)),
        "in_experiment_selection": _kind(get_args(SelectionKind)),
        "min_runtime_seconds": _positive,
    }
    for key, conv in scalars.items():
        v = _optional(data, key, conv)
        if v is not None:
            kw[key] = v
    d = ExperimentDef(**kw)
    _check_bounds(d, limits)
    return d


def _check_bounds(d: ExperimentDef, limits: DefinitionLimits) -> None:
    """Counts and columns in all within ``limits`` (columns counted as the layout builds
    them, :func:`state.naming.column_names`)."""
    check_counts({name: getattr(d, name) for name in ("variations", "weights", "metrics",
                                                      "ratios", "covariates", "in_experiment",
                                                      "pre_period", "guardrails")}, limits)
    parts = {"metrics": len(d.metrics), "in_experiment candidates": len(d.in_experiment),
             "covariates": len(d.covariates)}
    if has_predictions(d):
        parts["model predictions"] = len(d.metrics)
    if d.pre_period:
        parts["pre-period covariates"] = len(d.pre_period)
    check_columns(parts, limits)


def _validate(d: ExperimentDef) -> None:
    """Cross-field checks; raises DefinitionError naming the field."""
    _ident("id", d.id)
    _check_bounds(d, CEILINGS)  # what the packed unit state can hold, whatever the settings
    if len(d.variations) < 2:
        raise _fail("variations", f"need at least 2 (the first is the control), got "
                    f"{len(d.variations)}")
    seen: set[str] = set()
    for i, v in enumerate(d.variations):
        _str(f"variations[{i}]", v)
        if v in seen:
            raise _fail(f"variations[{i}]", f"duplicate variation {show(v)}")
        seen.add(v)
    if len(d.weights) != len(d.variations):
        raise _fail("weights", f"{len(d.weights)} weights for {len(d.variations)} variations")
    for i, w in enumerate(d.weights):
        _positive(f"weights[{i}]", w)
    if not d.metrics:
        raise _fail("metrics", "at least one metric is required")

    names: dict[str, str] = {}

    def claim(path: str, name: str) -> None:
        if name in names:
            raise _fail(path, f"name {show(name)} is already used by {names[name]}")
        names[name] = path

    for i, cov in enumerate(d.covariates):
        _str(f"covariates[{i}]", cov)
        claim(f"covariates[{i}]", cov)
    metric_aggs: dict[str, str] = {}
    for i, m in enumerate(d.metrics):
        p = f"metrics[{i}]"
        _ident(f"{p}.name", m.name)
        _str(f"{p}.event", m.event)
        _choice(f"{p}.aggregate", m.aggregate, AGGREGATES)
        if m.cap is not None:
            if m.aggregate == "binary":
                raise _fail(f"{p}.cap", "only count and sum metrics can be capped")
            _positive(f"{p}.cap", m.cap)
        if m.mde is not None:
            _positive(f"{p}.mde", m.mde)
        _check_quantile_metric(p, m)
        claim(f"{p}.name", m.name)
        metric_aggs[m.name] = m.aggregate
    for i, r in enumerate(d.ratios):
        p = f"ratios[{i}]"
        _ident(f"{p}.name", r.name)
        for part in ("numerator", "denominator"):
            ref = getattr(r, part)
            if ref not in metric_aggs:
                raise _fail(f"{p}.{part}", f"{show(ref)} is not a metric; metrics: "
                            f"{', '.join(metric_aggs)}")
        if r.numerator == r.denominator:
            raise _fail(p, "numerator and denominator must differ")
        if r.mde is not None:
            _positive(f"{p}.mde", r.mde)
        claim(f"{p}.name", r.name)
    for i, c in enumerate(d.in_experiment):
        p = f"in_experiment[{i}]"
        _ident(f"{p}.name", c.name)
        _str(f"{p}.event", c.event)
        _choice(f"{p}.aggregate", c.aggregate, CANDIDATE_AGGREGATES)
        claim(f"{p}.name", c.name)
    if has_predictions(d):
        for m in d.metrics:
            col = prediction_column(m.name)
            if col in names:
                raise _fail(names[col], f"{show(col)} is the name of metric {m.name!r}'s "
                            f"model-prediction column ({d.model} model); rename it")

    for i, name in enumerate(d.pre_period):
        if name not in metric_aggs:
            raise _fail(f"pre_period[{i}]", f"{show(name)} is not a metric; metrics: "
                        f"{', '.join(metric_aggs)}")
        if name in d.pre_period[:i]:
            raise _fail(f"pre_period[{i}]", f"duplicate {show(name)}")
    for i, name in enumerate(d.pre_period):
        claim(f"pre_period[{i}]", pre_period_column(name))
    lookback = _number("lookback_seconds", d.lookback_seconds)
    if lookback < 0:
        raise _fail("lookback_seconds", f"must be >= 0, got {lookback}")
    if d.pre_period and lookback <= 0:
        raise _fail("lookback_seconds", "must be > 0 when pre_period metrics are given")

    if len(d.dimensions) > MAX_DIMENSIONS:
        raise _fail("dimensions", f"{len(d.dimensions)} dimensions; the limit is "
                    f"{MAX_DIMENSIONS}")
    for i, dim in enumerate(d.dimensions):
        if len(dim.name) > MAX_ATTRIBUTE_LENGTH:
            raise _fail(f"dimensions[{i}].name", f"longer than {MAX_ATTRIBUTE_LENGTH} "
                        f"characters (the attribute bound)")
        if dim.name in [x.name for x in d.dimensions[:i]]:
            raise _fail(f"dimensions[{i}]", f"duplicate {show(dim.name)}")

    if d.start is not None:
        _number("start", d.start)
    if d.end is not None:
        _number("end", d.end)
    if d.start is not None and d.end is not None and not d.start < d.end:
        raise _fail("end", f"must be after start ({d.end} <= {d.start})")
    _choice("status", d.status, STATUSES)
    analysable = set(metric_aggs) | {r.name for r in d.ratios}
    _check_quantile_roles(d)
    if d.primary_metric is not None and d.primary_metric not in analysable:
        raise _fail("primary_metric", f"{show(d.primary_metric)} is not a metric or ratio")
    for i, g in enumerate(d.guardrails):
        if g not in analysable:
            raise _fail(f"guardrails[{i}]", f"{show(g)} is not a metric or ratio")
        if g in d.guardrails[:i]:
            raise _fail(f"guardrails[{i}]", f"duplicate {show(g)}")
    if d.model is not None:
        _choice("model", d.model, MODELS)
    if d.outcome_window_seconds is not None:
        _positive("outcome_window_seconds", d.outcome_window_seconds)
    _probability("alpha", d.alpha)
    _positive("sequential_tuning", d.sequential_tuning)
    _positive("prior_sigma", d.prior_sigma)
    _probability("selection_alpha", d.selection_alpha)
    _bool("selection_holm", d.selection_holm)
    if d.correction is not None:
        _choice("correction", d.correction, CORRECTIONS)
    _choice("prior.kind", d.prior, get_args(PriorKind))
    _choice("in_experiment_selection.kind", d.in_experiment_selection, get_args(SelectionKind))
    if d.min_runtime_seconds is not None:
        _positive("min_runtime_seconds", d.min_runtime_seconds)


def load_definition(path: str, limits: DefinitionLimits = DEFAULT_LIMITS) -> ExperimentDef:
    """Read and validate a definition file (``.yaml``, ``.yml`` or ``.json``) within
    ``limits``: at most ``max_definition_bytes``, no YAML aliases, no duplicate keys."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise DefinitionError(f"{path}: expected a .yaml, .yml or .json file")
    try:
        with p.open("rb") as f:
            text = f.read(limits.max_definition_bytes + 1)  # one more byte says "too large"
    except OSError as exc:
        raise DefinitionError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return parse_definition_text(text, "json" if suffix == ".json" else "yaml", path, limits)


def parse_definition_text(text: bytes, fmt: Literal["yaml", "json"], source: str,
                          limits: DefinitionLimits = DEFAULT_LIMITS) -> ExperimentDef:
    """Validate definition text (YAML or JSON) read from ``source`` (named in errors)."""
    data = decode_definition_text(text, fmt, source, limits)
    if not isinstance(data, Mapping):
        raise DefinitionError(f"{source}: expected a mapping at the top level, "
                              f"got {_type_name(data)}")
    return parse_definition(data, limits)


# --------------------------------------------------------------------------- quantile metrics

QUANTILE_FIELDS = ("q", "quantiles", "accuracy")
MAX_QUANTILES = 10  # per metric


def _quantile_fields(path: str, d: Mapping[str, Any]) -> tuple[tuple[float, ...], float | None]:
    """``q: 0.9`` and/or ``quantiles: [0.5, 0.9]`` (merged, sorted) and ``accuracy``."""
    qs: list[float] = []
    if d.get("q") is not None:
        qs.append(_number(f"{path}.q", d["q"]))
    if d.get("quantiles") is not None:
        raw = d["quantiles"]
        if not isinstance(raw, list | tuple):
            raise _fail(f"{path}.quantiles", "must be a list of numbers in (0, 1)")
        qs += [_number(f"{path}.quantiles[{i}]", v) for i, v in enumerate(raw)]
    acc = d.get("accuracy")
    return tuple(sorted(set(qs))), None if acc is None else _number(f"{path}.accuracy", acc)


def _check_quantile_metric(p: str, m: MetricDef) -> None:
    """A quantile metric names 1..MAX_QUANTILES quantiles in (0, 1) and an accuracy in
    [MIN_ACCURACY, MAX_ACCURACY]; other aggregates take neither."""
    from estimators.quantiles import MAX_ACCURACY, MIN_ACCURACY

    if m.aggregate != "quantile":
        if m.quantiles:
            raise _fail(f"{p}.quantiles", "only quantile metrics (aggregate: quantile) take q")
        if m.accuracy is not None:
            raise _fail(f"{p}.accuracy", "only quantile metrics (aggregate: quantile) take it")
        return
    if not m.quantiles:
        raise _fail(f"{p}.q", "a quantile metric needs q (e.g. 0.9) or quantiles: [0.5, 0.9]")
    if len(m.quantiles) > MAX_QUANTILES:
        raise _fail(f"{p}.quantiles", f"at most {MAX_QUANTILES} quantiles per metric, got "
                                      f"{len(m.quantiles)}")
    for i, q in enumerate(m.quantiles):
        if not (isinstance(q, float | int) and math.isfinite(q) and 0.0 < q < 1.0):
            raise _fail(f"{p}.quantiles[{i}]", f"must be in (0, 1) (exclusive), got {q!r}")
    if m.accuracy is not None and not (
            isinstance(m.accuracy, float | int) and MIN_ACCURACY <= m.accuracy <= MAX_ACCURACY):
        raise _fail(f"{p}.accuracy", f"must be in [{MIN_ACCURACY}, {MAX_ACCURACY}] (relative "
                                     f"accuracy of the histogram), got {m.accuracy!r}")
    if m.cap is not None:
        raise _fail(f"{p}.cap", "quantile metrics are not capped (quantiles are robust)")
    if m.mde is not None:
        raise _fail(f"{p}.mde", "a target MDE is supported for mean metrics only")


def _check_quantile_roles(d: ExperimentDef) -> None:
    """The verdict reads mean metrics' documents: a quantile metric cannot be the primary
    metric or a guardrail (it would be skipped)."""
    quantile = {m.name for m in d.metrics if m.aggregate == "quantile"}
    if d.primary_metric in quantile:
        raise _fail("primary_metric", f"{d.primary_metric!r} is a quantile metric; the "
                                      f"verdict uses mean metrics and ratios")
    for i, g in enumerate(d.guardrails):
        if g in quantile:
            raise _fail(f"guardrails[{i}]", f"{g!r} is a quantile metric; guardrails are "
                                            f"mean metrics and ratios")
