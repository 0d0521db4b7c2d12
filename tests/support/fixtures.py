"""Real-Redis fixtures for tests outside tests/integration (a pytest plugin: list it in a
``conftest.py``'s ``pytest_plugins``). Each test gets the session server, flushed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from state.store import Client, connect
from workers.dev.embedded import RedisServer, start_redis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis server for the whole session (no persistence)."""
    with start_redis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """URL of the session Redis, flushed before each test."""
    client = redis_server.client()
    try:
        client.flushall()
    finally:
        client.close()
    yield redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Client]:
    """A client of the flushed session Redis."""
    client = connect(redis_url, False)
    try:
        yield client
    finally:
        client.close()
