"""Redis refusing commands (OOM at maxmemory with noeviction, READONLY, BUSY) while a worker
ingests: it logs, counts, backs off and retries with its partitions held, never exits, and
once Redis accepts writes again every message counts exactly once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
import redis

from state.store import partition_count, read_counters
from workers.dev.embedded import Broker, RedisServer, free_port
from workers.ingest import IngestWorker

from .conftest import unique
from .opskit import Worker, click_traffic, counted, metric_value, metrics_text, register_clicks
from .opskit import wait_until as wait
from .streaming import (
    Publisher,
    create_topics,
    messages_applied,
    redis_client,
    streaming_settings,
    wait_for_messages,
)

BUSY_SCRIPT = """
local t0 = redis.call('TIME')
local start = tonumber(t0[1]) + tonumber(t0[2]) / 1e6
while true do
  local t = redis.call('TIME')
  if tonumber(t[1]) + tonumber(t[2]) / 1e6 - start > tonumber(ARGV[1]) then return 1 end
end
"""


@contextmanager
def refusing(admin: redis.Redis, kind: str) -> Iterator[None]:
    """Make Redis refuse the worker's writes until the block ends (BUSY: for 4 s)."""
    if kind == "oom":
        policy = str(admin.config_get("maxmemory-policy")["maxmemory-policy"])
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
        try:
            yield
        finally:
            admin.config_set("maxmemory", 0)
            admin.config_set("maxmemory-policy", policy)
    elif kind == "readonly":
        admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
        try:
            yield
        finally:
            admin.execute_command("REPLICAOF", "NO", "ONE")
    else:
        limit = str(admin.config_get("lua-time-limit")["lua-time-limit"])
        admin.config_set("lua-time-limit", 100)
        runner = threading.Thread(target=lambda: admin.eval(BUSY_SCRIPT, 0, 4.0), daemon=True)
        runner.start()
        try:
            yield
        finally:
            runner.join(30)
            admin.config_set("lua-time-limit", limit)


@pytest.mark.parametrize("kind", ["oom", "readonly", "busy"])
def test_worker_rides_out_redis_refusals(broker: Broker, redis_server: RedisServer,
                                         redis_url: str, kind: str) -> None:
    exp = unique(f"full-{kind}")
    s = replace(streaming_settings(broker.bootstrap, redis_url, exp, 4), batch_size=500)
    create_topics(s)
    client = redis_client(s)
    register_clicks(client, exp)
    traffic = click_traffic(exp, "a", 3000, seed=61)
    admin = redis_server.client()
    # a third is published, then the rest once Redis refuses: the worker always has messages
    # to apply while refused, however fast it is
    pub = Publisher(s, traffic.messages, rate=1500.0, pause_at=len(traffic.messages) // 3)
    w = Worker(IngestWorker(s, f"w-{kind}"))
    w.start()
    pub.start()
    stats = w.worker.stats
    try:
        wait("ingest under way", lambda: messages_applied(client) > 1000)
        with refusing(admin, kind):
            pub.resume.set()
            wait("worker refused", lambda: stats[f"redis_errors_{kind}"] >= 1, 60)
            if kind != "busy":
                frozen = messages_applied(client)
                wait("retried with back-off", lambda: stats[f"redis_errors_{kind}"] >= 4, 60)
                assert messages_applied(client) == frozen  # nothing applied meanwhile
            assert w.is_alive() and w.error is None  # never exits
        pub.finish()
        wait_for_messages(client, len(traffic.messages))
        assert counted(client, exp) == (traffic.units, traffic.clicks)
        # the counters of the refusals are written once Redis accepts writes
        wait("refusals counted in Redis", lambda: read_counters(
            client, range(partition_count(client))).get(f"redis_errors_{kind}", 0) >= 1)
        c = read_counters(client, range(partition_count(client)))
        assert c["messages"] == len(traffic.messages)  # none applied twice
        text = metrics_text(s)
        assert metric_value(
            text, f'liftstream_ingest_counter_total{{counter="redis_errors_{kind}"}}') >= 1
        assert w.worker.owned  # partitions held throughout
    finally:
        w.stop()
        admin.close()
