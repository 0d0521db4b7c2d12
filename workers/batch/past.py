"""Past results for ``analyze --prior empirical --past FILE`` (finished-experiment records).

Accepted files:

* ``.json``: a list of records as the finished-experiments store keeps them
  (``{"experiment", "stopped_at", "metrics": {name: [{"rel_effect", "rel_se", …}]}}``), or an
  object ``{"experiments": [...]}`` of them;
* ``.csv``: one row per experiment × metric (× treatment) with columns ``experiment``,
  ``metric``, ``rel_effect``, ``rel_se`` (optional ``stopped_at``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec
import pandas as pd

from workers.batch.columns import InputError

CSV_COLUMNS = ("experiment", "metric", "rel_effect", "rel_se")


def load_past(path: str) -> list[dict[str, Any]]:
    """Finished-experiment records from ``path``; :class:`InputError` naming what to fix."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--past: file not found: {path}")
    if p.suffix.lower() == ".csv":
        return _from_csv(path)
    try:
        data = msgspec.json.decode(p.read_bytes())
    except msgspec.DecodeError as exc:
        raise InputError(f"--past {path}: not valid JSON ({exc})") from None
    if isinstance(data, dict):
        data = data.get("experiments")
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise InputError(f"--past {path}: expected a list of records (or "
                         f"{{\"experiments\": [...]}}), see docs/statistics.md")
    for i, r in enumerate(data):
        if "experiment" not in r or not isinstance(r.get("metrics"), dict):
            raise InputError(f"--past {path}: record {i} needs 'experiment' and a 'metrics' "
                             f"mapping")
    return data


def _from_csv(path: str) -> list[dict[str, Any]]:
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"--past {path}: cannot read as CSV: {exc}") from None
    missing = [c for c in CSV_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"--past {path}: column {missing[0]!r} missing (need "
                         f"{', '.join(CSV_COLUMNS)})")
    recs: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(frame.itertuples(index=False)):
        d = row._asdict()
        try:
            y, s = float(d["rel_effect"]), float(d["rel_se"])
        except (TypeError, ValueError):
            raise InputError(f"--past {path}: data row {i + 1}: rel_effect and rel_se must "
                             f"be numbers") from None
        if not (math.isfinite(y) and math.isfinite(s) and s > 0):
            raise InputError(f"--past {path}: data row {i + 1}: need finite rel_effect and "
                             f"rel_se > 0")
        rec = recs.setdefault(str(d["experiment"]), {
            "experiment": str(d["experiment"]), "stopped_at": d.get("stopped_at"),
            "metrics": {}})
        rec["metrics"].setdefault(str(d["metric"]), []).append(
            {"rel_effect": y, "rel_se": s})
    return list(recs.values())
