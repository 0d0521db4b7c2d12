"""Fixtures that run real servers as child processes: a Tansu broker, Redis, a Redis Cluster.

Every test in this folder is marked ``integration`` (deselect with ``-m "not integration"``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream.kafka import ensure_topics
from tests.support.fixtures import redis_server, redis_url  # noqa: F401 (fixtures)
from workers.dev.embedded import (
    Broker,
    RedisCluster,
    start_broker,
    start_redis_cluster,
)

_HERE = Path(__file__).resolve().parent

TopicFactory = Callable[..., str]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test collected from this folder as ``integration``."""
    for item in items:
        if _HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


def unique(prefix: str) -> str:
    """A name no other test uses: ``prefix-<10 hex digits>``."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """One memory-only Tansu broker for the whole session."""
    with start_broker() as b:
        yield b


@pytest.fixture
def make_topic(broker: Broker) -> TopicFactory:
    """Create a uniquely named topic: ``make_topic(partitions=4, prefix="t") -> name``."""

    def _make(partitions: int = 4, prefix: str = "t") -> str:
        name = unique(prefix)
        ensure_topics(broker.bootstrap, {name: partitions})
        return name

    return _make


@pytest.fixture
def group_id() -> str:
    """A consumer-group id no other test uses."""
    return unique("g")


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """One 3-node Redis Cluster (all 16384 slots) for the whole session."""
    with start_redis_cluster(nodes=3) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisCluster) -> Iterator[str]:
    """Startup-node URL of the session cluster, every node flushed before each test."""
    for node in redis_cluster.nodes:
        client = node.client()
        try:
            client.flushall()
        finally:
            client.close()
    yield redis_cluster.url
