"""Redis access for partition owners (ingest) and readers (results), via :mod:`state.keys`."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from importlib import resources
from types import MappingProxyType
from typing import Any

import msgspec
import redis
import redis.cluster

from estimators.moments import FloatArray, MomentMatrix, pack, pack_shift, packed_values
from state import keys
from state.units import UnitState

Client = redis.Redis | redis.cluster.RedisCluster
StoreError = redis.RedisError  # any failure talking to Redis (the owner retries the batch)
#: Counter of the newest event time applied: pipeline-wide, and per experiment as
#: ``<experiment>:last_event_ts`` (both maxima, not sums).
LAST_EVENT_TS = keys.LAST_EVENT_TS


def connect(url: str, cluster: bool = False) -> Client:
    """A client for a single Redis or a Redis Cluster (bytes responses)."""
    if cluster:
        return redis.cluster.RedisCluster.from_url(url)
    return redis.Redis.from_url(url)


@dataclass
class BatchWrite:
    """Everything one partition batch changes; applied by ``apply_batch.lua`` or not at all.

    The builder fills it; :meth:`seal` freezes it (read-only mappings, tuples), after which
    nothing changes it (``stream.commit``: a batch write is immutable once built)."""

    partition: int
    epoch: int
    # topic, offset the owner believes is stored (None: none yet), next offset to store
    offsets: list[tuple[str, int | None, int]] = field(default_factory=list)
    matrices: dict[tuple[str, str], tuple[FloatArray, FloatArray]] = field(default_factory=dict)
    # the stored shift a matrix is re-centred from (its delta is around the new shift)
    matrix_bases: dict[tuple[str, str], FloatArray] = field(default_factory=dict)
    units: dict[tuple[str, int, str], bytes] = field(default_factory=dict)  # exp,bucket,unit
    pending_set: dict[str, bytes] = field(default_factory=dict)
    pending_del: set[str] = field(default_factory=set)
    pending_queue_add: dict[str, float] = field(default_factory=dict)
    zadd: list[tuple[str, float, str]] = field(default_factory=list)  # key, score, member
    zrem: list[tuple[str, str]] = field(default_factory=list)  # key, member
    unit_states: dict[tuple[str, str], UnitState] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    last_event_ts: float | None = None
    # experiment → newest event time routed to it in this batch (its own freshness)
    experiment_last_ts: dict[str, float] = field(default_factory=dict)
    # quantile histograms: (experiment, variation) → "<metric>:<bucket>" → count change
    histograms: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    # dimension slices (stream/slices.py): (experiment, dimension, field) → (shift, delta),
    # applied in the matrices section like the whole experiment's; units' kept values
    slice_matrices: dict[tuple[str, str, bytes], tuple[FloatArray, FloatArray]] = field(
        default_factory=dict)
    slice_matrix_bases: dict[tuple[str, str, bytes], FloatArray] = field(default_factory=dict)
    unit_slices: dict[tuple[str, int, str], bytes] = field(default_factory=dict)
    sealed: bool = False

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "sealed", False):
            raise AttributeError(f"batch write of partition {self.partition} is sealed")
        object.__setattr__(self, name, value)

    def seal(self, counters: Mapping[str, int] | None = None) -> None:
        """Add ``counters`` and freeze every field (idempotent)."""
        if self.sealed:
            return
        for name, n in (counters or {}).items():
            self.counters[name] += n
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                object.__setattr__(self, f.name, MappingProxyType(dict(value)))
            elif isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
            elif isinstance(value, set):
                object.__setattr__(self, f.name, frozenset(value))
        object.__setattr__(self, "sealed", True)


@dataclass(frozen=True)
class BatchReads:
    """Everything a batch reads before its apply (one ``read_batch.lua`` call)."""

    states: dict[tuple[str, str], UnitState]  # (experiment, unit) → stored state
    held: dict[str, bytes]  # unit → its held events (msgpack)
    pending_count: int  # units held in the partition
    expired: list[str]  # units first held before the expiry cutoff, oldest first
    oldest: list[str]  # the units held longest, as many as eviction at the bound may need
    matured: list[str]  # maturity members ``<experiment>\x00<unit>`` due by the cutoff
    matrices: dict[str, dict[str, bytes]]  # experiment → variation → stored matrix blob
    buckets: Mapping[str, int] = field(default_factory=dict)  # unit → bucket, of the units read


@dataclass(frozen=True)
class ApplyOutcome:
    applied: bool
    reason: str = ""
    detail: str = ""


class PartitionStore:
    """The ingest side: claim a partition, read unit states, apply batches atomically."""

    def __init__(self, client: Client) -> None:
        self.client = client
        lua = resources.files("state")
        self._script = client.register_script(lua.joinpath("apply_batch.lua").read_text())
        self._read = client.register_script(lua.joinpath("read_units.lua").read_text())
        self._read_batch = client.register_script(lua.joinpath("read_batch.lua").read_text())
        self._reset = client.register_script(lua.joinpath("reset_offsets.lua").read_text())

    def set_partition_count(self, partitions: int) -> None:
        self.client.hset(keys.META, "partitions", partitions)

    def claim(self, partition: int) -> int:
        """Become the owner of ``partition``: a new epoch fences every earlier owner."""
        return int(self.client.incr(keys.epoch(partition)))

    def stored_offsets(self, partition: int) -> dict[str, int]:
        raw: Any = self.client.hgetall(keys.offsets(partition))
        return {_text(k): int(v) for k, v in raw.items()}

    def partition_flags(self, partition: int) -> dict[str, str]:
        """Partition-wide conditions ``code → detail`` (see :mod:`state.warnings`)."""
        raw: Any = self.client.hgetall(keys.partition_warnings(partition))
        return {_text(k): _text(v) for k, v in raw.items()}

    def flag_out_of_range(self, partition: int, detail: str, topics: Mapping[str, int]
                          ) -> bool:
        """Set ``offsets_out_of_range`` and remember which topics' stored offsets lay outside
        the log (both kept until an offsets reset); True when the condition is new, which the
        counter ``offsets_out_of_range`` counts."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hsetnx(keys.partition_warnings(partition), "offsets_out_of_range", detail)
        if topics:
            pipe.hset(keys.out_of_range(partition), mapping={t: n for t, n in topics.items()})
        new = bool(pipe.execute()[0])
        if new:
            self.client.hincrby(keys.counters(partition), "offsets_out_of_range", 1)
        return new

    def flagged_topics(self, partition: int) -> dict[str, int]:
        """``topic → stored offset`` found outside the log, until an offsets reset."""
        raw: Any = self.client.hgetall(keys.out_of_range(partition))
        return {_text(k): int(v) for k, v in raw.items()}

    def add_counters(self, partition: int, counters: Mapping[str, int]) -> None:
        """Add to partition counters outside a batch (conditions no batch carries)."""
        pipe = self.client.pipeline(transaction=True)
        for name, n in counters.items():
            if n:
                pipe.hincrby(keys.counters(partition), name, n)
        pipe.execute()

    def reset_offsets(self, partition: int, moves: Sequence[tuple[str, int | None, int]],
                      detail: str) -> ApplyOutcome:
        """Move stored offsets ``(topic, offset seen, new offset)`` if none moved meanwhile,
        clear ``offsets_out_of_range`` and record ``offsets_reset`` (``reset_offsets.lua``)."""
        args: list[Any] = [len(moves)]
        for topic, seen, new in moves:
            args += [topic, "" if seen is None else seen, new]
        args.append(detail)
        res = self._reset(keys=[keys.offsets(partition), keys.counters(partition),
                                keys.partition_warnings(partition),
                                keys.out_of_range(partition)], args=args)
        if int(res[0]) == 1:
            return ApplyOutcome(True)
        return ApplyOutcome(False, _text(res[1]), _text(res[2]))

    def matrix_states(self, partition: int, experiment: str, columns: Sequence[str]
                      ) -> dict[str, MomentMatrix]:
        """The stored matrices of one experiment in one partition, per variation."""
        raw: Any = self.client.hgetall(keys.matrices(partition, experiment))
        return self.parse_matrices(columns, raw)

    def read_batch(self, partition: int, wanted: Mapping[str, Sequence[str]],
                   pending_units: Sequence[str], buckets: int, *,
                   expired_before: float | None = None, expired_limit: int = 1000,
                   max_pending: int = -1, matured_by: float | None = None,
                   matured_limit: int = 2000, matrices_of: Sequence[str] = ()) -> BatchReads:
        """Unit states of ``experiment → units``, held events of ``pending_units``, the held
        count, units held since before ``expired_before``, the oldest held units eviction
        may need (``max_pending``: the bound, -1 none; ``pending_units`` may add as many), maturity
        members due by ``matured_by`` and the stored matrices of ``matrices_of``: one call."""
        bucket = unit_buckets(wanted, buckets)
        by_key: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for experiment, units in wanted.items():
            for u in units:
                by_key[keys.units(partition, experiment, bucket[u])].append((experiment, u))
        key_list = list(by_key)
        args: list[Any] = [len(key_list)]
        for k in key_list:
            entries = by_key[k]
            args.append(len(entries))
            args.extend(u for _, u in entries)
        args.append(len(pending_units))
        args.extend(pending_units)
        args += ["" if expired_before is None else repr(float(expired_before)), expired_limit,
                 max_pending, len(pending_units),
                 "" if matured_by is None else repr(float(matured_by)), matured_limit]
        mkeys = [keys.matrices(partition, x) for x in matrices_of]
        res = self._read_batch(keys=[*key_list, keys.pending(partition),
                                     keys.pending_queue(partition), keys.maturity(partition),
                                     *mkeys], args=[packed_args(args)])
        values, count, expired, oldest, matured, matrices = res
        it = iter(values)
        states: dict[tuple[str, str], UnitState] = {}
        for k in key_list:
            for entry in by_key[k]:
                blob = next(it)
                if blob:
                    states[entry] = UnitState.unpack(blob)
        held = {u: b for u, b in zip(pending_units, it, strict=True) if b}
        stored = {x: {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}
                  for x, flat in zip(matrices_of, matrices, strict=True)}
        return BatchReads(states, held, int(count), [_text(u) for u in expired],
                          [_text(u) for u in oldest], [_text(m) for m in matured], stored,
                          bucket)

    @staticmethod
    def parse_matrices(columns: Sequence[str], raw: Mapping[Any, bytes]
                       ) -> dict[str, MomentMatrix]:
        """Stored matrices ``variation → blob`` as :class:`MomentMatrix` (raises on a blob
        whose length does not fit ``columns``)."""
        return {_text(k): MomentMatrix.from_bytes(columns, v)
                for k, v in raw.items()}


    def read_batch_state(self, partition: int, wanted: Mapping[str, Sequence[str]],
                         pending_units: Sequence[str], buckets: int
                         ) -> tuple[dict[tuple[str, str], UnitState], dict[str, bytes]]:
        """Unit states of ``experiment → units`` and held events of ``pending_units``.

        One script call (``read_units.lua``): a batch touches thousands of bucket hashes.
        """
        by_key: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for experiment, units in wanted.items():
            for u in units:
                b = keys.bucket_of(u, buckets)
                by_key[keys.units(partition, experiment, b)].append((experiment, u))
        key_list = list(by_key)
        args: list[Any] = []
        for k in key_list:
            entries = by_key[k]
            args.append(len(entries))
            args.extend(u for _, u in entries)
        args.append(len(pending_units))
        args.extend(pending_units)
        values = self._read(keys=[*key_list, keys.pending(partition)], args=args)
        it = iter(values)
        states: dict[tuple[str, str], UnitState] = {}
        for k in key_list:
            for entry in by_key[k]:
                blob = next(it)
                if blob:
                    states[entry] = UnitState.unpack(blob)
        held = {u: b for u, b in zip(pending_units, it, strict=True) if b}
        return states, held

    def read_pending(self, partition: int, units: Sequence[str]) -> dict[str, bytes]:
        if not units:
            return {}
        blobs: Any = self.client.hmget(keys.pending(partition), list(units))
        return {u: b for u, b in zip(units, blobs, strict=True) if b is not None}

    def pending_count(self, partition: int) -> int:
        return int(self.client.hlen(keys.pending(partition)))

    def apply(self, w: BatchWrite) -> ApplyOutcome:
        p = w.partition
        key_list = [keys.epoch(p), keys.offsets(p), keys.counters(p)]
        index: dict[str, int] = {}

        def k(name: str) -> int:
            if name not in index:
                key_list.append(name)
                index[name] = len(key_list)  # Lua is 1-based
            return index[name]

        args: list[Any] = [w.epoch, len(w.offsets)]
        for topic, expected, nxt in w.offsets:
            args += [topic, "" if expected is None else expected, nxt]
        args.append(len(w.matrices) + len(w.slice_matrices))
        for (exp, variation), (shift, delta) in w.matrices.items():
            base = w.matrix_bases.get((exp, variation))
            args += [k(keys.matrices(p, exp)), variation, len(shift), pack(shift, delta),
                     "" if base is None else pack_shift(base)]
        args += _slice_matrix_args(w, k)
        sets: list[tuple[str, str, bytes]] = [
            (keys.units(p, e, b), u, v) for (e, b, u), v in w.units.items()]
        sets += [(keys.unit_slices(p, e, b), u, v) for (e, b, u), v in w.unit_slices.items()]
        sets += [(keys.pending(p), u, v) for u, v in w.pending_set.items()]
        args.append(len(sets))
        for key, f, v in sets:
            args += [k(key), f, v]
        args.append(len(w.pending_del))
        for u in w.pending_del:
            args += [k(keys.pending(p)), u]
        zadd = [(keys.pending_queue(p), ts, u) for u, ts in w.pending_queue_add.items()]
        zadd += list(w.zadd)
        args.append(len(zadd))
        for key, score, member in zadd:
            args += [k(key), repr(float(score)), member]
        zrem = [(keys.pending_queue(p), u) for u in w.pending_del] + list(w.zrem)
        args.append(len(zrem))
        for key, member in zrem:
            args += [k(key), member]
        counters = [(f, n) for f, n in w.counters.items() if n]
        args.append(len(counters))
        for f, n in counters:
            args += [f, n]
        args.append("" if w.last_event_ts is None else repr(w.last_event_ts))
        args.append(len(w.experiment_last_ts))
        for exp, ts in w.experiment_last_ts.items():
            args += [keys.experiment_counter(exp, LAST_EVENT_TS), repr(float(ts))]
        hist = [(keys.histograms(p, e, v), f, n) for (e, v), fields in w.histograms.items()
                for f, n in fields.items() if n]
        args.append(len(hist))
        for key, f, n in hist:
            args += [k(key), f, n]
        res = self._script(keys=key_list, args=[packed_args(args)])
        if int(res[0]) == 1:
            return ApplyOutcome(True)
        reason = _text(res[1])
        detail = _text(res[2]) if len(res) > 2 else ""
        return ApplyOutcome(False, reason, detail)


def _slice_matrix_args(w: BatchWrite, k: Any) -> list[Any]:
    """Slice matrices as tuples of the script's matrices section (same shift checks)."""
    args: list[Any] = []
    for (exp, dim, fld), (shift, delta) in w.slice_matrices.items():
        base = w.slice_matrix_bases.get((exp, dim, fld))
        args += [k(keys.slice_matrices(w.partition, exp, dim)), fld, len(shift),
                 pack(shift, delta), "" if base is None else pack_shift(base)]
    return args


_PACK = msgspec.msgpack.Encoder()


def unit_buckets(wanted: Mapping[str, Iterable[str]], buckets: int) -> dict[str, int]:
    """``unit → keys.bucket_of(unit)`` for every unit of ``wanted``, each hashed once."""
    out: dict[str, int] = {}
    for units in wanted.values():
        for u in units:
            if u not in out:
                out[u] = keys.bucket_of(u, buckets)
    return out


def packed_args(args: Sequence[Any]) -> bytes:
    """A script's arguments as one msgpack array of strings (the script unpacks it with
    ``cmsgpack.unpack``): numbers become the text Redis would have received and bytes are
    sent as msgpack strings (Redis' cmsgpack has no bin type), so the script sees exactly
    the values it saw as separate ARGV, without a Redis argument per value."""
    return _PACK.encode([a if a.__class__ is str else
                         _raw_str(a) if a.__class__ is bytes else str(a) for a in args])


def _raw_str(b: bytes) -> msgspec.Raw:
    """``b`` as a msgpack str (header then the bytes, unchanged)."""
    n = len(b)
    if n < 32:
        head = bytes((0xA0 | n,))
    elif n < 0x100:
        head = bytes((0xD9, n))
    elif n < 0x10000:
        head = b"\xda" + n.to_bytes(2, "big")
    else:
        head = b"\xdb" + n.to_bytes(4, "big")
    return msgspec.Raw(head + b)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def partition_count(client: Client, default: int = 0) -> int:
    raw = client.hget(keys.META, "partitions")
    return int(raw) if raw is not None else default


def read_matrices(client: Client, experiment: str, columns: Sequence[str],
                  partitions: Iterable[int]) -> dict[str, MomentMatrix]:
    """Every partition's matrices of one experiment, merged per variation with ``+``."""
    pipe = client.pipeline(transaction=False)
    parts = list(partitions)
    for p in parts:
        pipe.hgetall(keys.matrices(p, experiment))
    merged: dict[str, MomentMatrix] = {}
    width = len(columns)
    for raw in pipe.execute():
        for variation, blob in raw.items():
            if packed_values(blob) != MomentMatrix.array_length(width):
                raise ValueError(f"matrix of {experiment!r} has {packed_values(blob)} values; "
                                 f"the definition's {width} columns need "
                                 f"{MomentMatrix.array_length(width)}")
            m = MomentMatrix.from_bytes(columns, blob)
            name = _text(variation)
            merged[name] = merged[name] + m if name in merged else m
    return merged


def read_counters(client: Client, partitions: Iterable[int]) -> dict[str, float]:
    """Counters summed over partitions (``last_event_ts`` and ``<experiment>:last_event_ts``:
    the maximum)."""
    pipe = client.pipeline(transaction=False)
    for p in partitions:
        pipe.hgetall(keys.counters(p))
    total: dict[str, float] = defaultdict(float)
    for raw in pipe.execute():
        for f, v in raw.items():
            name = _text(f)
            if name == LAST_EVENT_TS or name.endswith(":" + LAST_EVENT_TS):
                total[name] = max(total[name], float(v))
            else:
                total[name] += float(v)
    return dict(total)


def read_partition_warnings(client: Client, partitions: Iterable[int]
                            ) -> dict[int, dict[str, str]]:
    """``partition → code → detail`` of every partition that has a condition set."""
    pipe = client.pipeline(transaction=False)
    parts = list(partitions)
    for p in parts:
        pipe.hgetall(keys.partition_warnings(p))
    return {p: {_text(k): _text(v) for k, v in raw.items()}
            for p, raw in zip(parts, pipe.execute(), strict=True) if raw}


def stored_offsets_all(client: Client, partitions: Iterable[int]) -> Mapping[int, dict[str, int]]:
    out = {}
    for p in partitions:
        raw: Any = client.hgetall(keys.offsets(p))
        out[p] = {_text(k): int(v) for k, v in raw.items()}
    return out


def read_histograms(client: Client, experiment: str, variations: Sequence[str],
                    partitions: Iterable[int]) -> dict[str, dict[str, dict[str, int]]]:
    """Quantile histograms summed over partitions: variation → metric → bucket → count."""
    pipe = client.pipeline(transaction=False)
    for p in partitions:
        for v in variations:
            pipe.hgetall(keys.histograms(p, experiment, v))
    out: dict[str, dict[str, dict[str, int]]] = {v: {} for v in variations}
    raws = pipe.execute()
    for i, raw in enumerate(raws):
        v = variations[i % len(variations)]
        for f, n in raw.items():
            metric, bucket = keys.parse_histogram_field(_text(f))
            per = out[v].setdefault(metric, {})
            per[bucket] = per.get(bucket, 0) + int(n)
    return out
