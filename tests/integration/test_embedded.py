"""The embedded servers and the Kafka plumbing really work (real broker, real Redis)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from stream.kafka import (
    KafkaConsumer,
    OffsetAndMetadata,
    PartitionCountMismatch,
    TopicPartition,
    consumer_lag,
    ensure_topics,
    log_ranges,
    make_consumer,
    make_producer,
    partition_count,
    partition_counts,
)
from workers.dev.embedded import (
    Broker,
    RedisCluster,
    start_redis,
    start_redis_cluster,
)

TopicFactory = Callable[..., str]


def produce(bootstrap: str, topic: str, n: int, start: int = 0) -> Counter[int]:
    """Send ``n`` small JSON messages keyed by unit; return the count per partition."""
    producer = make_producer(bootstrap)
    try:
        futures = [
            producer.send(topic, key=f"unit-{i % 997}".encode(),
                          value=json.dumps({"i": i, "unit": f"unit-{i % 997}"}).encode())
            for i in range(start, start + n)
        ]
        producer.flush(timeout=30)
        return Counter(f.get(timeout=10).partition for f in futures)
    finally:
        producer.close()


Seen = list[tuple[int, int, int]]


def drain(consumer: KafkaConsumer, expected: int, timeout: float = 30.0) -> Seen:
    """Poll until ``expected`` records arrived; return (partition, offset, i) triples."""
    seen: Seen = []
    deadline = time.monotonic() + timeout
    while len(seen) < expected and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=200, max_records=5000).items():
            seen.extend((tp.partition, r.offset, json.loads(r.value)["i"]) for r in records)
    return seen


# ----------------------------------------------------------------------------- Kafka


def test_broker_answers(broker: Broker) -> None:
    assert broker.alive()
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"
    assert broker.started_in_s < 10


def test_ensure_topics_is_idempotent_and_strict(broker: Broker, make_topic: TopicFactory) -> None:
    name = make_topic(partitions=3)
    assert ensure_topics(broker.bootstrap, {name: 3}) == {name: 3}
    assert partition_count(broker.bootstrap, name) == 3
    with pytest.raises(PartitionCountMismatch):
        ensure_topics(broker.bootstrap, {name: 5})
    assert ensure_topics(broker.bootstrap, {name: 5}, strict=False) == {name: 3}
    with pytest.raises(ValueError):
        ensure_topics(broker.bootstrap, {name + "-zero": 0})
    missing = name + "-missing"
    assert partition_counts(broker.bootstrap, [name, missing]) == {name: 3, missing: None}
    assert partition_count(broker.bootstrap, missing) is None  # asking does not create it


def test_10k_messages_through_a_consumer_group(
    broker: Broker, make_topic: TopicFactory, group_id: str
) -> None:
    topic = make_topic(partitions=4)
    per_partition = produce(broker.bootstrap, topic, 10_000)
    assert sorted(per_partition) == [0, 1, 2, 3]

    consumer = make_consumer(broker.bootstrap, group_id, [topic])
    try:
        seen = drain(consumer, 10_000)
        assert sorted(i for _, _, i in seen) == list(range(10_000))
        assert Counter(p for p, _, _ in seen) == per_partition
        for p in range(4):  # offsets arrive in order, without gaps, per partition
            offsets = [o for q, o, _ in seen if q == p]
            assert offsets == list(range(per_partition[p]))
        assert {tp.partition for tp in consumer.assignment()} == {0, 1, 2, 3}
        assert set(consumer_lag(consumer).values()) == {0}
    finally:
        consumer.close()


def test_committed_offsets_survive_reconnect(
    broker: Broker, make_topic: TopicFactory, group_id: str
) -> None:
    topic = make_topic(partitions=2)
    per_partition = produce(broker.bootstrap, topic, 200)
    tps = [TopicPartition(topic, p) for p in range(2)]
    half = {tp: per_partition[tp.partition] // 2 for tp in tps}

    first = make_consumer(broker.bootstrap, group_id, [topic])
    try:
        assert len(drain(first, 200)) == 200
        first.commit({tp: OffsetAndMetadata(half[tp], "", -1) for tp in tps})
    finally:
        first.close()

    second = make_consumer(broker.bootstrap, group_id, [topic])
    try:
        assert {tp: second.committed(tp) for tp in tps} == half
        rest = drain(second, 200 - sum(half.values()))
        assert len(rest) == 200 - sum(half.values())
        for tp in tps:  # resumes exactly at the committed offset
            got = sorted(o for p, o, _ in rest if p == tp.partition)
            assert got == list(range(half[tp], per_partition[tp.partition]))
        # caught up: every position at the high watermark, and nothing more arrives
        ends = log_ranges(broker.bootstrap, [(tp.topic, tp.partition) for tp in tps])
        assert {tp: second.position(tp) for tp in tps} == \
            {tp: ends[tp.topic, tp.partition].end for tp in tps}
        assert drain(second, 1, timeout=1.0) == []  # nothing replayed
    finally:
        second.close()


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def test_two_consumers_split_co_partitioned_topics_and_rebalance(
    broker: Broker, make_topic: TopicFactory, group_id: str
) -> None:
    exposures, events = make_topic(4, "exposures"), make_topic(4, "events")
    consumers = [make_consumer(broker.bootstrap, group_id, [exposures, events]) for _ in range(2)]
    received: list[list[tuple[str, int]]] = [[], []]
    stops = [threading.Event(), threading.Event()]

    def run(k: int) -> None:  # each consumer is polled and closed by its own thread
        try:
            while not stops[k].is_set():
                for tp, records in consumers[k].poll(timeout_ms=100).items():
                    received[k].extend((tp.topic, tp.partition) for _ in records)
        finally:
            consumers[k].close()

    def owned(k: int) -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in consumers[k].assignment()}

    def split() -> bool:
        a, b = owned(0), owned(1)
        return bool(a and b and not a & b and len(a | b) == 8)

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(2)]
    for t in threads:
        t.start()
    try:
        assert _wait_for(split, 30), (owned(0), owned(1))
        mine = [owned(0), owned(1)]
        for own in mine:  # range assignor: partition p of both topics goes to one member
            parts = {p for _, p in own}
            assert own == {(t, p) for t in (exposures, events) for p in parts}
            assert len(parts) == 2

        produce(broker.bootstrap, exposures, 300)
        produce(broker.bootstrap, events, 300)
        assert _wait_for(lambda: len(received[0]) + len(received[1]) >= 600, 20)
        assert len(received[0]) + len(received[1]) == 600
        for k in range(2):
            assert received[k], "both members must get data"
            assert set(received[k]) <= mine[k]

        stops[1].set()  # member 1 leaves: member 0 takes over all 8 partitions
        threads[1].join(timeout=15)
        assert _wait_for(lambda: len(owned(0)) == 8, 30), owned(0)
    finally:
        for stop in stops:
            stop.set()
        for t in threads:
            t.join(timeout=15)


# ----------------------------------------------------------------------------- Redis


def test_redis_url_fixture_pings_and_is_flushed(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping()
        assert client.dbsize() == 0
        client.set("leftover", 1)
    finally:
        client.close()


def test_redis_aof_survives_restart_and_crash(tmp_path: Path) -> None:
    with start_redis(appendonly=True, appendfsync="always", data_dir=tmp_path / "r") as server:
        port, pid = server.port, server.pid
        c = redis.Redis.from_url(server.url, decode_responses=True)
        c.set("graceful", "1")
        c.close()
        server.restart()
        assert (server.port, server.data_dir) == (port, (tmp_path / "r").resolve())
        assert server.pid != pid
        c = redis.Redis.from_url(server.url, decode_responses=True)
        assert c.get("graceful") == "1"
        c.hset("crash", mapping={"a": 1, "b": 2})
        c.close()
        server.restart(crash=True)  # SIGKILL: only the fsynced AOF can bring it back
        c = redis.Redis.from_url(server.url, decode_responses=True)
        assert c.get("graceful") == "1"
        assert c.hgetall("crash") == {"a": "1", "b": "2"}
        c.close()
    assert (tmp_path / "r").exists()  # a caller-owned data dir is kept
    assert not server.alive()


def test_redis_password() -> None:
    with start_redis(password="s3cret") as server:
        assert server.url.startswith("redis://:s3cret@127.0.0.1:")
        anonymous = redis.Redis(host=server.host, port=server.port,
                                retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.ping()
        anonymous.close()
        authed = redis.Redis.from_url(server.url)
        assert authed.ping()
        authed.close()
    assert not Path(server.data_dir).exists()  # a temporary data dir is removed


# ----------------------------------------------------------------------------- Redis Cluster


def _node_of(cluster: RedisCluster, key: str) -> int:
    """Port of the node that physically holds ``key``."""
    holders = []
    for node in cluster.nodes:
        c = node.client()
        try:
            slot = c.execute_command("CLUSTER", "KEYSLOT", key)
            if c.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) and c.exists(key):
                holders.append(node.port)
        finally:
            c.close()
    assert len(holders) == 1, holders
    return holders[0]


def test_cluster_covers_all_slots(redis_cluster: RedisCluster) -> None:
    rc = redis.cluster.RedisCluster.from_url(redis_cluster.url)
    try:
        infos = cast(dict[str, dict[str, str]],
                     rc.cluster_info(target_nodes=redis.cluster.RedisCluster.ALL_NODES))
        assert len(infos) == 3
        assert {i["cluster_state"] for i in infos.values()} == {"ok"}
        assert len(rc.get_primaries()) == 3
        ranges = cast(dict[tuple[int, int], dict[str, Any]], rc.cluster_slots())
        assert sum(hi - lo + 1 for lo, hi in ranges) == 16384
        assert len({r["primary"] for r in ranges.values()}) == 3
    finally:
        rc.close()


def test_cluster_hash_tags_spread_over_nodes(
    redis_cluster: RedisCluster, redis_cluster_url: str
) -> None:
    rc = redis.cluster.RedisCluster.from_url(redis_cluster_url)
    try:
        by_node: dict[int, str] = {}
        for p in range(256):
            key = f"ls:{{{p}}}:moments"
            by_node.setdefault(rc.get_node_from_key(key).port, key)
            if len(by_node) == 3:
                break
        assert len(by_node) == 3
        for port, key in by_node.items():
            rc.set(key, port)
            assert _node_of(redis_cluster, key) == port
    finally:
        rc.close()


LUA = """
local n = redis.call('HINCRBY', KEYS[1], 'n', ARGV[1])
local s = redis.call('HINCRBYFLOAT', KEYS[2], 's', ARGV[2])
return {n, s}
"""


def test_cluster_lua_on_one_hash_tag(redis_cluster: RedisCluster, redis_cluster_url: str) -> None:
    rc = redis.cluster.RedisCluster.from_url(redis_cluster_url, decode_responses=True)
    try:
        keys = ["ls:{7}:count", "ls:{7}:sum"]
        assert rc.eval(LUA, 2, *keys, 2, 1.5) == [2, "1.5"]
        script = rc.register_script(LUA)  # EVALSHA with NOSCRIPT fallback
        assert script(keys=keys, args=[3, 0.25]) == [5, "1.75"]
        with pytest.raises(redis.exceptions.RedisClusterException):
            rc.eval(LUA, 2, "ls:{1}:count", "ls:{2}:sum", 1, 1)  # two slots: refused
    finally:
        rc.close()


def test_cluster_join_through_redis_py() -> None:
    with start_redis_cluster(nodes=3, method="redis-py") as cluster:
        rc = cluster.client(decode_responses=True)
        try:
            rc.set("{a}x", "1")
            rc.set("{b}x", "2")
            assert rc.mget_nonatomic(["{a}x", "{b}x"]) == ["1", "2"]
        finally:
            rc.close()
