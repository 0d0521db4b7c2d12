"""The prologue every ``liftstream`` command shares: settings loaded, failures mapped to exit
codes and one line on standard error (``liftstream <command>: error: <what to fix>``).

Exit codes: 2 for bad input or settings (:class:`~workers.settings.SettingsError`,
:class:`CommandError` by default), 1 when a dependency (Redis) refuses or is unreachable.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from workers.settings import Settings, SettingsError, load_settings

__all__ = ["CommandError", "fail", "guarded", "run", "stop_on_signals"]


class CommandError(Exception):
    """A failure the command reports in one line, with its exit code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def fail(command: str, message: str, code: int = 2) -> int:
    """Print ``liftstream <command>: error: <message>`` on standard error; return ``code``."""
    print(f"liftstream {command}: error: {message}", file=sys.stderr)
    return code


def guarded(command: str, body: Callable[[], int],
            usage_errors: tuple[type[Exception], ...] = ()) -> int:
    """``body()``, with settings errors, :class:`CommandError`, ``usage_errors`` (exit 2) and
    Redis errors (exit 1) reported in one line instead of a traceback."""
    import redis  # here, not at import: `liftstream --help` stays light

    bad_input: tuple[type[Exception], ...] = (SettingsError, *usage_errors)
    try:
        return body()
    except bad_input as exc:
        return fail(command, str(exc))
    except CommandError as exc:
        return fail(command, str(exc), exc.code)
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        return fail(command, f"Redis is unavailable: {exc}", 1)


def run(command: str, body: Callable[[Settings], int],
        usage_errors: tuple[type[Exception], ...] = ()) -> int:
    """``body(settings)`` with the settings loaded from ``LIFTSTREAM_*``, under
    :func:`guarded`."""
    return guarded(command, lambda: body(load_settings()), usage_errors)


def stop_on_signals(stop_event: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop_event``: a long-running command finishes its batch, lets
    go of its leases and exits 0."""

    def stop(signum: int, frame: Any) -> None:
        stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
