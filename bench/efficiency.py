"""Statistical efficiency: CI width of adjusted estimators relative to ``diff``.

On the real data sets (Hillstrom, Cookie Cats) via the batch path, and on the simulator via
the streaming path (messages → batch builder → Redis → estimators). A CI-width ratio ``w``
means the adjusted estimator reaches the same precision with ``w²`` of the sample: a test
that needs 14 days with ``diff`` needs ``14·w²`` days.

Run: ``python -m bench.efficiency``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from estimators import document
from state.definition import parse_definition
from state.layout import ExperimentLayout
from state.registry import Registry
from state.results import experiment_document
from state.store import PartitionStore, connect
from stream.batch import BatchBuilder, RawRecord, Topics
from workers.batch.analyze import AnalyzeRequest, analyze_frame
from workers.batch.columns import MetricColumn
from workers.dev.embedded import start_redis
from workers.dev.simulate import SimulationConfig, simulate_messages, simulation_definition

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ESTIMATORS = ("cuped", "cupac", "mlrate", "lin_crespo", "adjusted")


def widths(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per metric × treatment: CI-width ratio of each adjusted estimator to diff."""
    out = []
    for m in document.parse(doc).first.metrics:
        for c in m.comparisons:
            row: dict[str, Any] = {"metric": m.metric, "treatment": c.treatment}
            for name in ESTIMATORS:
                e = c.estimators.get(name)
                ratio = None if e is None else e.ci_width_ratio
                if ratio is not None:
                    row[name] = round(ratio, 4)
                    row[f"{name}_days_per_14"] = round(14 * ratio * ratio, 2)
            out.append(row)
    return out


def hillstrom() -> list[dict[str, Any]]:
    frame = pd.read_csv(DATA / "hillstrom.csv")
    req = AnalyzeRequest(variation="segment", control="No E-Mail",
                         metrics=(MetricColumn("spend", "numeric"),
                                  MetricColumn("visit", "binary")),
                         covariates=("recency", "history"))
    return widths(analyze_frame(frame, req))


def cookie_cats() -> list[dict[str, Any]]:
    frame = pd.read_csv(DATA / "cookie_cats.csv")
    req = AnalyzeRequest(variation="version", control="gate_30",
                         metrics=(MetricColumn("retention_7", "binary"),),
                         in_experiment=("sum_gamerounds", "retention_1"))
    return widths(analyze_frame(frame, req))


def simulator(units: int = 40_000, partitions: int = 4) -> list[dict[str, Any]]:
    """The simulator's stream through the real batch builder and Lua script (no Kafka)."""
    cfg = SimulationConfig(experiment="eff", units=units, arms=2, effect=0.05,
                           covariate_strength=0.7, seed=11)
    with start_redis() as server:
        client = connect(server.url)
        d = parse_definition(simulation_definition(cfg))
        Registry(client).create(d)
        store = PartitionStore(client)
        store.set_partition_count(partitions)
        builder = BatchBuilder(store, Topics("exposures", "events"), 1024, 1e9, 10**7)
        builder.set_experiments({d.id: ExperimentLayout.of(d)})
        parts: dict[int, list[RawRecord]] = {p: [] for p in range(partitions)}
        offsets: dict[tuple[str, int], int] = {}
        for kind, key, value in simulate_messages(cfg):
            p = hash(key) % partitions
            off = offsets.get((kind, p), 0)
            parts[p].append(RawRecord(kind, off, value))
            offsets[(kind, p)] = off + 1
        for p, records in parts.items():
            epoch = store.claim(p)
            for k in range(0, len(records), 5000):
                out = store.apply(builder.build(p, epoch, records[k:k + 5000]).write)
                assert out.applied, out
        return widths(experiment_document(client, d))


def main() -> None:
    print(json.dumps({"hillstrom": hillstrom(), "cookie_cats": cookie_cats(),
                      "simulator": simulator()}, indent=1))


if __name__ == "__main__":
    main()
