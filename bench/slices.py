"""Redis bytes of dimension slices (issue 13 item 1): per (dimension value, arm) matrix and
per unit's stored values, measured with ``MEMORY USAGE`` on a real ``redis-server``.

``python -m bench.slices [--units N] [--values V]``: one experiment (1 metric + 1 covariate,
2 arms, one dimension with V values), N units exposed through the batch builder and the
apply script into one partition.
"""

from __future__ import annotations

import argparse
from typing import Any

import msgspec

from state import keys
from state.layout import ExperimentLayout
from state.registry import parse_definition
from state.store import PartitionStore, connect
from stream.batch import BatchBuilder, RawRecord, Topics
from workers.dev.embedded import start_redis

BUCKETS = 4096


def measure(units: int, values: int) -> dict[str, Any]:
    d = parse_definition({"id": "b", "variations": ["control", "treatment"],
                          "metrics": [{"name": "m", "event": "e", "aggregate": "sum"}],
                          "covariates": ["x"],
                          "dimensions": [{"name": "country", "max_values": values}]})
    with start_redis() as server:
        client = connect(server.url)
        store = PartitionStore(client)
        builder = BatchBuilder(store, Topics("x", "v"), BUCKETS, 600.0, 100_000)
        builder.set_experiments({"b": ExperimentLayout.of(d)})
        p, epoch = 0, store.claim(0)
        enc = msgspec.json.Encoder()
        offset = 0
        for start in range(0, units, 2000):
            recs = [RawRecord("x", offset + i, enc.encode({
                "experiment": "b", "unit": f"u{start + i}",
                "variation": "control" if (start + i) // values % 2 else "treatment",
                "ts": 1.7e9 + start + i, "covariates": {"x": float(i % 7)},
                "attributes": {"country": f"c{(start + i) % values}"}}))
                for i in range(min(2000, units - start))]
            out = builder.build(p, epoch, recs)
            assert store.apply(out.write).applied
            offset += len(recs)
        fields = int(client.hlen(keys.slice_matrices(p, "b", "country")))
        matrices = int(client.memory_usage(keys.slice_matrices(p, "b", "country"), samples=0) or 0)
        unit_values = sum(int(client.memory_usage(k, samples=0) or 0)
                          for k in client.scan_iter(f"{keys.tag(p)}:us:b:*", count=1000))
        client.close()
    assert fields == 2 * values, fields
    return {"units": units, "values": values, "arms": 2, "fields": fields,
            "bytes_per_value_arm": matrices / fields,
            "unit_value_bytes_per_unit": unit_values / units}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--units", type=int, default=100_000)
    ap.add_argument("--values", type=int, default=50)
    a = ap.parse_args()
    print(msgspec.json.encode(measure(a.units, a.values)).decode())


if __name__ == "__main__":
    main()
