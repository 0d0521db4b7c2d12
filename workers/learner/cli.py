"""``liftstream learner``: the command that runs the one learner."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from workers.cli.prologue import fail, run, stop_on_signals
from workers.learner.checkpoint import LearnerConflict
from workers.learner.loop import Learner
from workers.settings import Settings

log = logging.getLogger("liftstream.learner")


def run_learner(settings: Settings, name: str = "learner") -> int:
    learner = Learner(settings, name)  # SettingsError: exit 2 (workers.cli.prologue)
    stop_on_signals(learner.stop_event)
    try:
        learner.run()
    except LearnerConflict as exc:
        log.error("%s", exc)
        return fail("learner", str(exc), 1)
    return 0


def _learner_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run("learner", lambda settings: run_learner(settings, args.name))


def add_learner_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the ``learner`` sub-command to a sub-parser collection."""
    p = sub.add_parser(
        "learner", help="train online models on the training topic (CUPAC/MLRATE predictions)",
        description="Consume the training topic (every partition, no consumer group), update "
                    "one River model per model id and publish signed snapshots with the "
                    "offsets they include. Run exactly one learner.")
    p.add_argument("--name", default="learner", help="client id / log name")
    p.set_defaults(handler=_learner_command)
