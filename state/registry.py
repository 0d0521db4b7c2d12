"""Experiment definitions stored in Redis (the pure definition is :mod:`state.definition`).

Redis keys (:mod:`state.keys`; plain keys, never touched by Lua scripts, single-key commands
only so the registry works on Redis Cluster as well):

* ``ls:registry`` — hash: experiment id → definition JSON
* ``ls:registry:version`` — integer incremented after every change; workers poll it cheaply

The definition names are re-exported here so ``from state.registry import parse_definition``
keeps working.
"""

from __future__ import annotations

import builtins
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from state.definition import (
    AGGREGATES,
    CANDIDATE_AGGREGATES,
    CORRECTIONS,
    ID_PATTERN,
    MODELS,
    STATUSES,
    Aggregate,
    CandidateDef,
    DefinitionError,
    DefinitionLimits,
    DimensionDef,
    ExperimentDef,
    MetricDef,
    RatioDef,
    load_definition,
    parse_definition,
    parse_definition_text,
)
from state.keys import REGISTRY as REGISTRY_KEY
from state.keys import REGISTRY_VERSION as VERSION_KEY

if TYPE_CHECKING:
    import redis
    import redis.cluster

__all__ = [
    "AGGREGATES",
    "CANDIDATE_AGGREGATES",
    "CORRECTIONS",
    "ID_PATTERN",
    "MODELS",
    "REGISTRY_KEY",
    "STATUSES",
    "VERSION_KEY",
    "Aggregate",
    "CandidateDef",
    "DefinitionError",
    "DefinitionLimits",
    "DimensionDef",
    "ExperimentDef",
    "ExperimentExists",
    "MetricDef",
    "RatioDef",
    "Registry",
    "load_definition",
    "parse_definition",
    "parse_definition_text",
]

log = logging.getLogger(__name__)


class ExperimentExists(ValueError):
    """``Registry.create`` was asked to overwrite an existing id without ``replace``."""


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


LAYOUT_FIELDS = ("variations", "metrics", "in_experiment", "covariates", "model")


def _layout_of(d: ExperimentDef, name: str) -> Any:
    """A layout field; for metrics only what lays out storage (``mde`` and
    ``higher_is_better`` steer the analysis and may change)."""
    if name == "metrics":
        return tuple((m.name, m.event, m.aggregate, m.cap, m.accuracy) for m in d.metrics)
    return getattr(d, name)


def _check_same_layout(old: ExperimentDef, new: ExperimentDef) -> None:
    """Stored unit states and moment matrices are laid out by these fields: a replacement
    may change analysis settings, window and status, never them."""
    for name in LAYOUT_FIELDS:
        if _layout_of(old, name) != _layout_of(new, name):
            raise DefinitionError(
                f"{name}: cannot change on existing experiment {old.id!r} (its stored "
                f"statistics are laid out by it); create a new experiment id instead")


class Registry:
    """Experiment definitions in Redis (``ls:registry`` hash + ``ls:registry:version``)."""

    def __init__(self, client: redis.Redis | redis.cluster.RedisCluster) -> None:
        self._r: Any = client

    def _bump(self) -> None:
        self._r.incr(VERSION_KEY)

    def create(self, d: ExperimentDef, replace: bool = False) -> None:
        """Store ``d``; raises :class:`ExperimentExists` if the id exists and not ``replace``."""
        raw = d.to_json()
        if replace:
            old = self.get(d.id)
            if old is not None:
                _check_same_layout(old, d)
            self._r.hset(REGISTRY_KEY, d.id, raw)
        elif not self._r.hsetnx(REGISTRY_KEY, d.id, raw):
            raise ExperimentExists(f"experiment {d.id!r} already exists (use replace)")
        self._bump()

    def get(self, experiment_id: str) -> ExperimentDef | None:
        """The stored definition, or None."""
        raw = self._r.hget(REGISTRY_KEY, experiment_id)
        return None if raw is None else ExperimentDef.from_json(raw)

    def list(self) -> builtins.list[ExperimentDef]:
        """All stored definitions sorted by id (unreadable entries are logged and skipped)."""
        out: builtins.list[ExperimentDef] = []
        for key, raw in self._r.hgetall(REGISTRY_KEY).items():
            try:
                out.append(ExperimentDef.from_json(raw))
            except DefinitionError as exc:
                log.warning("registry entry %r is invalid, skipped: %s", _text(key), exc)
        return sorted(out, key=lambda d: d.id)

    def stop(self, experiment_id: str) -> ExperimentDef:
        """Set status ``stopped``; KeyError if the id is unknown. Returns the new definition."""
        d = self.get(experiment_id)
        if d is None:
            raise KeyError(experiment_id)
        stopped = replace(d, status="stopped")
        self._r.hset(REGISTRY_KEY, d.id, stopped.to_json())
        self._bump()
        return stopped

    def version(self) -> int:
        """A counter incremented after every change (0 before the first)."""
        raw = self._r.get(VERSION_KEY)
        return 0 if raw is None else int(raw)

