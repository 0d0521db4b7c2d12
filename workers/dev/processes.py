"""Child processes of the embedded servers: free ports, start, readiness, stop (also at exit)."""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol, Self, TypeVar

LOOPBACK = "127.0.0.1"
CLUSTER_SLOTS = 16384
TANSU_ENV = (
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


def register(server: _Stoppable) -> None:
    with _live_lock:
        _live.add(server)


def unregister(server: _Stoppable) -> None:
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


def free_cluster_port(host: str, taken: set[int]) -> int:
    """A port P such that P and its cluster-bus port P + 10000 are both free."""
    for _ in range(500):
        port = random.randrange(20000, 30000)
        if {port, port + 10000} & taken:
            continue
        if _port_free(host, port) and _port_free(host, port + 10000):
            return port
    raise EmbeddedError("no free port pair (P, P + 10000) found for a Redis Cluster node")


def tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Child:
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


def wait_until(child: Child, ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not child.alive():
            raise child.failure(what)
        if ready():
            return
        if time.monotonic() >= deadline:
            raise child.failure(f"{what} within {timeout:.0f}s")
        time.sleep(0.02)


class Server:
    """What every embedded server shares: ``stop()`` (idempotent: its processes halted, its
    scratch directory removed, no longer stopped at exit) and use as a context manager."""

    def _halt_processes(self, timeout: float) -> None:
        raise NotImplementedError

    def _scratch_dir(self) -> Path | None:
        """The directory ``stop()`` removes (``None``: keep it)."""
        return None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and remove its scratch directory; idempotent."""
        try:
            self._halt_processes(timeout)
        finally:
            unregister(self)
            scratch = self._scratch_dir()
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


S = TypeVar("S", bound=Server)


def start_fresh(attempts: int, build: Callable[[], S], start: Callable[[S], None]) -> S:
    """``start(build())``, up to ``attempts`` times while it fails with :class:`EmbeddedError`
    (another process may take a free port first); a server that failed is stopped."""
    last: EmbeddedError | None = None
    for _ in range(attempts):
        server = build()
        try:
            start(server)
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
