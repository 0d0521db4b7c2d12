"""``liftstream alerter``: the command that runs the alerter (or evaluates once)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from workers.alerter.service import Alerter
from workers.cli.prologue import run, stop_on_signals
from workers.settings import Settings

log = logging.getLogger("liftstream.alerter")



def _alerter_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # connection chatter while Kafka is down
    return run("alerter", lambda settings: _alerter_with(args, settings))


def _alerter_with(args: argparse.Namespace, settings: Settings) -> int:
    alerter = Alerter(settings)
    stop_on_signals(alerter.stop_event)
    try:
        if args.once:
            for a in alerter.evaluate_once():
                print(a.text)
        else:
            log.info("%s: every %gs, webhooks: %d, topic %s", alerter.owner,
                     settings.alert_interval_seconds, len(settings.alert_webhooks),
                     settings.topic_alerts)
            alerter.run()
    finally:
        alerter.close()
    return 0


def add_alerter_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``alerter`` to the ``liftstream`` sub-commands."""
    p = sub.add_parser(
        "alerter", help="alert on significance, guardrail harm, SRM and stale data",
        description="Evaluate running experiments every LIFTSTREAM_ALERT_INTERVAL_SECONDS, "
                    "record result history, and send alerts on transitions to the alerts "
                    "topic and LIFTSTREAM_ALERT_WEBHOOKS.")
    p.add_argument("--once", action="store_true", help="evaluate once, print alerts, exit")
    p.set_defaults(handler=_alerter_command)
