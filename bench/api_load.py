"""Query-API load: results latency and throughput under 100 concurrent pollers, against
recomputing the same results from raw unit rows with ``liftstream analyze``.

Run: ``python -m bench.api_load [--units 1000000] [--pollers 100] [--seconds 10]``; prints one
JSON object. Starts its own Redis and a ``liftstream api`` child process (results cache at its
default, 1 s). The experiment has 4 variations × 10 metrics (4 binary, 6 numeric) plus one
pre-experiment covariate and one in-experiment candidate, spread over 32 partitions: each
partition's moment matrices are computed from the unit rows and written through
``PartitionStore.apply`` (the workers' Lua script), so the API reads exactly what ingest would
have stored. The same 1,000,000 unit rows are then analysed in batch (``analyze_frame``).

The pollers are asyncio tasks on keep-alive HTTP/1.1 connections with a minimal client (an
httpx client costs more CPU per request than the server does, and both share this machine).
Each poller sends its next request as soon as the previous answer arrived (closed loop: the
load is as high as the server allows), so requests/s is the server's capacity and the latency
includes queueing behind 99 other pollers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from estimators.analysis import AnalysisSettings
from estimators.moments import MomentMatrix
from state.layout import ExperimentLayout
from state.registry import Registry, parse_definition
from state.results import experiment_document_with
from state.store import BatchWrite, PartitionStore, connect
from workers.analyze import AnalyzeRequest, MetricColumn, analyze_frame
from workers.embedded import free_port, start_redis
from workers.settings import Settings, to_env

EXPERIMENT = "load"
VARIATIONS = ("control", "t1", "t2", "t3")
BINARY = tuple(f"b{i}" for i in range(4))
NUMERIC = tuple(f"m{i}" for i in range(6))
PARTITIONS = 32
TOKEN = "bench-read-token"


def definition() -> dict[str, Any]:
    metrics = [{"name": m, "event": m, "aggregate": "binary"} for m in BINARY]
    metrics += [{"name": m, "event": m, "aggregate": "sum"} for m in NUMERIC]
    return {"id": EXPERIMENT, "variations": list(VARIATIONS), "metrics": metrics,
            "covariates": ["x"],
            "in_experiment": [{"name": "views", "event": "view", "aggregate": "count"}]}


def unit_rows(units: int, seed: int = 0) -> pd.DataFrame:
    """Unit-level rows: variation, 10 metrics, covariate x, candidate views."""
    rng = np.random.default_rng(seed)
    v = rng.integers(0, len(VARIATIONS), units)
    x = rng.normal(size=units)
    cols: dict[str, Any] = {"variation": np.array(VARIATIONS)[v]}
    for i, m in enumerate(BINARY):
        p = 1 / (1 + np.exp(-(-1.0 + 0.5 * x + 0.02 * v + 0.1 * i)))
        cols[m] = (rng.random(units) < p).astype(np.float64)
    for i, m in enumerate(NUMERIC):
        cols[m] = 10.0 + i + 3.0 * x + 0.05 * v + rng.normal(0.0, 2.0, units)
    cols["views"] = rng.poisson(3.0, units).astype(np.float64)
    cols["x"] = x
    return pd.DataFrame(cols)


def write_matrices(client: Any, frame: pd.DataFrame) -> float:
    """Each partition's per-variation matrices, applied with the workers' script; seconds."""
    t0 = time.perf_counter()
    d = parse_definition(definition())
    Registry(client).create(d, replace=True)
    lay = ExperimentLayout.of(d)
    store = PartitionStore(client)
    store.set_partition_count(PARTITIONS)
    values = frame[list(lay.columns)].to_numpy(dtype=np.float64)
    part = np.arange(len(frame)) % PARTITIONS
    var = frame["variation"].to_numpy()
    for p in range(PARTITIONS):
        w = BatchWrite(p, store.claim(p))
        for name in VARIATIONS:
            rows = values[(part == p) & (var == name)]
            m = MomentMatrix.from_rows(lay.columns, rows)
            w.matrices[(EXPERIMENT, name)] = (m.shift, m.sums)
            w.counters[f"{EXPERIMENT}:exposures"] += len(rows)
        w.last_event_ts = time.time()
        outcome = store.apply(w)
        if not outcome.applied:
            raise RuntimeError(f"partition {p}: {outcome}")
    return time.perf_counter() - t0


@contextmanager
def api_server(s: Settings, log_dir: Path) -> Iterator[str]:
    """``liftstream api`` (no lag monitor) on a free port; yields its base URL."""
    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFTSTREAM_")} | to_env(s)
    exe = Path(sys.executable).with_name("liftstream")
    with open(log_dir / "api.log", "wb") as log:
        proc = subprocess.Popen([str(exe), "api", "--host", "127.0.0.1", "--port", str(port),
                                 "--no-lag", "--log-level", "warning"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError((log_dir / "api.log").read_text(errors="replace"))
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("liftstream api did not start")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()  # our own child, by its handle
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _poller(host: str, port: int, path: str, until: float, latencies: list[float],
                  errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
               f"Accept: application/json\r\n\r\n").encode()
    try:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            writer.write(request)
            status = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            if not status.startswith(b"HTTP/1.1 200"):
                errors.append(status.decode(errors="replace").strip())
                continue
            latencies.append(time.perf_counter() - t0)
    finally:
        writer.close()


async def _load(host: str, port: int, path: str, pollers: int, seconds: float
                ) -> tuple[list[float], list[str], float]:
    latencies: list[float] = []
    errors: list[str] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(_poller(host, port, path, t0 + seconds, latencies, errors)
                           for _ in range(pollers)))
    return latencies, errors, time.perf_counter() - t0


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line == name or line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


def run(units: int = 1_000_000, pollers: int = 100, seconds: float = 10.0) -> dict[str, Any]:
    """Measure; returns the figures (also what ``main`` prints)."""
    import httpx

    t_all = time.perf_counter()
    frame = unit_rows(units)
    with start_redis() as redis_server, tempfile.TemporaryDirectory() as tmp:
        client = connect(redis_server.url)
        write_s = write_matrices(client, frame)
        d = Registry(client).get(EXPERIMENT)
        assert d is not None
        t0 = time.perf_counter()
        for _ in range(5):
            live = experiment_document_with(client, d)
        recompute_s = (time.perf_counter() - t0) / 5
        s = replace(Settings(), redis_url=redis_server.url, api_read_tokens=(TOKEN,))
        with api_server(s, Path(tmp)) as url:
            host, port = url.removeprefix("http://").split(":")
            path = f"/v1/experiments/{EXPERIMENT}/results"
            first = httpx.get(url + path, headers={"Authorization": f"Bearer {TOKEN}"},
                              timeout=30)
            first.raise_for_status()
            body_bytes = len(first.content)
            single, _, _ = asyncio.run(_load(host, int(port), path, 1, 2.0))
            latencies, errors, wall = asyncio.run(_load(host, int(port), path, pollers,
                                                        seconds))
            metrics = httpx.get(url + "/metrics",
                                headers={"Authorization": f"Bearer {TOKEN}"}).text
        misses = _metric(metrics, 'liftstream_api_results_cache_total{outcome="miss"}')
        route = 'route="/v1/experiments/{experiment_id}/results"'
        in_app = (_metric(metrics, f"liftstream_api_request_duration_seconds_sum{{{route}}}")
                  / _metric(metrics, f"liftstream_api_request_duration_seconds_count{{{route}}}"))
    req = AnalyzeRequest(variation="variation", control="control",
                         metrics=tuple(MetricColumn(m, "binary") for m in BINARY)
                         + tuple(MetricColumn(m, "numeric") for m in NUMERIC),
                         covariates=("x",), in_experiment=("views",), weights=None,
                         settings=AnalysisSettings())
    t0 = time.perf_counter()
    batch = analyze_frame(frame, req)
    analyze_s = time.perf_counter() - t0
    lat = np.array(latencies)
    p50, p99 = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
    a = live["slices"][0]["metrics"][5]["comparisons"][2]["estimators"]["adjusted"]["effect"]
    b = batch["slices"][0]["metrics"][5]["comparisons"][2]["estimators"]["adjusted"]["effect"]
    return {
        "units": units, "variations": len(VARIATIONS), "metrics": len(BINARY) + len(NUMERIC),
        "partitions": PARTITIONS, "pollers": pollers, "seconds": round(wall, 2),
        "requests": len(latencies), "errors": len(errors),
        "requests_per_second": round(len(latencies) / wall, 1),
        "p50_ms": round(p50 * 1e3, 2), "p99_ms": round(p99 * 1e3, 2),
        "mean_ms": round(float(lat.mean()) * 1e3, 2),
        "in_app_mean_ms": round(in_app * 1e3, 3),
        "single_poller_p50_ms": round(float(np.percentile(single, 50)) * 1e3, 2),
        "single_poller_requests_per_second": round(len(single) / 2.0, 1),
        "response_bytes": body_bytes,
        "results_computations": int(misses),
        "recompute_from_redis_ms": round(recompute_s * 1e3, 1),
        "write_matrices_s": round(write_s, 2),
        "analyze_raw_rows_s": round(analyze_s, 2),
        "ratio_analyze_over_p50": round(analyze_s / p50, 1),
        "ratio_analyze_over_single_poller_p50": round(
            analyze_s / float(np.percentile(single, 50)), 1),
        "ratio_analyze_over_redis_recompute": round(analyze_s / recompute_s, 1),
        "adjusted_effect_rel_diff": abs(a - b) / abs(b) if b else abs(a - b),
        "total_s": round(time.perf_counter() - t_all, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--units", type=int, default=1_000_000)
    ap.add_argument("--pollers", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args(argv)
    out = run(args.units, args.pollers, args.seconds)
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
