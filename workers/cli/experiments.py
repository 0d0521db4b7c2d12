"""``liftstream experiments …``: create, list, show and stop experiment definitions in Redis.

Exit status: 0 on success, 1 when the experiment is missing/exists or Redis fails, 2 for an
invalid definition or invalid settings (message ``liftstream experiments: error: …``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis
import redis.cluster
from redis.exceptions import RedisClusterException

from state.definition import DefinitionError, ExperimentDef, load_definition, parse_definition_text
from state.registry import ExperimentExists, Registry
from workers.cli.output import aligned, write_json
from workers.cli.prologue import CommandError, guarded
from workers.settings import Settings, load_settings

__all__ = ["add_experiments_parser", "connect"]

Handler = Callable[[argparse.Namespace], int]


def connect(settings: Settings) -> redis.Redis | redis.cluster.RedisCluster:
    """A Redis (or Redis Cluster) client for ``settings.redis_url``."""
    if settings.redis_cluster:
        return redis.cluster.RedisCluster.from_url(settings.redis_url)
    return redis.Redis.from_url(settings.redis_url)


@contextmanager
def _registry() -> Iterator[Registry]:
    settings = load_settings()  # SettingsError: exit 2 (workers.cli.prologue)
    try:
        client = connect(settings)
    except (redis.RedisError, RedisClusterException, ValueError) as exc:
        raise CommandError(f"cannot connect to Redis at {settings.redacted()['redis_url']}: {exc}",
                       1) from None
    try:
        yield Registry(client)
    except (redis.RedisError, RedisClusterException) as exc:
        raise CommandError(f"Redis at {settings.redacted()['redis_url']}: {exc}", 1) from None
    except DefinitionError as exc:
        raise CommandError(f"a stored definition is invalid: {exc}", 1) from None
    finally:
        client.close()


def _run(body: Callable[[argparse.Namespace], int]) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        return guarded("experiments", lambda: body(args))

    return handler


def _read(path: str) -> ExperimentDef:
    """The definition in file ``path`` (``-``: YAML or JSON on stdin), within the limits of
    the settings (``LIFTSTREAM_MAX_*``)."""
    limits = load_settings().definition_limits()
    try:
        if path == "-":
            cap = limits.max_definition_bytes + 1  # one byte more says "too large"
            stdin: Any = sys.stdin
            text = (stdin.buffer.read(cap) if hasattr(stdin, "buffer")
                    else stdin.read(cap).encode())
            return parse_definition_text(text, "yaml", "-", limits)  # JSON is YAML too
        return load_definition(path, limits)
    except DefinitionError as exc:
        raise CommandError(str(exc), 2) from None


def _create(args: argparse.Namespace) -> int:
    d = _read(args.file)
    with _registry() as reg:
        try:
            reg.create(d, replace=args.replace)
        except ExperimentExists:
            raise CommandError(f"experiment {d.id!r} already exists (use --replace to overwrite)",
                           1) from None
        version = reg.version()
    print(f"{'replaced' if args.replace else 'created'} experiment {d.id} "
          f"(registry version {version})")
    return 0


def _time(ts: float | None) -> str:
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _list(args: argparse.Namespace) -> int:
    with _registry() as reg:
        defs = reg.list()
    if args.format == "json":
        write_json([d.to_dict() for d in defs], indent=2)
        return 0
    if not defs:
        print("no experiments")
        return 0
    rows = [["ID", "STATUS", "VARIATIONS", "METRICS", "START (UTC)", "END (UTC)"]]
    for d in defs:
        rows.append([d.id, d.status, ", ".join(d.variations), ", ".join(d.metric_names()),
                     _time(d.start), _time(d.end)])
    sys.stdout.write(aligned(rows))
    return 0


def _show(args: argparse.Namespace) -> int:
    with _registry() as reg:
        d = reg.get(args.id)
    if d is None:
        raise CommandError(f"no experiment {args.id!r}", 1)
    sys.stdout.buffer.write(msgspec.json.format(d.to_json(), indent=2) + b"\n")
    return 0


def _stop(args: argparse.Namespace) -> int:
    with _registry() as reg:
        try:
            reg.stop(args.id)
        except KeyError:
            raise CommandError(f"no experiment {args.id!r}", 1) from None
    print(f"stopped experiment {args.id}")
    return 0


def add_experiments_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``experiments create|list|show|stop`` to the ``liftstream`` sub-commands."""
    p = sub.add_parser("experiments", help="manage experiment definitions in the registry",
                       description="Create, list, show and stop experiments (stored in Redis; "
                                   "connection from LIFTSTREAM_REDIS_URL).")
    cmds = p.add_subparsers(dest="experiments_command", required=True, metavar="COMMAND")

    c = cmds.add_parser("create", help="validate and store a definition (.yaml/.yml/.json)")
    c.add_argument("file", metavar="FILE", help="definition file, or - for YAML on stdin")
    c.add_argument("--replace", action="store_true", help="overwrite an existing experiment")
    c.set_defaults(handler=_run(_create))

    c = cmds.add_parser("list", help="list experiments")
    c.add_argument("--format", choices=["table", "json"], default="table")
    c.set_defaults(handler=_run(_list))

    c = cmds.add_parser("show", help="print one definition as JSON")
    c.add_argument("id", metavar="ID")
    c.set_defaults(handler=_run(_show))

    c = cmds.add_parser("stop", help="mark an experiment stopped")
    c.add_argument("id", metavar="ID")
    c.set_defaults(handler=_run(_stop))
