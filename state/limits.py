"""Bounds on experiment definitions, and the strict YAML/JSON reading of definition text.

A definition is refused — with a :class:`DefinitionError` naming the field and the limit —
when it exceeds a :class:`DefinitionLimits` bound, e.g. ``metrics: 10000 metrics; the limit
is 100 (LIFTSTREAM_MAX_METRICS)``. The defaults live here (:data:`DEFAULT_LIMITS`);
``workers.settings`` reads each bound from the ``LIFTSTREAM_*`` variable of the same name and
passes them in (``Settings.definition_limits()``). :data:`CEILINGS` bound what any process
will handle (one byte packs the variation index, ``state/units.py``; 1,024 columns keep a
moment matrix at 8 MB, though unit states could pack 65,535): no setting goes above them, and
every definition — also one read back from Redis — is held to them.

Definition text is read with a byte cap, YAML *aliases* refused (so a few hundred bytes cannot
expand into a billion nodes), and duplicate mapping keys refused in YAML and JSON (the last
one would silently win). Every :class:`DefinitionError` message is cut to
:data:`MAX_MESSAGE` characters and quotes values elided (:func:`show`).
"""

from __future__ import annotations

import dataclasses
import json
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import yaml

__all__ = ["CEILINGS", "DEFAULT_DIMENSION_VALUES", "DEFAULT_LIMITS", "MAX_ATTRIBUTES",
           "MAX_ATTRIBUTE_LENGTH", "MAX_DIMENSIONS", "MAX_DIMENSION_VALUES", "MAX_MESSAGE",
           "DefinitionError", "DefinitionLimits",
           "bounded", "check_columns", "check_counts", "check_text_size",
           "decode_definition_text", "refuse_duplicate_json_keys", "show"]

MAX_MESSAGE: Final = 500
# dimension slices (DESIGN §2 "Slices and pre-periods"): fixed bounds, not settings
MAX_DIMENSIONS: Final = 8  # dimensions per definition
DEFAULT_DIMENSION_VALUES: Final = 50  # kept values of a dimension given by plain name
MAX_DIMENSION_VALUES: Final = 1000  # the largest max_values a dimension may declare
MAX_ATTRIBUTES: Final = 32  # string attributes per exposure message
MAX_ATTRIBUTE_LENGTH: Final = 128  # characters of an attribute name or value
_ENV_PREFIX: Final = "LIFTSTREAM_"  # workers.settings reads the bound of the same name


def bounded(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` cut to ``limit`` characters (``…`` marks the cut)."""
    return message if len(message) <= limit else message[:limit - 1] + "…"


class DefinitionError(ValueError):
    """An invalid experiment definition; the message starts with the field path and is at
    most :data:`MAX_MESSAGE` characters."""

    def __init__(self, message: str) -> None:
        super().__init__(bounded(str(message)))


_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4
_REPR.maxlevel = 2


def show(x: Any) -> str:
    """A short ``repr`` of a user value for error messages (long values elided)."""
    return _REPR.repr(x)


@dataclass(frozen=True)
class DefinitionLimits:
    """Bounds on one definition (see docs/operations.md, "Definition limits")."""

    max_variations: int = 64
    max_metrics: int = 100
    max_ratios: int = 100
    max_covariates: int = 64
    max_candidates: int = 64
    max_columns: int = 255  # metrics + candidates + covariates + prediction columns
    max_definition_bytes: int = 1_048_576

    def variable(self, name: str) -> str:
        """The setting of bound ``name`` (``max_metrics`` → ``LIFTSTREAM_MAX_METRICS``)."""
        return _ENV_PREFIX + name.upper()

    def refuse(self, path: str, count: int, what: str, name: str) -> DefinitionError:
        return DefinitionError(f"{path}: {count} {what}; the limit is {getattr(self, name)} "
                               f"({self.variable(name)})")


DEFAULT_LIMITS: Final = DefinitionLimits()
# what any process handles: a u8 variation index (state/units.py), 1,024 columns (an 8 MB matrix)
CEILINGS: Final = DefinitionLimits(max_variations=255, max_metrics=255, max_ratios=1024,
                                   max_covariates=255, max_candidates=255, max_columns=1024,
                                   max_definition_bytes=64 * 1_048_576)
LIMIT_FIELDS: Final = tuple(f.name for f in dataclasses.fields(DefinitionLimits))

# definition field → (bound, what is counted); checked on the raw mapping before items are
# validated, so a 10,000-item list is refused without validating 10,000 items
_COUNTED: Final = {
    "variations": ("max_variations", "variations"),
    "weights": ("max_variations", "weights"),
    "metrics": ("max_metrics", "metrics"),
    "ratios": ("max_ratios", "ratios"),
    "covariates": ("max_covariates", "covariates"),
    "in_experiment": ("max_candidates", "in-experiment candidates"),
    "pre_period": ("max_metrics", "pre-period metrics"),
}


def check_counts(data: Mapping[str, Any], limits: DefinitionLimits) -> None:
    """Refuse a list longer than its bound (field, count, limit and setting in the message)."""
    for field, (bound, what) in _COUNTED.items():
        n = _length(data.get(field))
        if n > getattr(limits, bound):
            raise limits.refuse(field, n, what, bound)
    n, most = _length(data.get("guardrails")), limits.max_metrics + limits.max_ratios
    if n > most:
        raise DefinitionError(f"guardrails: {n} guardrails; at most one per metric or ratio "
                              f"({most}: {limits.variable('max_metrics')} + "
                              f"{limits.variable('max_ratios')})")


def _length(value: Any) -> int:
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return len(value)
    return 0


def check_columns(counts: Mapping[str, int], limits: DefinitionLimits) -> None:
    """Refuse a layout wider than ``max_columns``; ``counts``: part name → columns."""
    total = sum(counts.values())
    if total > limits.max_columns:
        parts = " + ".join(f"{n} {name}" for name, n in counts.items())
        raise DefinitionError(f"columns: {total} unit-state columns in all ({parts}); the "
                              f"limit is {limits.max_columns} "
                              f"({limits.variable('max_columns')})")


# --------------------------------------------------------------------------- reading text

Format = Literal["yaml", "json"]
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_Loader):  # type: ignore[misc]
    """The safe loader, refusing duplicate mapping keys (aliases are refused before)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base constructor reports it
                continue
            if duplicate:
                raise DefinitionError(f"duplicate key {show(key)} (line "
                                      f"{key_node.start_mark.line + 1}): each key once")
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _refuse_aliases(text: bytes) -> None:
    loader = _Loader(text)
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.AliasEvent):
                line = event.start_mark.line + 1 if event.start_mark else "?"
                raise DefinitionError(f"YAML alias *{show(event.anchor)[1:-1]} (line {line}): "
                                      f"aliases are not allowed in definitions (write the "
                                      f"value out)")
    finally:
        loader.dispose()


def _yaml(text: bytes) -> Any:
    _refuse_aliases(text)
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DefinitionError(f"duplicate key {show(key)}: each key once")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check_text_size(raw: bytes, source: str, limits: DefinitionLimits) -> None:
    """Refuse definition text longer than ``max_definition_bytes``."""
    if len(raw) > limits.max_definition_bytes:
        raise DefinitionError(f"{source}: more than {limits.max_definition_bytes} bytes; the "
                              f"limit is {limits.max_definition_bytes} bytes "
                              f"({limits.variable('max_definition_bytes')})")


def refuse_duplicate_json_keys(raw: bytes, source: str) -> None:
    """Refuse JSON that gives one key twice in an object (for bodies another parser already
    decoded, keeping the last); text that is not JSON at all is left to that parser."""
    try:
        json.loads(raw, object_pairs_hook=_json_object)
    except DefinitionError as exc:
        raise DefinitionError(f"{source}: {exc}") from None
    except (ValueError, RecursionError):
        return


def decode_definition_text(raw: bytes, fmt: Format, source: str,
                           limits: DefinitionLimits = DEFAULT_LIMITS) -> Any:
    """Parse definition text strictly (size cap, no YAML aliases, no duplicate keys); the
    error names ``source`` (a path, ``-`` for stdin, ``request body``)."""
    check_text_size(raw, source, limits)
    try:
        if fmt == "json":
            return json.loads(raw, object_pairs_hook=_json_object, parse_constant=_no_constant)
        return _yaml(raw)
    except DefinitionError as exc:
        raise DefinitionError(f"{source}: {exc}") from None
    except RecursionError:
        raise DefinitionError(f"{source}: nested too deeply") from None
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())
        raise DefinitionError(f"{source}: not valid YAML ({first})") from None
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
        raise DefinitionError(f"{source}: not valid JSON ({exc})") from None
