"""Result and history documents computed in child processes (``liftstream api``).

A document is seconds of Python and numpy holding the GIL. Computed in a thread of the API
process, the thread is preempted by the OS hundreds of times a second on a busy machine
*while holding the GIL*, and the event loop (``/healthz``, cached answers) then waits until
the thread is scheduled again: 300-800 ms stalls measured (BENCHMARKS.md "API under
cache-busting load"). In a child process a computation never holds the loop's GIL.

The API's :class:`~workers.api.cache.ComputeGate` still bounds the work: a gate thread
submits one computation and waits for it (waiting releases the GIL), so at most
``LIFTSTREAM_API_COMPUTE_THREADS`` computations run, one per child. A child returns the
encoded document (bytes: one copy through a pipe, nothing for the parent to build) or a
history snapshot (small). A child that dies is replaced and the computation retried once.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import msgspec

from state import history
from state.definition import ExperimentDef
from state.registry import Registry
from state.results import experiment_document, experiment_document_with
from state.store import Client
from workers.settings import Settings

__all__ = ["ComputeProcesses"]

T = TypeVar("T")

_client: Client | None = None


def _init(settings: Settings) -> None:
    """In the child: its own Redis client (bounded timeouts, like the API's), and a watch
    that ends the child when the API process is gone (even SIGKILLed: a spawned child holds
    both ends of its task pipe, so it would otherwise wait for work forever)."""
    from workers.api.state import api_client

    global _client
    # Ctrl-C reaches the whole process group: the API shuts its children down itself (a
    # child interrupted in its task loop would print a traceback)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _client = api_client(settings)
    parent = os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), name="parent-watch",
                     daemon=True).start()


def _exit_with_parent(parent: int, every: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(0)


def _redis() -> Client:
    assert _client is not None, "compute child not initialised"
    return _client


def _ready() -> bool:
    return True


def results_body(experiment_id: str, alpha: float | None, correction: str | None,
                 by: str | None) -> tuple[ExperimentDef, bytes] | None:
    """In the child: the definition and the encoded result document (``None``: unknown id)."""
    client = _redis()
    d = Registry(client).get(experiment_id)
    if d is None:
        return None
    corr: Any = correction
    return d, msgspec.json.encode(experiment_document_with(client, d, corr, alpha, by))


def history_snapshot(d: ExperimentDef, now: float) -> dict[str, Any]:
    """In the child: the history snapshot of ``d``'s current results, taken at ``now``."""
    return history.snapshot(experiment_document(_redis(), d), now)


class ComputeProcesses:
    """``processes`` spawned children (started at the first call or :meth:`start`)."""

    def __init__(self, settings: Settings, processes: int) -> None:
        self.settings = settings
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self.processes, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init, initargs=(self.settings,))
            return self._pool

    def start(self) -> None:
        """Spawn the children now (they import numpy and the estimators: seconds)."""
        pool = self._executor()
        for _ in range(self.processes):
            pool.submit(_ready)

    def call(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` in a child, blocking this (gate) thread until it returns; a broken
        pool (a child killed) is replaced and the call retried once."""
        for attempt in (0, 1):
            pool = self._executor()
            try:
                return pool.submit(fn, *args).result()
            except BrokenProcessPool:
                with self._lock:
                    if self._pool is pool:
                        self._pool = None
                pool.shutdown(wait=False)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def pids(self) -> list[int]:
        """The running children's process ids."""
        pool = self._pool
        procs: dict[int, Any] = getattr(pool, "_processes", None) or {}
        return [p for p, proc in procs.items() if proc.is_alive()]

    def stop(self) -> None:
        """Shut the children down (a computation still running is abandoned)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is None:
            return
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:  # our own children, by their handles
            proc.terminate()
