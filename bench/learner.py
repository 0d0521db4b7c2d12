"""Online learner: cupac's variance reduction vs an oracle, and learner throughput.

For each model kind, a simulated stream of exposed units with a nonlinear outcome model
(:mod:`workers.dev.learner_sim`: threshold + interaction) goes through the learner path in one
process: a warm-up of historical units, then ŷ frozen at each exposure from the latest
snapshot of the :class:`~workers.learner.online_model.OnlineModel`, which learns units as their
outcome windows close. Reported per kind: cupac's variance reduction (vs ``diff``), the
oracle's (the true E[y|x] as covariate), their ratio, the prediction–outcome correlation,
progressive R², and learn throughput (examples/s, progressive validation included, one
core). ``--coverage N`` adds N seeded A/A + N A/B experiments (coverage and bias of cupac
and mlrate).

Run: ``python -m bench.learner [--units 100000] [--kinds linear,tree] [--coverage 1000]``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from typing import Any

from workers.dev.learner_sim import coverage_run, efficiency, summarize_runs, warm_model


def run(units: int = 100_000, warmup: int = 10_000, kinds: str = "linear,tree",
        seed: int = 7) -> dict[str, Any]:
    """VR of cupac relative to the oracle, and learner throughput, per model kind."""
    out: dict[str, Any] = {"units": units, "warmup": warmup, "kinds": {}}
    for kind in kinds.split(","):
        r = efficiency(kind, units=units, warmup=warmup, seed=seed)
        out["kinds"][kind] = {
            "vr_cupac": round(r.vr_cupac, 4), "vr_oracle": round(r.vr_oracle, 4),
            "ratio": round(r.ratio, 4),
            "learn_examples_per_second": round(r.learn_examples_per_second),
            "predict_per_second": round(r.predict_per_second)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--units", type=int, default=100_000)
    p.add_argument("--warmup", type=int, default=10_000)
    p.add_argument("--kinds", default="linear,tree")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--coverage", type=int, default=0,
                   help="A/A and A/B runs each for the coverage check (0: skip)")
    args = p.parse_args(argv)
    out: dict[str, Any] = {"units": args.units, "warmup": args.warmup, "kinds": {}}
    for kind in args.kinds.split(","):
        r = efficiency(kind, units=args.units, warmup=args.warmup, seed=args.seed)
        out["kinds"][kind] = {
            "vr_cupac": round(r.vr_cupac, 4), "vr_oracle": round(r.vr_oracle, 4),
            "ratio": round(r.ratio, 4),
            "prediction_outcome_correlation": round(r.prediction_outcome_correlation, 4),
            "progressive_r2": round(r.model_metrics.get("r2", float("nan")), 4),
            "learn_examples_per_second": round(r.learn_examples_per_second),
            "predict_per_second": round(r.predict_per_second),
            "seconds": round(r.seconds, 1)}
    if args.coverage:
        t0 = time.perf_counter()
        warm = warm_model("linear")
        runs = [coverage_run(warm, s, units=800, effect=0.0 if s % 2 == 0 else 0.25,
                             window=100, snapshot_every=100) for s in range(2 * args.coverage)]
        out["coverage"] = {**asdict(summarize_runs(runs)),
                           "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
