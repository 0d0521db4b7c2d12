"""``liftstream offsets``: stored offsets against the Kafka log; accept a gap with ``reset``.

* ``liftstream offsets show``: per partition and topic the offset stored in Redis, the log's
  range and whether it lies outside (plus the partition's ``offsets_*`` warnings).
* ``liftstream offsets reset [--partition P]... [--force]``: the operator's explicit
  acceptance that records were lost (broker or topic reset, retention): the stored offsets
  found (now or by a worker) outside the log move to its beginning, the gap is recorded as the
  warning ``offsets_reset``. Running workers notice it and seek without a restart. In-range
  offsets are kept unless ``--force`` (which re-reads the log: events without an ``id``
  count twice).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stream.kafka import LogRange

__all__ = ["add_offsets_parser"]


def _context() -> tuple[Any, Any, list[str], int]:
    from state.store import PartitionStore, connect, partition_count
    from workers.settings import load_settings

    settings = load_settings()
    client = connect(settings.redis_url, settings.redis_cluster)
    n = partition_count(client)
    return settings, PartitionStore(client), [settings.topic_exposures,
                                              settings.topic_events], n


def _ranges(settings: Any, topics: list[str], partitions: list[int]
            ) -> dict[tuple[str, int], LogRange]:
    from stream.kafka import log_ranges

    return log_ranges(settings.kafka_bootstrap, [(t, p) for p in partitions for t in topics],
                      timeout_s=10.0, **settings.kafka_options())


def _partitions(args: argparse.Namespace, n: int) -> list[int]:
    wanted = sorted(set(args.partition)) if args.partition else list(range(n))
    bad = [p for p in wanted if not 0 <= p < n]
    if bad:
        raise ValueError(f"--partition {bad[0]}: the topics have partitions 0..{n - 1}")
    return wanted


def _show(args: argparse.Namespace) -> int:
    from stream.offsets import out_of_range

    settings, store, topics, n = _context()
    if not n:
        print("no partition count in Redis yet (no worker has started)")
        return 0
    parts = _partitions(args, n)
    ranges = _ranges(settings, topics, parts)
    for p in parts:
        stored = store.stored_offsets(p)
        bad = {f.topic for f in out_of_range(p, stored, ranges)}
        for t in topics:
            rng = ranges.get((t, p))
            log = f"{rng.begin}..{rng.end}" if rng else "unknown"
            state = "OUTSIDE THE LOG" if t in bad else "ok"
            print(f"{t}\t{p}\tstored {stored.get(t, '-')}\tlog {log}\t{state}")
        for code, detail in sorted(store.partition_flags(p).items()):
            if code.startswith("offsets_"):
                print(f"  partition {p} {code}: {detail}")
    return 0


def _reset(args: argparse.Namespace) -> int:
    from stream.offsets import reset_partition

    settings, store, topics, n = _context()
    if not n:
        print("liftstream offsets reset: error: no partition count in Redis yet",
              file=sys.stderr)
        return 2
    if args.force and not args.partition:
        raise ValueError("--force needs --partition P: it re-reads that partition's log")
    parts = _partitions(args, n)
    ranges = _ranges(settings, topics, parts)
    changed = 0
    for p in parts:
        result = reset_partition(store, p, topics, ranges, by="liftstream offsets reset",
                                 force=args.force)
        if result.changed or result.detail:
            changed += 1
            for topic, old, new in result.moves:
                print(f"{topic}\t{p}\tstored {old} -> {new}")
            if not result.moves:
                print(f"partition {p}: warning cleared, offsets kept (inside the log)")
    if not changed:
        print("nothing to reset: every stored offset lies inside its log "
              "(use --partition P --force to re-read a partition from its beginning)")
    return 0


def _run(args: argparse.Namespace) -> int:
    from workers.cli.prologue import guarded

    handler = _show if args.offsets_command == "show" else _reset
    return guarded(f"offsets {args.offsets_command}", lambda: handler(args),
                   usage_errors=(ValueError, LookupError, RuntimeError))


def add_offsets_parser(sub: Any) -> None:
    p = sub.add_parser("offsets", help="stored offsets against the Kafka log; accept a gap")
    osub = p.add_subparsers(dest="offsets_command", required=True)
    for name, text in (("show", "stored offsets, log ranges and offset warnings"),
                       ("reset", "move stored offsets outside the log to its beginning")):
        q = osub.add_parser(name, help=text)
        q.add_argument("--partition", type=int, action="append", default=[],
                       help="only this partition (repeatable; default: all)")
        if name == "reset":
            q.add_argument("--force", action="store_true",
                           help="also move offsets inside the log (re-reads the partition)")
        q.set_defaults(handler=_run)
