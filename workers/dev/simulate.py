"""``liftstream simulate``: a synthetic experiment stream whose true effects are known exactly.

Generating process, per unit (arms ``control, treatment_1, …``; arm *i* ∈ {0..K−1} drawn
uniformly; ``e`` = ``effect``):

* latent activity ``x ~ Gamma(shape 2, scale 1)`` (never sent);
* ``sessions = 1 + Poisson(0.5·x)`` "session" events, ``pageviews ~ Poisson(1.5·sessions)``
  "pageview" events: both unaffected by treatment;
* conversion ``U < (1 + i·e)·p(x)`` with ``U ~ Uniform(0, 1)`` and
  ``p(x) = 0.3·(1 − exp(−x/2))``; a converter makes ``1 + Poisson(0.3·x)`` "purchase"
  events with values ``~ Gamma(shape 2, scale 15)`` (mean 30). So conversion and revenue
  both rise by exactly the factor ``1 + i·e`` in arm *i*;
* ``support_tickets ~ Poisson(0.2 + 0.1·x + i·s·σ_t)`` "ticket" events, ``s`` =
  ``affected_candidate_shift`` and ``σ_t`` the control sd of tickets: arm *i* moves the mean
  by ``i·s`` control standard deviations;
* covariate ``pre_revenue = Y₀ + N`` where ``Y₀`` is the revenue the unit would have in
  control (same ``U``, ``x`` and purchase values) and ``N ~ Exponential`` with variance
  ``Var(Y₀)·(1/r² − 1)``, so corr(pre_revenue, revenue) is exactly ``r`` =
  ``covariate_strength`` in the control population (``r = 0``: ``pre_revenue = N``).

The truth (:func:`true_effects`) is computed in closed form from Gamma moments:
``E[x^j e^{−tx}] = Γ(k+j)/Γ(k)·θ^j·(1+θt)^{−k−j}``. Faults leave the truth unchanged:
``srm_fault`` drops a random fraction of treatment exposures (their events are still sent,
so the worker holds them), ``late_fraction`` sends a unit's exposure after the next block
of 1,000 units (its events arrive first), ``malformed_fraction`` of all messages are garbage
that message validation rejects. Events carry the experiment id and a unique ``id``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from state.definition import DefinitionError, parse_definition
from state.registry import Registry
from state.store import connect
from stream.messages import Event, Exposure, encode_event, encode_exposure
from workers.cli.output import write_json
from workers.cli.prologue import fail, run
from workers.dev.publish import Message, guard_publishing, publish
from workers.dev.simulation_truth import (
    ACTIVITY_SCALE,
    ACTIVITY_SHAPE,
    BLOCK,
    EVENT_SPACING,
    EXTRA_PURCHASES_PER_ACTIVITY,
    P_MAX,
    PAGEVIEWS_PER_SESSION,
    SATURATION,
    SESSIONS_PER_ACTIVITY,
    STREAMS,
    TICKET_BASE,
    TICKET_SLOPE,
    UNIT_SPACING,
    VALUE_SCALE,
    VALUE_SHAPE,
    SimulationConfig,
    control_means,
    expected_messages_per_unit,
    moments,
    simulation_definition,
    true_candidate_effects,
    true_effects,
)
from workers.settings import Settings

__all__ = [
    "SimulationConfig",
    "add_simulate_parser",
    "control_means",
    "expected_messages_per_unit",
    "run_simulation",
    "simulate_messages",
    "simulation_definition",
    "true_candidate_effects",
    "true_effects",
]


# --------------------------------------------------------------------------- the stream


@dataclass
class _Counts:
    exposures: int = 0
    events: int = 0
    malformed: int = 0
    dropped_exposures: int = 0
    late_exposures: int = 0
    per_arm: dict[str, int] = field(default_factory=dict)


_json = msgspec.json.Encoder()


def _garbage(rng: np.random.Generator, kind: str, experiment: str, unit: str, ts: float
             ) -> bytes:
    """One message that ``parse_exposure`` (kind exposures) / ``parse_event`` rejects."""
    exposure = {"experiment": experiment, "unit": unit, "variation": "control", "ts": ts}
    event = {"unit": unit, "event": "purchase", "value": 1.0, "ts": ts}
    if kind == "exposures":
        options: list[Any] = [
            b"\x00\xff\xfe not utf-8",
            _json.encode(exposure)[:-7],  # truncated JSON
            {k: v for k, v in exposure.items() if k != "ts"},
            {**exposure, "unit": ""},
            {**exposure, "ts": ts * 1000.0},  # milliseconds
            {**exposure, "covariates": {"pre_revenue": "n/a"}},
            {**exposure, "experiment": "no spaces allowed"},
            event,  # an event on the exposures topic
            b"[]",
            b"",
        ]
    else:
        options = [
            {**event, "value": "12.50"},
            {k: v for k, v in event.items() if k != "event"},
            {**event, "ts": "yesterday"},
            {**event, "value": 1e300},
            {**event, "id": ""},
            exposure,  # an exposure on the events topic
            _json.encode(event)[:-3],
            b"null",
            b"\xc3\x28",
        ]
    choice = options[int(rng.integers(len(options)))]
    return choice if isinstance(choice, bytes) else _json.encode(choice)


def _generate(cfg: SimulationConfig, counts: _Counts) -> Iterator[Message]:
    """The stream, block by block; ``counts`` is updated as messages are yielded."""
    rngs = dict(zip(STREAMS, (np.random.default_rng(s) for s in
                               np.random.SeedSequence(cfg.seed).spawn(len(STREAMS))),
                    strict=True))
    m = moments()
    sd0 = m.revenue_sd
    r = cfg.covariate_strength
    noise_scale = sd0 if r == 0.0 else sd0 * math.sqrt(max(1.0 / r**2 - 1.0, 0.0))
    ticket_step = cfg.affected_candidate_shift * m.ticket_sd
    spacing = UNIT_SPACING if cfg.rate is None else expected_messages_per_unit(cfg) / cfg.rate
    garbage_p = cfg.malformed_fraction / (1.0 - cfg.malformed_fraction)
    variations = cfg.variations
    counts.per_arm = dict.fromkeys(variations, 0)
    deferred: list[Message] = []

    for first in range(0, cfg.units, BLOCK):
        n = min(BLOCK, cfg.units - first)
        arm = rngs["arm"].integers(cfg.arms, size=n)
        x = rngs["activity"].gamma(ACTIVITY_SHAPE, ACTIVITY_SCALE, size=n)
        u = rngs["uniform"].random(n)
        sessions = 1 + rngs["sessions"].poisson(SESSIONS_PER_ACTIVITY * x)
        pageviews = rngs["pageviews"].poisson(PAGEVIEWS_PER_SESSION * sessions)
        purchases = 1 + rngs["purchases"].poisson(EXTRA_PURCHASES_PER_ACTIVITY * x)
        values = rngs["values"].gamma(VALUE_SHAPE, VALUE_SCALE, size=int(purchases.sum()))
        noise = rngs["noise"].exponential(1.0, size=n) * noise_scale
        tickets = rngs["tickets"].poisson(TICKET_BASE + TICKET_SLOPE * x + arm * ticket_step)
        drop = (arm > 0) & (rngs["srm"].random(n) < cfg.srm_fault)
        late = rngs["late"].random(n) < cfg.late_fraction

        p0 = P_MAX * (1.0 - np.exp(-x / SATURATION))
        converted = u < (1.0 + arm * cfg.effect) * p0
        starts = np.concatenate([[0], np.cumsum(purchases)[:-1]])
        spend = np.add.reduceat(values, starts)
        pre_revenue = np.where(u < p0, spend, 0.0) + noise

        block: list[Message] = []
        late_now: list[Message] = []
        for j in range(n):
            i = first + j
            unit = f"s{cfg.seed}-u{i}"
            key = unit.encode()
            ts = cfg.start_ts + i * spacing
            variation = variations[int(arm[j])]
            exposure = encode_exposure(Exposure(cfg.experiment, unit, variation, ts,
                                                {"pre_revenue": float(pre_revenue[j])}))
            if drop[j]:
                counts.dropped_exposures += 1
            elif late[j]:
                late_now.append(("exposures", key, exposure))
                counts.late_exposures += 1
            else:
                block.append(("exposures", key, exposure))
            if not drop[j]:
                counts.exposures += 1
                counts.per_arm[variation] += 1
            acts: list[tuple[str, float, str]] = [
                *(("session", 1.0, f"session:{s}") for s in range(int(sessions[j]))),
                *(("pageview", 1.0, f"pageview:{p}") for p in range(int(pageviews[j]))),
            ]
            if converted[j]:
                lo = int(starts[j])
                acts += [("purchase", float(values[lo + p]), f"purchase:{p}")
                         for p in range(int(purchases[j]))]
            acts += [("ticket", 1.0, f"ticket:{t}") for t in range(int(tickets[j]))]
            for k, (name, value, tag) in enumerate(acts, start=1):
                block.append(("events", key, encode_event(Event(
                    unit, name, ts + k * EVENT_SPACING, value, cfg.experiment,
                    f"{unit}:{tag}"))))
        block.extend(deferred)
        deferred = late_now

        real_events = sum(1 for msg in block if msg[0] == "events")
        counts.events += real_events
        grng = rngs["garbage"]
        if garbage_p > 0:
            insert = grng.random(len(block)) < garbage_p
            kinds = grng.integers(2, size=len(block))
            for msg, bad, kind_i in zip(block, insert, kinds, strict=True):
                yield msg
                if bad:
                    kind = "exposures" if kind_i == 0 else "events"
                    counts.malformed += 1
                    yield (kind, msg[1], _garbage(grng, kind, cfg.experiment,
                                                  msg[1].decode(), cfg.start_ts))
        else:
            yield from block
    yield from deferred


def simulate_messages(cfg: SimulationConfig) -> Iterator[Message]:
    """The simulated stream ``(kind, key, value)``, generated lazily, same for the same cfg."""
    return _generate(cfg, _Counts())


def run_simulation(settings: Settings, cfg: SimulationConfig, progress: bool = True
                   ) -> dict[str, Any]:
    """Register the experiment (replacing it), publish the stream, flush; return the truth.

    Returns ``{"experiment", "truth", "exposures", "events", "malformed", ...}``; counts are
    of messages sent (dropped exposures are not sent).
    """
    d = parse_definition(simulation_definition(cfg))
    client = connect(settings.redis_url, settings.redis_cluster)
    try:
        registry = Registry(client)
        if registry.get(d.id) is not None:
            print(f"liftstream simulate: warning: experiment {d.id!r} exists and is replaced; "
                  f"statistics already stored for it are kept and mix with this run",
                  file=sys.stderr)
        registry.create(d, replace=True)
    finally:
        client.close()
    counts = _Counts()
    t0 = time.monotonic()
    publish(settings, _generate(cfg, counts), rate=cfg.rate, progress=progress,
            label="simulate", client_id="liftstream-simulate")
    return {
        "experiment": d.id,
        "truth": true_effects(cfg),
        "candidate_truth": true_candidate_effects(cfg),
        "exposures": counts.exposures,
        "events": counts.events,
        "malformed": counts.malformed,
        "dropped_exposures": counts.dropped_exposures,
        "late_exposures": counts.late_exposures,
        "exposures_per_variation": counts.per_arm,
        "seconds": round(time.monotonic() - t0, 3),
    }


# --------------------------------------------------------------------------- CLI


def _simulate_command(args: argparse.Namespace) -> int:
    return run("simulate", lambda settings: _simulate_with(args, settings))


def _simulate_with(args: argparse.Namespace, settings: Settings) -> int:
    try:
        cfg = SimulationConfig(
            experiment=args.experiment, units=args.units, arms=args.arms, effect=args.effect,
            covariate_strength=args.covariate_strength, srm_fault=args.srm_fault,
            affected_candidate_shift=args.affected_candidate_shift,
            late_fraction=args.late_fraction, malformed_fraction=args.malformed_fraction,
            seed=args.seed, rate=args.rate,
            start_ts=time.time() if args.start_ts is None else args.start_ts,
            model=args.model, outcome_window_seconds=args.outcome_window)
        parse_definition(simulation_definition(cfg))
    except (ValueError, DefinitionError) as exc:
        return fail("simulate", str(exc))

    def body() -> int:
        write_json(run_simulation(settings, cfg, progress=not args.no_progress), indent=2)
        sys.stdout.flush()
        return 0

    return guard_publishing("simulate", settings, body)


def add_simulate_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the ``simulate`` sub-command to a sub-parser collection."""
    d = SimulationConfig()
    p = sub.add_parser("simulate", help="publish a synthetic experiment with known true effects",
                       description="Register a synthetic experiment, publish its stream, and "
                                   "print the true effects as JSON.")
    p.add_argument("--experiment", default=d.experiment, help=f"experiment id ({d.experiment})")
    p.add_argument("--units", type=int, default=d.units, help=f"units ({d.units})")
    p.add_argument("--arms", type=int, default=d.arms, help=f"variations incl. control ({d.arms})")
    p.add_argument("--effect", type=float, default=d.effect,
                   help=f"relative lift of conversion and revenue; arm i gets i·effect "
                        f"({d.effect})")
    p.add_argument("--covariate-strength", type=float, default=d.covariate_strength,
                   help=f"correlation of pre_revenue with revenue ({d.covariate_strength})")
    p.add_argument("--srm-fault", type=float, default=d.srm_fault,
                   help="fraction of treatment exposures dropped (0)")
    p.add_argument("--affected-candidate-shift", type=float,
                   default=d.affected_candidate_shift,
                   help="treatment shift of support_tickets in control sds (0)")
    p.add_argument("--late-fraction", type=float, default=d.late_fraction,
                   help="fraction of units whose exposure arrives after their events (0)")
    p.add_argument("--malformed-fraction", type=float, default=d.malformed_fraction,
                   help="fraction of garbage messages mixed in (0; at most 0.5)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed ({d.seed})")
    p.add_argument("--rate", type=float, default=None,
                   help="messages per second; timestamps are paced to match (no limit)")
    p.add_argument("--start-ts", type=float, default=None,
                   help="timestamp of the first exposure, epoch seconds (now)")
    p.add_argument("--model", choices=["linear", "logistic", "tree", "forest"], default=None,
                   help="online learner whose frozen predictions feed CUPAC/MLRATE (none)")
    p.add_argument("--outcome-window", type=float, default=None,
                   help="seconds after exposure when a unit becomes a training example")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(handler=_simulate_command)
