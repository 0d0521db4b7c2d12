"""Result snapshots over the whole experiment, at tiered resolution (downsampling by selection).

A snapshot keeps, per metric × treatment × estimator, the effect, its CI and its
anytime-valid CI (rounded to 7 significant digits), plus the arm sizes and the SRM p-values.
It is recorded at most once per interval (``LIFTSTREAM_ALERT_INTERVAL_SECONDS``, default
10 s) by whichever process claims the interval first: every ``liftstream api`` replica and
the alerter try (:func:`claim`, then :func:`record`).

**Tiers** (:func:`tiers`, default interval 10 s):

======  ==============  =========================================================
 tier    resolution      covers
======  ==============  =========================================================
 0       the interval    the last hour
 1       1 min           the last day
 2       10 min          the last week
 3       1 h             since the first snapshot; past :data:`COARSE_MAX_POINTS`
                         hours (90 days) it coarsens to 2 h, 4 h, … so it never holds
                         more than that many points
======  ==============  =========================================================

A tier keeps, of every bucket ``floor(t / resolution)`` in its span, the snapshot whose time
falls *first* in that bucket. Nothing is interpolated or averaged: every point is a snapshot
recorded at its time. The buckets nest (1 min | 10 min | 1 h | 2ᵏ h), so the first snapshot
of a coarse bucket is also first in every finer one: a snapshot has a *level*, the coarsest
tier it belongs to (:func:`level_of`), is stored once, in that level's sorted set, and is
dropped when older than its level's span. The history served is the union of all levels
(:func:`expected_times` states the rule as a definition; a test compares both).

Redis part (keys in :mod:`state.keys`, one hash tag per experiment, so Cluster-safe):
``history_claim.lua`` moves the experiment's last claimed interval number forward or refuses
(so each interval is recorded once, and never an older one after a newer one);
``history_record.lua`` stores the snapshot (zlib-compressed JSON) at its level and trims the
levels, with a compare-and-set on the last recorded time. The rule itself is computed here.

Bound (10 s interval): at most 361 + 1,441 + 1,009 + 2,161 = 4,972 points
(:func:`point_bound`); a 30-day experiment holds 3,157 (BENCHMARKS.md has the bytes).

>>> doc = {"slices": [{"variations": [{"name": "a", "n": 3}, {"name": "b", "n": 4}],
...        "srm": {"p_value": 0.5, "sequential_p_value": 1.0}, "metrics": [{"metric": "m",
...        "comparisons": [{"treatment": "b", "primary": "diff", "estimators": {"diff": {
...        "effect": 1.0, "ci_low": 0.5, "ci_high": 1.5, "seq_ci_low": 0.1,
...        "seq_ci_high": 1.9}}}]}]}]}
>>> snap = snapshot(doc, 10.0)
>>> series([snap, snapshot(doc, 20.0)])[0]["effect"]
[1.0, 1.0]
>>> [(t.resolution, t.span) for t in tiers(10.0)]
[(10.0, 3600.0), (60.0, 86400.0), (600.0, 604800.0), (3600.0, None)]
>>> level_of(tiers(10.0), 120.0, 110.0, 0.0), level_of(tiers(10.0), 3600.0, 3590.0, 0.0)
(1, 3)
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import msgspec

from estimators import document
from state import keys
from state.store import Client

__all__ = ["COARSE_MAX_POINTS", "LEVELS", "MAX_POINTS", "VALUES", "Claim", "Tier", "claim",
           "coarse_resolution", "coarsening", "decode_snapshot", "delete", "encode_snapshot",
           "expected_times", "first_per_bucket", "level_of", "point_bound", "read", "record",
           "record_due", "series", "snapshot", "stored_bytes", "thin_evenly", "tiers"]

HOUR, DAY, WEEK = 3600.0, 86400.0, 604800.0
#: (resolution, span) of the tiers after the finest one; ``None``: since the first snapshot.
BASE_TIERS: tuple[tuple[float, float | None], ...] = ((60.0, DAY), (600.0, WEEK), (HOUR, None))
#: The last tier coarsens (doubling its resolution) rather than exceed this many points.
COARSE_MAX_POINTS = 2160
#: Largest number of points the API serves (and accepts for ``limit`` / ``max_points``).
MAX_POINTS = 10_000
#: Number of tiers (levels), whatever the interval.
LEVELS = 1 + len(BASE_TIERS)
#: Per estimator, in this order, in every snapshot.
VALUES = ("effect", "ci_low", "ci_high", "seq_ci_low", "seq_ci_high")


# --------------------------------------------------------------------------- the tiering rule


@dataclass(frozen=True)
class Tier:
    """Keep the first snapshot of every ``resolution``-second bucket of the last ``span``."""

    resolution: float
    span: float | None  # None: since the first snapshot


def tiers(interval: float) -> tuple[Tier, ...]:
    """The four tiers for a recording ``interval``: the interval over the last hour, then
    :data:`BASE_TIERS`, none finer than the interval (every snapshot is first in such a
    tier, so the buckets still nest). Always four: level ``i`` means the same tier whatever
    the interval."""
    return tuple(Tier(max(res, interval), span)
                 for res, span in ((interval, HOUR), *BASE_TIERS))


def coarse_resolution(base: float, first: float, now: float,
                      max_points: int = COARSE_MAX_POINTS) -> float:
    """The last tier's resolution at ``now``: ``base · 2ᵏ``, the smallest with at most
    ``max_points`` buckets since ``first``."""
    res = base
    while (now - first) / res > max_points:
        res *= 2.0
    return res


def resolutions(ts: Sequence[Tier], first: float, now: float,
                max_points: int = COARSE_MAX_POINTS) -> list[float]:
    """Each tier's resolution at ``now`` (only the last one changes over time)."""
    out = [t.resolution for t in ts]
    out[-1] = coarse_resolution(out[-1], first, now, max_points)
    return out


def _bucket(t: float, res: float) -> int:
    return math.floor(t / res)


def level_of(ts: Sequence[Tier], t: float, prev: float | None, first: float | None,
             max_points: int = COARSE_MAX_POINTS) -> int:
    """The coarsest tier in which a snapshot at ``t`` is first in its bucket, given the
    previous snapshot's time ``prev`` (``None``: ``t`` is the first: every tier)."""
    if prev is None or first is None:
        return len(ts) - 1
    res = resolutions(ts, first, t, max_points)
    level = 0
    for i in range(1, len(ts)):
        if _bucket(t, res[i]) <= _bucket(prev, res[i]):
            break  # buckets nest: not first at i means not first at any coarser tier
        level = i
    return level


def first_per_bucket(times: Sequence[float], resolution: float, origin: float = 0.0
                     ) -> list[int]:
    """Indexes of the ``times`` (ascending) that fall first in their bucket
    ``floor((t - origin) / resolution)``."""
    out: list[int] = []
    last: int | None = None
    for i, t in enumerate(times):
        b = math.floor((t - origin) / resolution)
        if last is None or b > last:
            out.append(i)
            last = b
    return out


def expected_times(ts: Sequence[Tier], times: Sequence[float], now: float,
                   max_points: int = COARSE_MAX_POINTS) -> list[float]:
    """The rule as a definition: of every snapshot time recorded (ascending), those that are
    first in their bucket of some tier whose span still covers them at ``now``."""
    if not times:
        return []
    res = resolutions(ts, times[0], now, max_points)
    keep: set[int] = set()
    for tier, r in zip(ts, res, strict=True):
        for i in first_per_bucket(times, r):
            if tier.span is None or now - times[i] < tier.span:
                keep.add(i)
    return [times[i] for i in sorted(keep)]


def point_bound(ts: Sequence[Tier], max_points: int = COARSE_MAX_POINTS) -> int:
    """Most points an experiment's history ever holds."""
    return sum(max_points + 1 if t.span is None else math.ceil(t.span / t.resolution) + 1
               for t in ts)


def thin_evenly(times: Sequence[float], max_points: int) -> list[int]:
    """Indexes of at most ``max_points`` of ``times`` (ascending), evenly in *time*: the first
    of each of ``max_points - 1`` equal buckets between the oldest and the newest, plus the
    newest."""
    if len(times) <= max_points:
        return list(range(len(times)))
    width = (times[-1] - times[0]) / (max_points - 1)
    if width <= 0:
        return [len(times) - 1]
    body = first_per_bucket(times[:-1], width, times[0])
    return [i for i in body if math.floor((times[i] - times[0]) / width) < max_points - 1] \
        + [len(times) - 1]


# --------------------------------------------------------------------------- snapshots


def _round(x: Any) -> float | None:
    if not isinstance(x, int | float) or isinstance(x, bool) or not math.isfinite(x):
        return None
    return float(f"{float(x):.7g}")


def snapshot(doc: Mapping[str, Any] | document.ResultDocument, ts: float) -> dict[str, Any]:
    """The compact snapshot of a result document (first slice) taken at ``ts``."""
    sl = document.parse(doc).first
    comps = []
    for m in sl.metrics:
        for c in m.comparisons:
            est = {name: [_round(getattr(e, k)) for k in VALUES]
                   for name, e in c.estimators.items()}
            comps.append([m.metric, c.treatment, c.primary, est])
    srm = sl.srm or document.Srm()
    return {"ts": ts, "n": {v.name: v.n for v in sl.variations},
            "srm_p": _round(srm.p_value), "srm_seq_p": _round(srm.sequential_p_value),
            "c": comps}


def series(snaps: Sequence[Mapping[str, Any]], metric: str | None = None,
           treatment: str | None = None, estimator: str | None = None
           ) -> list[dict[str, Any]]:
    """Snapshots turned into one time series per metric × treatment × estimator.

    Each series has ``ts`` (snapshot times), ``n`` (total units) and one list per name in
    :data:`VALUES`; ``primary`` says whether the estimator is its comparison's recommended one
    in the newest snapshot.
    """
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for s in snaps:
        total = sum(int(v) for v in s.get("n", {}).values())
        for m, t, primary, est in s["c"]:
            if (metric is not None and m != metric) or (treatment is not None and t != treatment):
                continue
            for name, values in est.items():
                if estimator is not None and name != estimator:
                    continue
                row = out.get((m, t, name))
                if row is None:
                    row = {"metric": m, "treatment": t, "estimator": name, "primary": False,
                           "ts": [], "n": [], **{k: [] for k in VALUES}}
                    out[(m, t, name)] = row
                row["primary"] = primary == name
                row["ts"].append(s["ts"])
                row["n"].append(total)
                for k, v in zip(VALUES, values, strict=True):
                    row[k].append(v)
    return list(out.values())


# --------------------------------------------------------------------------- Redis

_ENCODE = msgspec.json.Encoder()
_DECODE = msgspec.json.Decoder()


def encode_snapshot(snap: Mapping[str, Any]) -> bytes:
    """A snapshot as stored: zlib-compressed JSON (about a third of the JSON)."""
    return zlib.compress(_ENCODE.encode(snap), 6)


def decode_snapshot(blob: bytes) -> dict[str, Any]:
    out: dict[str, Any] = _DECODE.decode(zlib.decompress(blob))
    return out

_SCRIPT_TEXT: dict[str, str] = {}


def _script(client: Client, name: str) -> Any:
    """A Lua script of this package bound to ``client`` (EVALSHA, loaded on first use)."""
    if name not in _SCRIPT_TEXT:
        _SCRIPT_TEXT[name] = resources.files("state").joinpath(name).read_text()
    return client.register_script(_SCRIPT_TEXT[name])


def _level_keys(experiment: str, n: int) -> list[str]:
    return [keys.history_level(experiment, i) for i in range(n)]


@dataclass(frozen=True)
class Claim:
    """An interval claimed for recording: what :func:`record` needs to place the snapshot."""

    experiment: str
    ts: float
    prev_raw: bytes  # the stored last time as stored (compare-and-set), b"" if none
    prev: float | None
    first: float | None


def claim(client: Client, experiment: str, ts: float, interval: float) -> Claim | None:
    """Claim the interval ``floor(ts / interval)``; ``None`` if it (or a later one) was
    claimed already, by this or another process."""
    got = _script(client, "history_claim.lua")(keys=[keys.history_meta(experiment)],
                                               args=[math.floor(ts / interval)])
    if got is None:
        return None
    prev_raw, first_raw = got
    return Claim(experiment, ts, prev_raw or b"", float(prev_raw) if prev_raw else None,
                 float(first_raw) if first_raw else None)


def record(client: Client, c: Claim, snap: Mapping[str, Any], interval: float,
           max_points: int = COARSE_MAX_POINTS) -> bool:
    """Store ``snap`` (taken at ``c.ts``) at its level and trim every level to its span;
    ``False`` if another recorder wrote in between (the snapshot is then dropped)."""
    ts_ = tiers(interval)
    t = c.ts
    if c.prev is not None and t <= c.prev:
        return False
    level = level_of(ts_, t, c.prev, c.first, max_points)
    removes: list[tuple[int, bytes]] = []
    adds: list[tuple[int, float, bytes]] = []
    if c.prev is not None and c.first is not None:
        removes, adds = _coarsening(client, c, ts_, max_points)
    args: list[Any] = [c.prev_raw, repr(float(t)), level, encode_snapshot(snap)]
    args.append(len(removes))
    for lvl, member in removes:
        args += [lvl, member]
    args.append(len(adds))
    for lvl, score, member in adds:
        args += [lvl, repr(score), member]
    trims = [(i, t - tier.span) for i, tier in enumerate(ts_) if tier.span is not None]
    args.append(len(trims))
    for lvl, cutoff in trims:
        args += [lvl, repr(cutoff)]
    done = _script(client, "history_record.lua")(
        keys=[keys.history_meta(c.experiment), *_level_keys(c.experiment, len(ts_))], args=args)
    return int(done) == 1


def coarsening(ts_: Sequence[Tier], scores: Sequence[float], first: float, prev: float,
               now: float, max_points: int = COARSE_MAX_POINTS) -> tuple[list[int], list[int]]:
    """When the last tier's resolution doubles between ``prev`` and ``now``: which of its
    members (``scores``, ascending) leave it (first list) and, of those, which move one level
    down because that level's span still covers them (second list)."""
    last = len(ts_) - 1
    old = coarse_resolution(ts_[last].resolution, first, prev, max_points)
    new = coarse_resolution(ts_[last].resolution, first, now, max_points)
    if new == old:
        return [], []
    keep = set(first_per_bucket(scores, new))
    gone = [i for i in range(len(scores)) if i not in keep]
    span = ts_[last - 1].span if last > 0 else None
    moved = [i for i in gone if span is not None and now - scores[i] < span]
    return gone, moved


def _coarsening(client: Client, c: Claim, ts_: Sequence[Tier], max_points: int
                ) -> tuple[list[tuple[int, bytes]], list[tuple[int, float, bytes]]]:
    """:func:`coarsening` applied to the stored last level (read only when it coarsens)."""
    assert c.prev is not None and c.first is not None
    last = len(ts_) - 1
    base = ts_[last].resolution
    if coarse_resolution(base, c.first, c.prev, max_points) == \
            coarse_resolution(base, c.first, c.ts, max_points):
        return [], []
    raw: Any = client.zrange(keys.history_level(c.experiment, last), 0, -1, withscores=True)
    members = [(float(score), bytes(m)) for m, score in raw]
    gone, moved = coarsening(ts_, [sc for sc, _ in members], c.first, c.prev, c.ts, max_points)
    return ([(last, members[i][1]) for i in gone],
            [(last - 1, members[i][0], members[i][1]) for i in moved])


def record_due(client: Client, experiment: str, now: float, interval: float,
               compute: Callable[[], Mapping[str, Any]]) -> dict[str, Any] | None:
    """Claim this interval and, if won, compute the result document and record its snapshot
    (the snapshot, or ``None`` when another process has this interval)."""
    c = claim(client, experiment, now, interval)
    if c is None:
        return None
    snap = snapshot(compute(), now)
    return snap if record(client, c, snap, interval) else None


def read(client: Client, experiment: str, limit: int | None = None,
         max_points: int | None = None) -> list[dict[str, Any]]:
    """The newest ``limit`` snapshots (all when ``None``) over every level, oldest first,
    thinned evenly in time to ``max_points`` (:func:`thin_evenly`) before decoding."""
    pipe = client.pipeline(transaction=False)
    for k in _level_keys(experiment, LEVELS):
        pipe.zrange(k, 0, -1, withscores=True)
    stored = sorted(((float(score), m) for raw in pipe.execute() for m, score in raw),
                    key=lambda x: x[0])
    if limit is not None:
        stored = stored[-max(1, limit):]
    if max_points is not None:
        stored = [stored[i] for i in thin_evenly([t for t, _ in stored], max_points)]
    return [decode_snapshot(m) for _, m in stored]


def oldest(client: Client, experiment: str) -> dict[str, Any] | None:
    """The oldest stored snapshot of the experiment (over every level), or ``None``."""
    pipe = client.pipeline(transaction=False)
    for k in _level_keys(experiment, LEVELS):
        pipe.zrange(k, 0, 0, withscores=True)
    firsts = [(float(score), m) for raw in pipe.execute() for m, score in raw]
    return decode_snapshot(min(firsts, key=lambda x: x[0])[1]) if firsts else None


def delete(client: Client, experiment: str) -> None:
    """Forget the experiment's history."""
    for k in [keys.history_meta(experiment), *_level_keys(experiment, LEVELS)]:
        client.delete(k)


def stored_bytes(client: Client, experiment: str) -> int:
    """Redis memory of the experiment's history keys (``MEMORY USAGE``, all samples)."""
    total = 0
    for k in [keys.history_meta(experiment), *_level_keys(experiment, LEVELS)]:
        got = client.memory_usage(k, samples=0)
        total += int(got or 0)
    return total
