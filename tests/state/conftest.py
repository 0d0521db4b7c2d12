"""tests/state: pure tests, plus real-Redis fixtures for the storage modules."""

from tests.support.fixtures import redis_client, redis_server, redis_url  # noqa: F401 (fixtures)
