"""An embedded Redis Cluster: N cluster-enabled Redis nodes covering all 16384 slots."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from workers.dev.processes import (
    CLUSTER_SLOTS,
    LOOPBACK,
    EmbeddedError,
    Server,
    free_cluster_port,
    register,
)
from workers.dev.redis_server import RedisServer, find_redis_binary, start_redis


class RedisCluster(Server):
    """Running cluster-enabled Redis nodes covering all slots. Use :func:`start_redis_cluster`;
    ``stop()`` stops every node and removes the cluster's directory."""

    def __init__(self, nodes: list[RedisServer], workdir: Path, password: str | None) -> None:
        self.nodes = nodes
        self.workdir = workdir
        self.password = password
        self.started_in_s = 0.0

    @property
    def url(self) -> str:
        """A startup-node URL for ``redis.cluster.RedisCluster.from_url``."""
        node = self.nodes[0]
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{node.host}:{node.port}"

    def client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        """A cluster-aware redis-py client."""
        return redis.cluster.RedisCluster.from_url(self.url, **kwargs)

    def _halt_processes(self, timeout: float) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop(timeout)

    def _scratch_dir(self) -> Path:
        return self.workdir

    def __repr__(self) -> str:
        return f"RedisCluster(url={self.url!r}, nodes={len(self.nodes)})"


def _cluster_info(node: RedisServer) -> dict[str, str]:
    c = redis.Redis(host=node.host, port=node.port, password=node.password,
                    socket_timeout=2.0, decode_responses=True, retry=Retry(NoBackoff(), 0))
    try:
        text = str(c.execute_command("CLUSTER", "INFO"))
    finally:
        c.close()
    fields = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in fields}


def _cluster_ready(nodes: Sequence[RedisServer]) -> bool:
    try:
        infos = [_cluster_info(n) for n in nodes]
    except redis.exceptions.RedisError:
        return False
    return all(
        i.get("cluster_state") == "ok"
        and i.get("cluster_slots_ok") == str(CLUSTER_SLOTS)
        and i.get("cluster_known_nodes") == str(len(nodes))
        for i in infos
    )


def _join_with_redis_cli(nodes: Sequence[RedisServer], password: str | None,
                         timeout: float) -> None:
    cli = find_redis_binary("redis-cli")
    argv = [cli]
    if password:
        argv += ["-a", password, "--no-auth-warning"]
    argv += ["--cluster", "create", *(f"{n.host}:{n.port}" for n in nodes),
             "--cluster-replicas", "0", "--cluster-yes"]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedError(f"redis-cli --cluster create timed out after {timeout}s") from exc
    if done.returncode != 0:
        out = (done.stdout + done.stderr).decode(errors="replace")
        raise EmbeddedError(f"redis-cli --cluster create failed ({done.returncode}):\n{out}")


def _join_with_redis_py(nodes: Sequence[RedisServer]) -> None:
    n = len(nodes)
    clients = [node.client(socket_timeout=5.0) for node in nodes]
    try:
        for i, c in enumerate(clients):
            c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            lo, hi = i * CLUSTER_SLOTS // n, (i + 1) * CLUSTER_SLOTS // n
            for start in range(lo, hi, 2048):
                c.execute_command("CLUSTER", "ADDSLOTS", *range(start, min(hi, start + 2048)))
        first = clients[0]
        for node in nodes[1:]:
            first.execute_command("CLUSTER", "MEET", node.host, node.port)
    finally:
        for c in clients:
            c.close()


def start_redis_cluster(nodes: int = 3, *, host: str = LOOPBACK, password: str | None = None,
                        appendonly: bool = False, node_timeout_ms: int = 5000,
                        method: Literal["auto", "redis-cli", "redis-py"] = "auto",
                        binary: str | None = None, startup_timeout: float = 60.0,
                        die_with_parent: bool = True) -> RedisCluster:
    """Start ``nodes`` masters (no replicas) joined into one cluster, wait for ``ok``.

    ``method="auto"`` uses ``redis-cli --cluster create`` when a redis-cli binary exists and
    ``nodes >= 3`` (its minimum), else CLUSTER ADDSLOTS / MEET through redis-py.
    """
    if nodes < 1:
        raise ValueError("a cluster needs at least one node")
    if method == "auto":
        try:
            find_redis_binary("redis-cli")
            method = "redis-cli" if nodes >= 3 else "redis-py"
        except EmbeddedError:
            method = "redis-py"
    if method == "redis-cli" and nodes < 3:
        raise ValueError("redis-cli --cluster create needs at least 3 nodes")
    exe = binary or find_redis_binary("redis-server")
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="liftstream-rcluster-"))
    cluster = RedisCluster([], workdir, password)
    register(cluster)
    try:
        taken: set[int] = set()
        cluster_args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", str(node_timeout_ms)]
        for i in range(nodes):
            for attempt in range(3):  # a port may be taken between the check and the bind
                port = free_cluster_port(host, taken)
                taken |= {port, port + 10000}
                try:
                    node = start_redis(
                        port, host=host, password=password, appendonly=appendonly,
                        data_dir=workdir / f"node{i}", binary=exe,
                        die_with_parent=die_with_parent, extra_args=cluster_args)
                except EmbeddedError:
                    if attempt == 2:
                        raise
                    continue
                cluster.nodes.append(node)
                break
        if method == "redis-cli":
            _join_with_redis_cli(cluster.nodes, password, startup_timeout)
        else:
            _join_with_redis_py(cluster.nodes)
        deadline = time.monotonic() + startup_timeout
        while not _cluster_ready(cluster.nodes):
            if time.monotonic() >= deadline:
                states: list[str | None] = []
                for n in cluster.nodes:
                    try:
                        states.append(_cluster_info(n).get("cluster_state"))
                    except redis.exceptions.RedisError as exc:
                        states.append(repr(exc))
                raise EmbeddedError(f"cluster not ok after {startup_timeout}s: {states}")
            time.sleep(0.05)
    except BaseException:
        cluster.stop()
        raise
    cluster.started_in_s = time.monotonic() - t0
    return cluster
