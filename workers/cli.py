"""The ``liftstream`` command line: one sub-command per process or task."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from estimators.analysis import AnalysisSettings

Handler = Callable[[argparse.Namespace], int]


def _fail(command: str, message: str) -> int:
    print(f"liftstream {command}: error: {message}", file=sys.stderr)
    return 2


def _analyze(args: argparse.Namespace) -> int:
    from workers.analyze import (
        AnalyzeRequest,
        InputError,
        analyze_file,
        parse_metric,
        parse_ratio,
        parse_weights,
    )
    from workers.table import render

    try:
        settings = AnalysisSettings(alpha=args.alpha, sequential_tuning=args.sequential_tuning,
                                    selection_alpha=args.selection_alpha,
                                    selection_holm=args.holm_selection,
                                    prior_sigma=args.prior_sigma)
        req = AnalyzeRequest(
            variation=args.variation, control=args.control,
            metrics=tuple(parse_metric(m) for m in args.metric),
            ratios=tuple(parse_ratio(r) for r in args.ratio),
            covariates=tuple(args.covariate), prediction=args.prediction,
            in_experiment=tuple(args.in_experiment),
            weights=parse_weights(args.weights) if args.weights else None,
            by=tuple(c for part in args.by for c in part.split(",") if c),
            timeline=args.timeline, points=args.points, settings=settings,
            correction=args.correction)
        doc = analyze_file(args.file, req)
    except (InputError, ValueError) as exc:
        return _fail("analyze", str(exc))
    _emit(doc, args.format, render)
    return 0


def _worker(args: argparse.Namespace) -> int:
    import logging

    from workers.ingest import run_worker
    from workers.settings import SettingsError, load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        settings = load_settings()
    except SettingsError as exc:
        return _fail("worker", str(exc))
    return run_worker(settings, args.name)


def _results(args: argparse.Namespace) -> int:
    from state.registry import Registry
    from state.results import experiment_document
    from state.store import connect
    from workers.settings import SettingsError, load_settings
    from workers.table import render

    try:
        settings = load_settings()
    except SettingsError as exc:
        return _fail("results", str(exc))
    client = connect(settings.redis_url, settings.redis_cluster)
    d = Registry(client).get(args.experiment)
    if d is None:
        return _fail("results", f"unknown experiment {args.experiment!r}")
    _emit(experiment_document(client, d, args.correction), args.format, render)
    return 0


def _emit(doc: dict[str, Any], fmt: str, render: Callable[[dict[str, Any]], str]) -> None:
    if fmt == "json":
        sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(doc), indent=1))
        sys.stdout.buffer.write(b"\n")
    else:
        sys.stdout.write(render(doc))


def _add_analysis_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (0.05)")
    p.add_argument("--sequential-tuning", type=float, default=5000.0,
                   help="N* of the confidence sequence: where it is tightest (5000)")
    p.add_argument("--selection-alpha", type=float, default=0.05,
                   help="in-experiment covariates with balance p ≤ this are dropped (0.05)")
    p.add_argument("--holm-selection", action="store_true",
                   help="Holm-adjust balance p-values before selecting")
    p.add_argument("--prior-sigma", type=float, default=0.3,
                   help="prior sd of the relative difference for posterior means (0.3)")
    p.add_argument("--correction", choices=["holm", "bh"], default=None,
                   help="adjust p-values across metrics × treatments")
    p.add_argument("--format", choices=["json", "table"], default="table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liftstream",
        description="Live A/B-test analysis: variance-reduced effects, anytime-valid intervals.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("analyze", help="analyse a unit-level CSV file in batch")
    p.add_argument("file")
    p.add_argument("--variation", required=True, help="column holding the variation name")
    p.add_argument("--control", required=True, help="name of the control variation")
    p.add_argument("--metric", action="append", default=[],
                   help="metric column, optionally COL:binary or COL:numeric (repeatable)")
    p.add_argument("--ratio", action="append", default=[],
                   help="ratio metric NAME=NUM_COL/DEN_COL (repeatable)")
    p.add_argument("--covariate", action="append", default=[],
                   help="pre-experiment covariate column (repeatable)")
    p.add_argument("--prediction", help="column with a model prediction ŷ (CUPAC/MLRATE)")
    p.add_argument("--in-experiment", action="append", default=[],
                   help="in-experiment covariate candidate (repeatable)")
    p.add_argument("--weights", help="expected traffic split, e.g. a=0.5,b=0.5")
    p.add_argument("--by", action="append", default=[], help="slice by COL[,COL]")
    p.add_argument("--timeline", help="order rows by COL and report results over time")
    p.add_argument("--points", type=int, default=10, help="timeline points (10)")
    _add_analysis_options(p)
    p.set_defaults(handler=_analyze)

    p = sub.add_parser("worker", help="ingest exposures and events into Redis")
    p.add_argument("--name", default="worker", help="client id / log name")
    p.set_defaults(handler=_worker)

    p = sub.add_parser("results", help="current results of a live experiment")
    p.add_argument("experiment")
    p.add_argument("--correction", choices=["holm", "bh"], default=None)
    p.add_argument("--format", choices=["json", "table"], default="table")
    p.set_defaults(handler=_results)

    from workers.experiments_cli import add_experiments_parser
    from workers.replay import add_replay_parser
    from workers.simulate import add_simulate_parser

    add_experiments_parser(sub)

    from workers.api_cli import add_api_parser

    add_api_parser(sub)

    from workers.alerter import add_alerter_parser

    add_alerter_parser(sub)
    add_replay_parser(sub)
    add_simulate_parser(sub)

    from workers.demo import add_demo_parser

    add_demo_parser(sub)

    from workers.learner import add_learner_parser
    from workers.models_cli import add_models_parser

    add_learner_parser(sub)
    add_models_parser(sub)

    from workers.offsets_cli import add_offsets_parser

    add_offsets_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
