"""Names derived from a definition: unit-state columns and online-model ids (the one place).

Columns of an experiment, in the order :class:`state.layout.ExperimentLayout` lays them out:
metrics, in-experiment candidates, pre-experiment covariates, then — with a ``model`` and at
least one covariate — one model-prediction column ``<metric>:pred`` per metric.

A model id is ``<experiment>/<metric>``. Experiment ids and metric names match
:data:`ID_PATTERN`, which has no ``/``, so the id splits one way only: ``shop.v2`` + ``rev``
(``shop.v2/rev``) and ``shop`` + ``v2.rev`` (``shop/v2.rev``) are different models. Before this
format ids were ``<experiment>.<metric>`` (ambiguous); :func:`legacy_model_id` builds such an
id so stored snapshots of that format still load (:mod:`state.models`, ``workers.learner``).

>>> model_id("shop.v2", "rev"), model_id("shop", "v2.rev")
('shop.v2/rev', 'shop/v2.rev')
>>> parse_model_id("shop/v2.rev")
('shop', 'v2.rev')
>>> parse_model_id("shop.v2.rev") is None
True
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Protocol

__all__ = ["ID_PATTERN", "ID_REGEX", "MODEL_ID_SEPARATOR", "column_names", "legacy_model_id",
           "legacy_targets", "model_id", "parse_model_id", "prediction_column",
           "resolve_model_id"]

#: Experiment ids (and metric names in model ids): the one pattern, written once.
ID_REGEX: Final = r"[A-Za-z0-9_.-]{1,64}"
ID_PATTERN: Final = re.compile(ID_REGEX)
MODEL_ID_SEPARATOR: Final = "/"  # not in ID_PATTERN: ids and metric names cannot contain it
PREDICTION_SUFFIX: Final = ":pred"


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class _Definition(Protocol):
    """What :func:`column_names` and the resolvers read of an ``ExperimentDef``."""

    @property
    def id(self) -> str: ...
    @property
    def metrics(self) -> Sequence[_Named]: ...
    @property
    def in_experiment(self) -> Sequence[_Named]: ...
    @property
    def covariates(self) -> Sequence[str]: ...
    @property
    def model(self) -> str | None: ...


def prediction_column(metric: str) -> str:
    """Column name of a metric's frozen model prediction ŷ."""
    return f"{metric}{PREDICTION_SUFFIX}"


def has_predictions(d: _Definition) -> bool:
    """Whether the layout carries prediction columns (a model and at least one covariate)."""
    return d.model is not None and bool(d.covariates)


def column_names(d: _Definition) -> tuple[str, ...]:
    """Every unit-state column of ``d``, in layout order (see the module docstring)."""
    names = [m.name for m in d.metrics]
    names += [c.name for c in d.in_experiment]
    names += list(d.covariates)
    if has_predictions(d):
        names += [prediction_column(m.name) for m in d.metrics]
    names += [pre_period_column(m) for m in getattr(d, "pre_period", ())]
    return tuple(names)


PRE_PERIOD_PREFIX: Final = "pre_"


def pre_period_column(metric: str) -> str:
    """Column (and covariate) name of a metric's own pre-exposure value: ``pre_<metric>``."""
    return f"{PRE_PERIOD_PREFIX}{metric}"


def model_id(experiment: str, metric: str) -> str:
    """The online model of ``metric`` in ``experiment``: ``<experiment>/<metric>``."""
    return f"{experiment}{MODEL_ID_SEPARATOR}{metric}"


def parse_model_id(mid: str) -> tuple[str, str] | None:
    """``(experiment, metric)`` of an id built by :func:`model_id`; None for other ids."""
    experiment, sep, metric = mid.partition(MODEL_ID_SEPARATOR)
    if not sep or ID_PATTERN.fullmatch(experiment) is None \
            or ID_PATTERN.fullmatch(metric) is None:
        return None
    return experiment, metric


def legacy_model_id(experiment: str, metric: str) -> str:
    """The id format before ``/``: ``<experiment>.<metric>`` (ambiguous across experiments)."""
    return f"{experiment}.{metric}"


def legacy_targets(mid: str, definitions: Mapping[str, _Definition]) -> list[tuple[str, str]]:
    """Every registered ``(experiment, metric)`` whose legacy id is ``mid`` (several when ids
    collided: they shared that model)."""
    out = []
    for i, ch in enumerate(mid):
        if ch != ".":
            continue
        d = definitions.get(mid[:i])
        if d is not None and mid[i + 1:] in _metric_names(d.metrics):
            out.append((d.id, mid[i + 1:]))
    return out


def resolve_model_id(mid: str, definitions: Mapping[str, _Definition]
                     ) -> tuple[str, str] | None:
    """The registered ``(experiment, metric)`` a model id names (new format, else the first
    legacy reading); None if it names none."""
    parsed = parse_model_id(mid)
    if parsed is not None:
        d = definitions.get(parsed[0])
        return parsed if d is not None and parsed[1] in _metric_names(d.metrics) else None
    targets = legacy_targets(mid, definitions)
    return targets[0] if targets else None


def _metric_names(metrics: Iterable[_Named]) -> set[str]:
    return {m.name for m in metrics}
