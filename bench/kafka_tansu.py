"""Measure the embedded Tansu broker: start time, first group join, consumer throughput.

Usage: ``python -m bench.kafka_tansu [--messages 200000] [--partitions 4]``. Prints one JSON
document. Everything runs against a broker started here on a loopback port.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

from stream.kafka import TopicPartition, ensure_topics, make_consumer, make_producer
from workers.dev.embedded import start_broker


def main() -> None:
    """Run the measurements and print them as JSON."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=4)
    args = ap.parse_args()
    n, parts = args.messages, args.partitions
    out: dict[str, float | int] = {"messages": n, "partitions": parts}

    t = time.monotonic()
    with start_broker() as broker:
        out["broker_start_s"] = round(time.monotonic() - t, 3)
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        ensure_topics(broker.bootstrap, {topic: parts})

        producer = make_producer(broker.bootstrap, linger_ms=20, batch_size=256 * 1024)
        t = time.monotonic()
        for i in range(n):
            unit = f"u{i % 5000}"
            value = {"type": "event", "unit": unit, "experiment": "e1", "metric": "revenue",
                     "value": i * 0.01, "ts": 1_700_000_000_000 + i}
            producer.send(topic, key=unit.encode(), value=json.dumps(value).encode())
        producer.flush()
        producer.close()
        out["produce_msgs_per_s"] = round(n / (time.monotonic() - t))

        for mode in ("assign", "group", "group+json"):
            group = None if mode == "assign" else f"bench-{uuid.uuid4().hex[:8]}"
            consumer = make_consumer(broker.bootstrap, group, None if group is None else [topic],
                                     max_poll_records=5000)
            if group is None:
                consumer.assign([TopicPartition(topic, p) for p in range(parts)])
            t0 = time.monotonic()
            first: float | None = None
            got = 0
            while got < n and time.monotonic() - t0 < 300:
                for records in consumer.poll(timeout_ms=200).values():
                    if first is None:
                        first = time.monotonic()
                    if mode == "group+json":
                        for r in records:
                            json.loads(r.value)
                    got += len(records)
            end = time.monotonic()
            consumer.close()
            assert first is not None and got == n, (mode, got)
            out[f"{mode}_first_records_after_s"] = round(first - t0, 2)
            out[f"{mode}_consume_msgs_per_s"] = round(n / (end - first))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
