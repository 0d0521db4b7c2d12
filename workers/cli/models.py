"""``liftstream models``: every online model's version, quality, and what it buys in results.

Per model id: latest version, kind, examples learned, progressive-validation quality (R² —
cumulative and recent —, log-loss for ``logistic``, MAE), age, signature check (with
``LIFTSTREAM_MODEL_HMAC_KEY`` set), the training-topic offsets in the snapshot; and, when the
id names a metric of a registered experiment, what the frozen predictions achieve there per
treatment: the prediction–outcome correlation and cupac's variance reduction against
``diff`` (Tang et al. 2020, CUPAC; Guo et al. 2021, MLRATE).
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import msgspec

from estimators import document
from state import keys
from state.definition import ExperimentDef
from state.models import ModelRegistry, SignatureError, SnapshotHeader
from state.naming import resolve_model_id
from state.registry import Registry
from state.store import Client
from workers.cli.output import aligned, write_as
from workers.settings import Settings

__all__ = ["add_models_parser", "model_rows", "render_models"]


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _header(client: Client, model_id: str, version: int) -> SnapshotHeader | None:
    blob: Any = client.hget(keys.model(model_id), keys.model_version(version))
    if blob is None:
        return None
    try:
        env = msgspec.msgpack.decode(blob)
        return msgspec.convert(env["header"], SnapshotHeader)
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError, TypeError):
        return None


def _split(model_id: str, definitions: dict[str, ExperimentDef]) -> tuple[str, str] | None:
    return resolve_model_id(model_id, definitions)


def _in_results(client: Client, d: ExperimentDef, metric: str,
                cache: dict[str, document.ResultDocument]) -> list[dict[str, Any]]:
    from state.results import experiment_document

    if d.id not in cache:
        cache[d.id] = document.parse(experiment_document(client, d))
    out = []
    m = cache[d.id].first.metric(metric)
    for c in m.comparisons if m is not None else []:
        cupac = c.estimators.get("cupac")
        out.append({"treatment": c.treatment,
                    "prediction_outcome_correlation":
                        (c.diagnostics or {}).get("prediction_outcome_correlation"),
                    "cupac_variance_reduction": None if cupac is None
                    else cupac.variance_reduction,
                    "cupac_note": None if cupac is None else cupac.note})
    return out


def model_rows(client: Client, hmac_key: str | None = None, results: bool = True
               ) -> list[dict[str, Any]]:
    """One JSON-ready row per model id in the registry (sorted)."""
    raw: Any = client.smembers(keys.MODEL_INDEX)
    ids = sorted(_text(r) for r in raw)
    registry = ModelRegistry(client, hmac_key) if hmac_key else None
    definitions = {d.id: d for d in Registry(client).list()} if results else {}
    cache: dict[str, document.ResultDocument] = {}
    now = time.time()
    rows = []
    for model_id in ids:
        latest = int(_text(client.hget(keys.model(model_id), keys.MODEL_LATEST) or b"0"))
        header = _header(client, model_id, latest)
        row: dict[str, Any] = {"model": model_id, "version": latest}
        if header is None:
            row["signature"] = "unreadable"
            rows.append(row)
            continue
        metrics = {k: (v if math.isfinite(v) else None) for k, v in header.metrics.items()}
        row.update({"kind": header.kind, "examples": header.examples,
                    "r2": metrics.get("r2"), "r2_recent": metrics.get("r2_recent"),
                    "log_loss": metrics.get("log_loss"), "mae": metrics.get("mae"),
                    "duplicates": metrics.get("duplicates"),
                    "age_seconds": round(now - header.created, 1),
                    "offsets": dict(header.offsets)})
        if registry is None:
            row["signature"] = "unverified (no LIFTSTREAM_MODEL_HMAC_KEY)"
        else:
            try:
                registry.load(model_id, latest)
                row["signature"] = "ok"
            except SignatureError as exc:
                row["signature"] = f"REFUSED: {exc}"
        target = _split(model_id, definitions)
        if target is not None:
            row["experiment"], row["metric"] = target
            row["results"] = _in_results(client, definitions[target[0]], target[1], cache)
        rows.append(row)
    return rows


def _num(x: Any, fmt: str = ".4g") -> str:
    return "—" if x is None else format(x, fmt)


def _pct(x: Any) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def render_models(rows: list[dict[str, Any]]) -> str:
    """A plain-text table (one line per model × treatment)."""
    head = ("model", "v", "kind", "examples", "R²", "R² recent", "log-loss", "MAE", "age",
            "signature", "treatment", "corr(ŷ,y)", "cupac var.red.")
    table = [head]
    for r in rows:
        base = (r["model"], str(r["version"]), r.get("kind") or "—",
                str(r.get("examples", "—")), _num(r.get("r2"), ".3f"),
                _num(r.get("r2_recent"), ".3f"), _num(r.get("log_loss"), ".4f"),
                _num(r.get("mae")), f"{r['age_seconds']:.0f}s" if "age_seconds" in r else "—",
                r["signature"][:40])
        res = r.get("results") or [{}]
        for c in res:
            table.append((*base, c.get("treatment", "—"),
                          _num(c.get("prediction_outcome_correlation"), ".3f"),
                          _pct(c.get("cupac_variance_reduction"))))
    if len(table) == 1:
        return "no models yet (start `liftstream learner`)\n"
    return aligned(table)


def _models_command(args: argparse.Namespace) -> int:
    from workers.cli.prologue import run

    return run("models", lambda settings: _models_with(args, settings))


def _models_with(args: argparse.Namespace, settings: Settings) -> int:
    from state.store import connect

    client = connect(settings.redis_url, settings.redis_cluster)
    try:
        rows = model_rows(client, settings.model_hmac_key, results=not args.no_results)
    finally:
        client.close()
    return write_as(args.format, rows, render_models)


def add_models_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the ``models`` sub-command to a sub-parser collection."""
    p = sub.add_parser("models", help="online models: version, quality, effect in results",
                       description="List every online model snapshot: version, kind, examples, "
                                   "progressive R²/log-loss and MAE, signature check, and per "
                                   "treatment the prediction–outcome correlation and cupac's "
                                   "variance reduction in the live results.")
    p.add_argument("--format", choices=["json", "table"], default="table")
    p.add_argument("--no-results", action="store_true",
                   help="skip the live results (correlation, variance reduction)")
    p.set_defaults(handler=_models_command)
