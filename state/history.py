"""Result snapshots over time: what the alerter records and the API's history endpoint serves.

A snapshot keeps, per metric × treatment × estimator, the effect, its CI and its
anytime-valid CI (rounded to 7 significant digits), plus the arm sizes and the SRM p-values.
Snapshots of one experiment live in one Redis list (:func:`state.keys.history`), oldest first,
trimmed to :data:`HISTORY_LIMIT` entries (2,880 = 8 hours at the default 10 s interval).

>>> doc = {"slices": [{"variations": [{"name": "a", "n": 3}, {"name": "b", "n": 4}],
...        "srm": {"p_value": 0.5, "sequential_p_value": 1.0}, "metrics": [{"metric": "m",
...        "comparisons": [{"treatment": "b", "primary": "diff", "estimators": {"diff": {
...        "effect": 1.0, "ci_low": 0.5, "ci_high": 1.5, "seq_ci_low": 0.1,
...        "seq_ci_high": 1.9}}}]}]}]}
>>> snap = snapshot(doc, 10.0)
>>> series([snap, snapshot(doc, 20.0)])[0]["effect"]
[1.0, 1.0]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from state import keys
from state.store import Client

HISTORY_LIMIT = 2880
#: Per estimator, in this order, in every snapshot.
VALUES = ("effect", "ci_low", "ci_high", "seq_ci_low", "seq_ci_high")


def _round(x: Any) -> float | None:
    if not isinstance(x, int | float) or isinstance(x, bool) or not math.isfinite(x):
        return None
    return float(f"{float(x):.7g}")


def snapshot(doc: Mapping[str, Any], ts: float) -> dict[str, Any]:
    """The compact snapshot of a result document (first slice) taken at ``ts``."""
    sl = doc["slices"][0]
    comps = []
    for m in sl["metrics"]:
        for c in m["comparisons"]:
            est = {name: [_round(e.get(k)) for k in VALUES]
                   for name, e in c["estimators"].items()}
            comps.append([m["metric"], c["treatment"], c.get("primary"), est])
    srm = sl.get("srm") or {}
    return {"ts": ts, "n": {v["name"]: v["n"] for v in sl["variations"]},
            "srm_p": _round(srm.get("p_value")), "srm_seq_p": _round(srm.get("sequential_p_value")),
            "c": comps}


def append(client: Client, experiment: str, snap: Mapping[str, Any],
           limit: int = HISTORY_LIMIT) -> None:
    """Add ``snap`` at the end of the experiment's history and drop what exceeds ``limit``."""
    key = keys.history(experiment)
    pipe = client.pipeline(transaction=False)
    pipe.rpush(key, msgspec.json.encode(snap))
    pipe.ltrim(key, -limit, -1)
    pipe.execute()


def read(client: Client, experiment: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The newest ``limit`` snapshots (all when ``None``), oldest first."""
    start = 0 if limit is None else -max(1, limit)
    raw: Any = client.lrange(keys.history(experiment), start, -1)
    return [msgspec.json.decode(r) for r in raw]


def delete(client: Client, experiment: str) -> None:
    """Forget the experiment's history."""
    client.delete(keys.history(experiment))


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


def experiments_with_history(client: Client, experiments: Iterable[str]) -> dict[str, int]:
    """Number of stored snapshots of each experiment."""
    names = list(experiments)
    pipe = client.pipeline(transaction=False)
    for e in names:
        pipe.llen(keys.history(e))
    return {e: int(n) for e, n in zip(names, pipe.execute(), strict=True)}
