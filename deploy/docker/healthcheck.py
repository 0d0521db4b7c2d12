#!/usr/bin/env python3
"""Health check of a liftstream container (Docker HEALTHCHECK and Kubernetes exec probes).

The image's ENTRYPOINT is ``liftstream``, so PID 1 of a container runs ``liftstream
<sub-command>``; the check reads ``/proc/1/cmdline`` to decide what "healthy" means:

* ``api``: ``GET http://127.0.0.1:<port>/healthz`` answers 200 (``--path /readyz`` checks
  readiness instead); the port is ``--port`` of the api command line, else
  ``LIFTSTREAM_API_PORT``, else 8000.
* ``worker``, ``learner``, ``alerter``: the settings load (``load_settings`` refuses bad or
  unknown ``LIFTSTREAM_*`` variables) and Redis answers PING at ``LIFTSTREAM_REDIS_URL``.
  These processes serve no HTTP; each exits non-zero on an unrecoverable error, and the
  container runtime restarts it, so this check is about reachability of their state store.
* anything else (``simulate``, ``replay``, ``experiments`` …): healthy.

``--mode http|redis|auto`` overrides the detection. Exit status 0 = healthy, 1 = unhealthy;
one line on standard output says why.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

REDIS_COMMANDS = frozenset({"worker", "learner", "alerter"})


def pid1_command(cmdline_path: str = "/proc/1/cmdline") -> list[str]:
    """The arguments after the ``liftstream`` executable in PID 1's command line."""
    try:
        with open(cmdline_path, "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []
    for i, arg in enumerate(argv):
        if os.path.basename(arg) == "liftstream":
            return argv[i + 1:]
    return []


def api_port(args: Sequence[str]) -> int:
    for i, arg in enumerate(args):
        if arg == "--port" and i + 1 < len(args):
            return int(args[i + 1])
        if arg.startswith("--port="):
            return int(arg.split("=", 1)[1])
    return int(os.environ.get("LIFTSTREAM_API_PORT") or 8000)


def check_http(port: int, path: str, timeout: float) -> tuple[bool, str]:
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200, f"{url}: HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code}"
    except OSError as exc:
        return False, f"{url}: {exc}"


def check_redis(timeout: float) -> tuple[bool, str]:
    try:
        import redis

        from workers.settings import SettingsError, load_settings
    except ImportError as exc:
        return False, f"liftstream is not installed: {exc}"
    try:
        settings = load_settings()
    except SettingsError as exc:
        return False, f"settings: {exc}"
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=timeout,
                                      socket_connect_timeout=timeout)
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return False, f"redis: {exc}"
    return True, "redis: PONG"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="liftstream-healthcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["auto", "http", "redis"], default="auto")
    parser.add_argument("--path", default="/healthz", help="HTTP path for the api (/healthz)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (3)")
    args = parser.parse_args(argv)

    command = pid1_command()
    sub = command[0] if command else ""
    mode = args.mode
    if mode == "auto":
        mode = "http" if sub == "api" else "redis" if sub in REDIS_COMMANDS else "none"
    if mode == "http":
        ok, why = check_http(api_port(command[1:]), args.path, args.timeout)
    elif mode == "redis":
        ok, why = check_redis(args.timeout)
    else:
        ok, why = True, f"nothing to check for {sub or 'an unknown command'!r}"
    print(("healthy: " if ok else "unhealthy: ") + why)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
