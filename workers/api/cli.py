"""``liftstream api`` sub-command: settings, the token policy, uvicorn.

Kept apart from :mod:`workers.api.app` so building the CLI parser does not import FastAPI.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.settings import Settings

__all__ = ["add_api_parser"]


def _serve(args: argparse.Namespace) -> int:
    from workers.cli.prologue import run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # connection chatter while Kafka is down
    return run("api", lambda settings: _serve_with(args, settings))


def _serve_with(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from workers.api.app import create_app, resolve_auth

    host = args.host or settings.api_host
    port = args.port or settings.api_port
    auth, generated = resolve_auth(settings, args.insecure)
    shown = f"[{host}]" if ":" in host else host
    if auth.open:
        print("liftstream api: WARNING: --insecure: no authentication, every caller is admin",
              file=sys.stderr)
    elif generated is not None:
        print("liftstream api: no LIFTSTREAM_API_READ_TOKENS / LIFTSTREAM_API_ADMIN_TOKENS "
              "set; generated an admin token for this run:\n"
              f"  token:     {generated}\n"
              f"  dashboard: http://{shown}:{port}/?token={generated}", file=sys.stderr,
              flush=True)
    app = create_app(settings, auth=auth, lag_interval=None if args.no_lag else args.lag_interval,
                     record_history=not args.no_history, compute_processes=True)
    # A computation thread holding the GIL delays the event loop by up to one switch interval
    # per hand-over; 1 ms instead of 5 ms keeps /healthz and cached answers prompt.
    sys.setswitchinterval(0.001)
    freeze_startup_heap()
    uvicorn.run(app, host=host, port=port, log_level=args.log_level, log_config=log_config(),
                access_log=args.access_log, timeout_graceful_shutdown=5)
    return 0


def freeze_startup_heap() -> None:
    """Move every object alive after start-up (modules, FastAPI, numpy, scipy: ~120k
    objects) to the permanent generation, so a full collection walks only what requests
    created. A full collection holds the GIL throughout (40-120 ms each, measured while
    documents were computed in this process), stalling the event loop (``/healthz``)."""
    import gc

    gc.collect()
    gc.freeze()


def log_config() -> dict[str, Any]:
    """uvicorn's logging configuration with ``token`` query parameters redacted (``***``)
    in every uvicorn log line, the access log included."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_tokens"] = {
        "()": "workers.api.guard.RedactTokens"}
    for handler in config.get("handlers", {}).values():
        handler.setdefault("filters", []).append("redact_tokens")
    return config


def add_api_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``api`` to the ``liftstream`` sub-commands."""
    p = sub.add_parser(
        "api", help="serve the query API, /metrics and the dashboard",
        description="Serve the HTTP API (OpenAPI docs at /docs) and the dashboard at /. "
                    "Tokens come from LIFTSTREAM_API_READ_TOKENS / LIFTSTREAM_API_ADMIN_TOKENS "
                    "(admin implies read); with none set, a random admin token is generated "
                    "for this run and printed with the dashboard URL.")
    p.add_argument("--host", help="bind address (default: LIFTSTREAM_API_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: LIFTSTREAM_API_PORT, 8000)")
    p.add_argument("--insecure", action="store_true",
                   help="no authentication at all: every caller is admin (only behind an "
                        "authenticating proxy)")
    p.add_argument("--lag-interval", type=float, default=5.0,
                   help="seconds between consumer-lag measurements (5)")
    p.add_argument("--no-lag", action="store_true", help="do not measure consumer lag")
    p.add_argument("--no-history", action="store_true",
                   help="do not record result history from this process (the alerter and "
                        "other replicas still do)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(handler=_serve)
