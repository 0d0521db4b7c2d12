"""The Redis key layout — the only module that knows it.

Every key of partition ``p`` carries the hash tag ``{p}`` so one batch script touches one
Redis Cluster slot; a query merges all partitions.

| key | type | holds |
|---|---|---|
| ``ls:{p}:epoch`` | string | owner epoch; a new owner increments it, fencing zombies |
| ``ls:{p}:off`` | hash | ``topic → next offset`` applied for that topic-partition |
| ``ls:{p}:m:<exp>`` | hash | ``variation → packed moment matrix`` (shift + upper triangle) |
| ``ls:{p}:u:<exp>:<b>`` | hash | ``unit → packed unit state``, bucket ``b = crc32(unit) % B`` |
| ``ls:{p}:pend`` | hash | ``unit → events`` that arrived before the unit's exposure |
| ``ls:{p}:pendq`` | zset | ``unit → wall-clock time it was first held`` (grace-period expiry) |
| ``ls:{p}:c`` | hash | counters (exposures, withdrawn units, refused batches, …) |
| ``ls:{p}:warn`` | hash | ``code → detail`` of conditions that make results incomplete |
| ``ls:{p}:oor`` | hash | ``topic → stored offset`` found outside the log (until a reset) |
| ``ls:{p}:h:<exp>:<variation>`` | hash | ``<metric>:<bucket> → count`` quantile histograms |
| ``ls:meta`` | hash | ``partitions`` — the topic partition count the workers run with |
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

PREFIX = "ls"
META = f"{PREFIX}:meta"


def tag(partition: int) -> str:
    return f"{PREFIX}:{{{partition}}}"


def epoch(partition: int) -> str:
    return f"{tag(partition)}:epoch"


def offsets(partition: int) -> str:
    return f"{tag(partition)}:off"


def matrices(partition: int, experiment: str) -> str:
    return f"{tag(partition)}:m:{experiment}"


def bucket_of(unit: str, buckets: int) -> int:
    return zlib.crc32(unit.encode()) % buckets


def units(partition: int, experiment: str, bucket: int) -> str:
    return f"{tag(partition)}:u:{experiment}:{bucket}"


def unit_pattern(partition: int, experiment: str) -> str:
    """SCAN pattern for one experiment's unit buckets in a partition (bench/chaos checks).

    >>> unit_pattern(3, "shop")
    'ls:{3}:u:shop:*'
    """
    return f"{tag(partition)}:u:{experiment}:*"


def pending(partition: int) -> str:
    return f"{tag(partition)}:pend"


def pending_queue(partition: int) -> str:
    return f"{tag(partition)}:pendq"


def counters(partition: int) -> str:
    return f"{tag(partition)}:c"


def partition_warnings(partition: int) -> str:
    """Hash ``code → detail`` of partition-wide conditions (see :mod:`state.warnings`)."""
    return f"{tag(partition)}:warn"


def out_of_range(partition: int) -> str:
    """Hash ``topic → stored offset`` of the topics found outside their log (until reset)."""
    return f"{tag(partition)}:oor"


def model(model_id: str) -> str:
    """Hash ``v<version> → signed snapshot`` plus ``latest`` of one online model."""
    return f"{PREFIX}:model:{model_id}"


MODEL_INDEX = f"{PREFIX}:models"  # set of model ids
MODEL_REFUSALS = f"{PREFIX}:models:refused"  # hash model id → snapshots refused (bad HMAC)
MODEL_LATEST = "latest"  # field of :func:`model`: the newest version number
MODEL_NEXT_VERSION = "next_version"  # field of :func:`model`: the last version number handed out


def model_version(version: int) -> str:
    """The field of :func:`model` holding snapshot ``version``.

    >>> model_version(3)
    'v3'
    """
    return f"v{version}"


def maturity(partition: int) -> str:
    """Zset ``<experiment>\\x00<unit> → time its outcome window closes`` (training examples)."""
    return f"{tag(partition)}:mature"


def maturity_member(experiment: str, unit: str) -> str:
    """The member of :func:`maturity` for one unit of one experiment.

    >>> parse_maturity_member(maturity_member("exp-1", "u:7"))
    ('exp-1', 'u:7')
    """
    return f"{experiment}\x00{unit}"


def parse_maturity_member(member: str) -> tuple[str, str]:
    """``(experiment, unit)`` of a :func:`maturity_member`."""
    experiment, _, unit = member.partition("\x00")
    return experiment, unit


def experiment_counter(experiment: str, name: str) -> str:
    """The field of :func:`counters` counting ``name`` for one experiment.

    >>> experiment_counter("exp-1", "late_events")
    'exp-1:late_events'
    """
    return f"{experiment}:{name}"


#: The counter (partition-wide, and per experiment as ``<experiment>:last_event_ts``) holding
#: the newest event time applied: a maximum, not a sum.
LAST_EVENT_TS = "last_event_ts"


def experiment_counters(counters: Mapping[str, float], experiment: str) -> dict[str, float]:
    """``name → value`` of one experiment's :func:`experiment_counter` fields.

    >>> experiment_counters({"shop:late_events": 2.0, "messages": 9.0, "a:b": 1.0}, "shop")
    {'late_events': 2.0}
    """
    prefix = experiment_counter(experiment, "")
    return {k[len(prefix):]: v for k, v in counters.items() if k.startswith(prefix)}


def split_experiment_counter(field: str) -> tuple[str, str] | None:
    """``(experiment, name)`` of an :func:`experiment_counter` field; ``None`` for a
    partition-wide counter (experiment ids have no ``:``).

    >>> split_experiment_counter("exp-1:late_events"), split_experiment_counter("messages")
    (('exp-1', 'late_events'), None)
    """
    experiment, sep, name = field.rpartition(":")
    return (experiment, name) if sep else None


#: Why a batch was refused, each counted in :func:`refused_counter`.
REFUSAL_REASONS = ("epoch", "offset", "shift", "side_outputs")


def refused_counter(reason: str) -> str:
    """The counter of batches refused for ``reason`` (``epoch``, ``offset``, ``shift`` are
    written by ``apply_batch.lua``, ``side_outputs`` by the worker).

    >>> refused_counter("epoch")
    'refused_epoch'
    """
    return f"refused_{reason}"


def snapshot_offset(topic: str, partition: int) -> str:
    """Key of a topic-partition's offset in a model snapshot's header (Kafka topic names
    cannot contain ``:``).

    >>> parse_snapshot_offset(snapshot_offset("my.topic-1", 3))
    ('my.topic-1', 3)
    """
    return f"{topic}:{partition}"


def parse_snapshot_offset(key: str) -> tuple[str, int] | None:
    """``(topic, partition)`` of a :func:`snapshot_offset` key; ``None`` for anything else."""
    topic, sep, part = key.rpartition(":")
    if not sep or not part.isdigit():
        return None
    return topic, int(part)


# --- registry (plain keys, single-key commands: Redis Cluster safe; :mod:`state.registry`)
#
# | key | type | holds |
# |---|---|---|
# | ``ls:registry`` | hash | ``experiment id → definition JSON`` |
# | ``ls:registry:version`` | string | integer incremented after every change |

REGISTRY = f"{PREFIX}:registry"
REGISTRY_VERSION = f"{PREFIX}:registry:version"


# --- alerter and history (plain keys, single-key commands: Redis Cluster safe) -----------
#
# | key | type | holds |
# |---|---|---|
# | ``ls:alert:<exp>`` | hash | ``condition → JSON state`` (what already fired), per experiment |
# | ``ls:hist:{<exp>}:meta`` | hash | ``slot`` last claimed interval, ``ts`` last recorded
# |   snapshot time, ``first`` first snapshot time (:mod:`state.history`) |
# | ``ls:hist:{<exp>}:l<i>`` | zset | snapshots of history level ``i`` (score = time) |
# | ``ls:alerter:lease`` | string | id of the alerter allowed to evaluate (expires) |


def alert_state(experiment: str) -> str:
    """Hash of one experiment's alert conditions and what already fired."""
    return f"{PREFIX}:alert:{experiment}"


def history_meta(experiment: str) -> str:
    """Hash of one experiment's history bookkeeping (same hash slot as its levels)."""
    return f"{PREFIX}:hist:{{{experiment}}}:meta"


def history_level(experiment: str, level: int) -> str:
    """Sorted set of the snapshots of one history level (see :mod:`state.history`)."""
    return f"{PREFIX}:hist:{{{experiment}}}:l{level}"


def alert_condition(kind: str, metric: str, treatment: str) -> str:
    """The field of :func:`alert_state` for a per-comparison condition (``significance`` of
    the primary metric, ``guardrail`` harm); whole-experiment conditions are plain names
    (``srm``, ``stale``, ``decision``).

    >>> alert_condition("significance", "revenue", "t1")
    'significance:revenue:t1'
    """
    return f"{kind}:{metric}:{treatment}"


def alerter_lease() -> str:
    """The lease an alerter holds while it evaluates (only one alerter fires alerts)."""
    return f"{PREFIX}:alerter:lease"


# --- finished experiments (plain key, single-key commands) ------------------------------
#
# | key | type | holds |
# |---|---|---|
# | ``ls:finished`` | hash | ``experiment → JSON record`` of a stopped experiment's estimates |


def finished() -> str:
    """Hash of stopped experiments' summaries (empirical-Bayes prior, Fisher pre-selection)."""
    return f"{PREFIX}:finished"


def histograms(partition: int, experiment: str, variation: str) -> str:
    """Quantile metrics' log-bucket histograms of one (partition, experiment, variation):
    field ``<metric>:<bucket>`` (bucket ``z``, ``p<i>``, ``n<i>``) → integer count."""
    return f"{tag(partition)}:h:{experiment}:{variation}"


# --- dimension slices (DESIGN §2 "Slices and pre-periods"; state/slices.py) -------------
#
# | key | type | holds |
# |---|---|---|
# | ``ls:{p}:sm:<exp>:<dim>`` | hash | ``msgpack [variation, value] → packed moment matrix`` |
# | ``ls:{p}:us:<exp>:<b>`` | hash | ``unit → msgpack list`` of its kept dimension values |
# | ``ls:dv:{<exp>}:<dim>`` | hash | ``value → order kept`` (first come, first kept; global, |
# |   assigned by ``assign_values.lua`` before a batch is built, so every partition agrees) |


def slice_matrices(partition: int, experiment: str, dimension: str) -> str:
    """Hash of one dimension's moment matrices per (variation, value) in a partition."""
    return f"{tag(partition)}:sm:{experiment}:{dimension}"


def unit_slices(partition: int, experiment: str, bucket: int) -> str:
    """Hash ``unit → its dimension values`` (as kept at its first exposure), bucketed."""
    return f"{tag(partition)}:us:{experiment}:{bucket}"


def dimension_values(experiment: str, dimension: str) -> str:
    """Hash of one dimension's kept values, shared by every partition."""
    return f"{PREFIX}:dv:{{{experiment}}}:{dimension}"


def histogram_field(metric: str, bucket: int | str) -> str:
    """The field of :func:`histograms` counting one metric's log-bucket.

    >>> parse_histogram_field(histogram_field("spend:eur", -12))
    ('spend:eur', '-12')
    """
    return f"{metric}:{bucket}"


def parse_histogram_field(field: str) -> tuple[str, str]:
    """``(metric, bucket)`` of a :func:`histogram_field` (the bucket after the last ``:``)."""
    metric, _, bucket = field.rpartition(":")
    return metric, bucket
