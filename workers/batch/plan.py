"""``liftstream plan``: units and days needed for a target MDE, from a past experiment's or a
pre-period's unit rows, with and without the covariates' variance reduction.

The outcome's per-unit variance σ² is the pooled within-variation sample variance; with
covariates, the residual variance of the pooled within-variation regression on them
(σ²(1 − R²), as CUPED achieves; Deng et al. 2013). The control's mean turns the relative MDE
into an absolute effect. Formulas: :mod:`estimators.power` and docs/statistics.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from estimators.power import Plan, plan
from estimators.records import as_dict
from workers.batch.columns import InputError, numeric_column, parse_metric, read_table
from workers.cli.output import write_as


def within_variance(y: np.ndarray, w: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """Pooled within-group variance of ``y`` and of its residual on the columns of ``w``."""
    cols = np.column_stack([y, w]) if w.size else y[:, None]
    centred = np.empty_like(cols)
    for g in np.unique(groups):
        rows = groups == g
        centred[rows] = cols[rows] - cols[rows].mean(axis=0)
    dof = len(y) - len(np.unique(groups))
    if dof < 1:
        raise InputError("need at least 2 rows in some variation")
    s = centred.T @ centred / dof
    var_y = float(s[0, 0])
    if not w.size:
        return var_y, var_y
    sww, swy = s[1:, 1:], s[1:, 0]
    theta = np.linalg.lstsq(sww, swy, rcond=None)[0]
    resid = max(0.0, var_y - float(swy @ theta))
    return var_y, resid


def plan_frame(frame: Any, variation: str, control: str, metric: str, covariates: list[str],
               target: float, alpha: float, tuning: float, daily_units: float | None
               ) -> dict[str, Any]:
    m = parse_metric(metric)
    groups = frame[variation].astype(str).to_numpy()
    present = sorted(set(groups.tolist()))
    if control not in present:
        raise InputError(f"control {control!r} not found in column {variation!r} "
                         f"(values: {', '.join(present[:20])})")
    y = numeric_column(frame, m.column)
    if m.kind == "binary" and not np.isin(y, (0.0, 1.0)).all():
        raise InputError(f"metric {m.column!r} is declared binary but has values other than 0/1")
    w = (np.column_stack([numeric_column(frame, c) for c in covariates]) if covariates
         else np.empty((len(y), 0)))
    var_y, var_r = within_variance(y, w, groups)
    mean_c = float(y[groups == control].mean())
    arms = len(present)
    plans: list[Plan] = [plan(float(np.sqrt(var_y)), mean_c, target, arms, alpha, tuning,
                              daily_units)]
    if covariates:
        vr = 1.0 - var_r / var_y if var_y > 0 else 0.0
        plans.append(plan(float(np.sqrt(var_r)), mean_c, target, arms, alpha, tuning,
                          daily_units, "covariates", vr))
    return {"metric": m.column, "control_mean": mean_c, "target_rel_mde": target,
            "target_effect": target * abs(mean_c), "alpha": alpha, "power": 0.8,
            "sequential_tuning": tuning, "arms": arms, "rows": len(y),
            "covariates": covariates, "daily_units": daily_units,
            "plans": [as_dict(p) for p in plans]}


def render(doc: dict[str, Any]) -> str:
    lines = [f"metric {doc['metric']}: target relative MDE {doc['target_rel_mde']:g} "
             f"(absolute {doc['target_effect']:.4g}), α = {doc['alpha']:g}, power 80%, "
             f"{doc['arms']} arms, from {doc['rows']} rows"]
    head = f"{'adjustment':<12}{'sd':>10}{'var.red.':>10}{'fixed units':>14}" \
           f"{'fixed days':>12}{'anytime units':>15}{'anytime days':>14}"
    lines.append(head)

    def f(x: Any, spec: str) -> str:
        return "n/a" if x is None else format(x, spec)

    for p in doc["plans"]:
        lines.append(f"{p['adjustment']:<12}{f(p['sigma'], '.4g'):>10}"
                     f"{f(p['variance_reduction'], '.1%'):>10}{f(p['fixed_units'], ','):>14}"
                     f"{f(p['fixed_days'], '.1f'):>12}{f(p['sequential_units'], ','):>15}"
                     f"{f(p['sequential_days'], '.1f'):>14}")
        if p.get("note"):
            lines.append(f"  note: {p['note']}")
    return "\n".join(lines) + "\n"


def _plan_command(args: argparse.Namespace) -> int:
    try:
        if not args.mde > 0:
            raise InputError(f"--mde must be > 0, got {args.mde}")
        if not 0 < args.alpha < 1:
            raise InputError(f"--alpha must be in (0, 1), got {args.alpha}")
        if args.daily_units is not None and not args.daily_units > 0:
            raise InputError(f"--daily-units must be > 0, got {args.daily_units}")
        if not args.sequential_tuning > 0:
            raise InputError(f"--sequential-tuning must be > 0, got {args.sequential_tuning}")
        col = parse_metric(args.metric).column
        frame = read_table(args.file, [args.variation, col, *args.covariate])
        doc = plan_frame(frame, args.variation, args.control, args.metric, args.covariate,
                         args.mde, args.alpha, args.sequential_tuning, args.daily_units)
    except (InputError, ValueError, np.linalg.LinAlgError) as exc:
        print(f"liftstream plan: error: {exc}", file=sys.stderr)
        return 2
    return write_as(args.format, doc, render)


def add_plan_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``plan`` to the ``liftstream`` sub-commands."""
    p = sub.add_parser("plan", help="units and days needed for a target MDE (80%% power)",
                       description="From a past experiment's or a pre-period's unit rows: "
                                   "units and days for 80% power at a relative MDE, fixed-"
                                   "horizon and anytime-valid, with and without covariates.")
    p.add_argument("file")
    p.add_argument("--variation", required=True, help="column holding the variation name")
    p.add_argument("--control", required=True, help="name of the control variation")
    p.add_argument("--metric", required=True, help="metric column, COL[:binary|:numeric]")
    p.add_argument("--covariate", action="append", default=[],
                   help="pre-experiment covariate column (repeatable)")
    p.add_argument("--mde", type=float, required=True, help="target relative MDE, e.g. 0.02")
    p.add_argument("--daily-units", type=float, default=None, help="units exposed per day")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (0.05)")
    p.add_argument("--sequential-tuning", type=float, default=5000.0,
                   help="N* of the confidence sequence (5000)")
    p.add_argument("--format", choices=["json", "table"], default="table")
    p.set_defaults(handler=_plan_command)
