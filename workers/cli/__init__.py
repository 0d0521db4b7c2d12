"""The ``liftstream`` command line: one sub-command per process or task."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

from estimators import defaults

Handler = Callable[[argparse.Namespace], int]
Adder = Callable[["argparse._SubParsersAction[Any]"], None]

# sub-command → (one-line help, module, function adding its parser). A command's module is
# imported only when that command runs, so `liftstream --help` and light commands start
# without scipy, FastAPI or River.
COMMANDS: Final[dict[str, tuple[str, str, str]]] = {
    "analyze": ("analyse a unit-level CSV file in batch", "workers.cli", "add_analyze_parser"),
    "worker": ("ingest exposures and events into Redis", "workers.cli", "add_worker_parser"),
    "results": ("current results of a live experiment", "workers.cli", "add_results_parser"),
    "experiments": ("manage experiment definitions in the registry",
                    "workers.cli.experiments", "add_experiments_parser"),
    "api": ("serve the query API, /metrics and the dashboard", "workers.api.cli",
            "add_api_parser"),
    "alerter": ("alert on significance, guardrail harm, SRM and stale data",
                "workers.alerter.cli", "add_alerter_parser"),
    "replay": ("publish a unit-level CSV file as exposures and events", "workers.dev.replay",
               "add_replay_parser"),
    "simulate": ("publish a synthetic experiment with known true effects",
                 "workers.dev.simulate", "add_simulate_parser"),
    "demo": ("run everything embedded with a simulated experiment", "workers.dev.demo",
             "add_demo_parser"),
    "learner": ("train online models on the training topic (CUPAC/MLRATE predictions)",
                "workers.learner.cli", "add_learner_parser"),
    "models": ("online models: version, quality, effect in results", "workers.cli.models",
               "add_models_parser"),
    "offsets": ("stored offsets against the Kafka log; accept a gap", "workers.cli.offsets",
                "add_offsets_parser"),
    "plan": ("units and days needed for a target MDE (80%% power)", "workers.batch.plan",
             "add_plan_parser"),
}


def _analyze(args: argparse.Namespace) -> int:
    from estimators.analysis import AnalysisSettings
    from workers.batch.analyze import AnalyzeRequest, analyze_file
    from workers.batch.columns import InputError, parse_metric, parse_ratio, parse_weights
    from workers.cli.prologue import fail

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
            correction=args.correction, past=_past(args), missing=args.missing,
            quantile_accuracy=args.quantile_accuracy)
        doc = analyze_file(args.file, req)
    except (InputError, ValueError) as exc:
        return fail("analyze", str(exc))
    except ArithmeticError as exc:  # float64 range, e.g. squares of 1e-160 underflow to 0
        return fail("analyze", f"a statistic left the float64 range ({type(exc).__name__}: "
                                f"{exc}); rescale the columns")
    _emit(doc, args.format)
    return 0


def _past(args: argparse.Namespace) -> tuple[dict[str, Any], ...] | None:
    from workers.batch.columns import InputError
    from workers.batch.past import load_past

    if args.prior == "empirical":
        if not args.past:
            raise InputError("--prior empirical needs --past FILE (past results)")
        return tuple(load_past(args.past))
    if args.past:
        raise InputError("--past is used with --prior empirical")
    return None


def _worker(args: argparse.Namespace) -> int:
    import logging

    from workers.cli.prologue import run
    from workers.ingest import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run("worker", lambda settings: run_worker(settings, args.name))


def _results(args: argparse.Namespace) -> int:
    from workers.cli.prologue import CommandError, run
    from workers.settings import Settings

    def body(settings: Settings) -> int:
        from state.registry import Registry
        from state.store import connect

        client = connect(settings.redis_url, settings.redis_cluster)
        d = Registry(client).get(args.experiment)  # the first Redis read: before scipy loads
        if d is None:
            raise CommandError(f"unknown experiment {args.experiment!r}")
        if args.by is not None and args.by not in [x.name for x in d.dimensions]:
            names = ", ".join(x.name for x in d.dimensions) or "none"
            raise CommandError(f"--by: {args.by[:70]!r} is not a dimension of experiment "
                               f"{d.id!r} (dimensions: {names})")
        from state.results import experiment_document

        _emit(experiment_document(client, d, args.correction, by=args.by), args.format)
        return 0

    return run("results", body)


def _emit(doc: dict[str, Any], fmt: str) -> None:
    """JSON, or the table: ``rich`` tables on a terminal, plain text otherwise."""
    import msgspec

    if fmt == "json":
        sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(doc), indent=1))
        sys.stdout.buffer.write(b"\n")
        return
    from workers.cli.table import render, renderable

    if sys.stdout.isatty():
        from rich.console import Console

        Console().print(renderable(doc))
    else:
        sys.stdout.write(render(doc))


def _add_analysis_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alpha", type=float, default=defaults.ALPHA,
                   help=f"significance level ({defaults.ALPHA:g})")
    p.add_argument("--sequential-tuning", type=float, default=defaults.SEQUENTIAL_TUNING,
                   help="N* of the confidence sequence: where it is tightest "
                        f"({defaults.SEQUENTIAL_TUNING:g})")
    p.add_argument("--selection-alpha", type=float, default=defaults.SELECTION_ALPHA,
                   help="in-experiment covariates with balance p ≤ this are dropped "
                        f"({defaults.SELECTION_ALPHA:g})")
    p.add_argument("--holm-selection", action="store_true",
                   help="Holm-adjust balance p-values before selecting")
    p.add_argument("--prior-sigma", type=float, default=defaults.PRIOR_SIGMA,
                   help="prior sd of the relative difference for posterior means "
                        f"({defaults.PRIOR_SIGMA:g})")
    p.add_argument("--correction", choices=["holm", "bh"], default=None,
                   help="adjust p-values across metrics × treatments")
    p.add_argument("--format", choices=["json", "table"], default="table")


def add_analyze_parser(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("analyze", help=COMMANDS["analyze"][0])
    p.add_argument("file")
    p.add_argument("--variation", required=True, help="column holding the variation name")
    p.add_argument("--control", required=True, help="name of the control variation")
    p.add_argument("--metric", action="append", default=[],
                   help="metric column, optionally COL:binary or COL:numeric, or a quantile "
                        "metric COL:quantile=0.9 (or =0.5,0.9) (repeatable)")
    p.add_argument("--quantile-accuracy", type=float, default=0.01,
                   help="relative accuracy of quantile histograms, in [0.0001, 0.01] (0.01)")
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
    p.add_argument("--prior", choices=["fixed", "empirical"], default="fixed",
                   help="prior σ: --prior-sigma, or estimated per metric from --past results")
    p.add_argument("--past", help="past results (JSON records or CSV experiment,metric,"
                                  "rel_effect,rel_se) for --prior empirical")
    p.add_argument("--missing", choices=["error", "drop", "zero"], default="error",
                   help="missing values: error (default), drop incomplete rows, or count a "
                        "missing metric/covariate value as 0")
    _add_analysis_options(p)
    p.set_defaults(handler=_analyze)


def add_worker_parser(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("worker", help=COMMANDS["worker"][0])
    p.add_argument("--name", default="worker", help="client id / log name")
    p.set_defaults(handler=_worker)


def add_results_parser(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("results", help=COMMANDS["results"][0])
    p.add_argument("experiment")
    p.add_argument("--correction", choices=["holm", "bh"], default=None)
    p.add_argument("--by", help="one slice per value of this dimension (as analyze --by)")
    p.add_argument("--format", choices=["json", "table"], default="table")
    p.set_defaults(handler=_results)


def _adder(command: str) -> Adder:
    _, module, function = COMMANDS[command]
    adder: Adder = getattr(importlib.import_module(module), function)
    return adder


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every sub-command, or with ``only`` fully defined and the others
    listed by name and help (their modules are not imported)."""
    parser = argparse.ArgumentParser(
        prog="liftstream",
        description="Live A/B-test analysis: variance-reduced effects, anytime-valid intervals.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command, (summary, _, _) in COMMANDS.items():
        if only is None or command == only:
            _adder(command)(sub)
        else:
            sub.add_parser(command, help=summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command = next((w for w in words if not w.startswith("-")), None)
    only = command if command in COMMANDS else ""
    args = build_parser(only).parse_args(words)
    handler: Handler = args.handler
    return handler(args)

