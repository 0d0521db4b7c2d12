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

``python -m bench.api_load --healthz-under-load``: the ``healthz_under_load`` figure. A large
experiment (64 variations × 10 metrics) is stored; 6 clients (a separate process) request its
results with a random ``alpha`` each time (defeating the cache, so every request needs a
computation), while a prober (this process, one blocking socket) sends ``GET /healthz``
every 20 ms and records the latency; reported: the probe's p50/p99/max with and without
the load, the results requests answered and those refused with 503 ``busy``.
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

from estimators import document
from estimators.analysis import AnalysisSettings
from estimators.moments import MomentMatrix
from state.definition import parse_definition
from state.layout import ExperimentLayout
from state.registry import Registry
from state.results import experiment_document_with
from state.store import BatchWrite, PartitionStore, connect
from workers.batch.analyze import AnalyzeRequest, analyze_frame
from workers.batch.columns import MetricColumn
from workers.dev.embedded import free_port, start_redis
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


def write_matrices(client: Any, frame: pd.DataFrame, defn: dict[str, Any] | None = None,
                   variations: tuple[str, ...] = VARIATIONS) -> float:
    """Each partition's per-variation matrices, applied with the workers' script; seconds."""
    t0 = time.perf_counter()
    d = parse_definition(defn or definition())
    Registry(client).create(d, replace=True)
    lay = ExperimentLayout.of(d)
    store = PartitionStore(client)
    store.set_partition_count(PARTITIONS)
    values = frame[list(lay.columns)].to_numpy(dtype=np.float64)
    part = np.arange(len(frame)) % PARTITIONS
    var = frame["variation"].to_numpy()
    for p in range(PARTITIONS):
        w = BatchWrite(p, store.claim(p))
        for name in variations:
            rows = values[(part == p) & (var == name)]
            m = MomentMatrix.from_rows(lay.columns, rows)
            w.matrices[(d.id, name)] = (m.shift, m.sums)
            w.counters[f"{d.id}:exposures"] += len(rows)
        w.last_event_ts = time.time()
        outcome = store.apply(w)
        if not outcome.applied:
            raise RuntimeError(f"partition {p}: {outcome}")
    return time.perf_counter() - t0


@contextmanager
def api_server(s: Settings, log_dir: Path, *args: str) -> Iterator[str]:
    """``liftstream api`` (no lag monitor) on a free port; yields its base URL."""
    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFTSTREAM_")} | to_env(s)
    exe = Path(sys.executable).with_name("liftstream")
    with open(log_dir / "api.log", "wb") as log:
        proc = subprocess.Popen([str(exe), "api", "--host", "127.0.0.1", "--port", str(port),
                                 "--no-lag", "--log-level", "warning", *args], env=env,
                                stdout=log,
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
    a, b = (document.parse(x).first.metrics[5].comparisons[2].estimators["adjusted"].effect
            for x in (live, batch))
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


# --------------------------------------------------------------------------- healthz_under_load

LARGE = "large"
LARGE_VARIATIONS = tuple(["control"] + [f"t{i}" for i in range(1, 64)])


def large_definition() -> dict[str, Any]:
    """64 variations × 10 metrics (4 binary, 6 numeric), covariate x, candidate views."""
    return {**definition(), "id": LARGE, "variations": list(LARGE_VARIATIONS)}


def large_rows(units: int, seed: int = 1) -> pd.DataFrame:
    """:func:`unit_rows` spread over the 64 variations."""
    frame = unit_rows(units, seed)
    rng = np.random.default_rng(seed + 1)
    frame["variation"] = np.array(LARGE_VARIATIONS)[rng.integers(0, 64, units)]
    return frame


async def _cache_buster(host: str, port: int, until: float, seed: int,
                        counts: dict[str, int]) -> None:
    rng = np.random.default_rng(seed)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < until:
            alpha = float(rng.uniform(0.001, 0.2))
            writer.write((f"GET /v1/experiments/{LARGE}/results?alpha={alpha:.12f} HTTP/1.1\r\n"
                          f"Host: {host}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").encode())
            status = await reader.readline()
            length, close = 0, False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                if name.strip().lower() == b"connection" and b"close" in value.lower():
                    close = True
            await reader.readexactly(length)
            code = status.split(b" ")[1].decode() if b" " in status else "?"
            counts[code] = counts.get(code, 0) + 1
            if code == "503":
                await asyncio.sleep(0.05)  # a polite client honours Retry-After, briefly
            if close:
                break
    finally:
        writer.close()


def _cache_busters(host: str, port: int, clients: int, seconds: float, out: Any) -> None:
    """The load process: ``clients`` connections, each a closed loop of random-alpha requests."""
    counts: dict[str, int] = {}

    async def main() -> None:
        until = time.perf_counter() + seconds
        await asyncio.gather(*(_cache_buster(host, port, until, 100 + i, counts)
                               for i in range(clients)))

    asyncio.run(main())
    out.put(counts)


def _probe(host: str, port: int, seconds: float, every: float = 0.02) -> list[float]:
    """``GET /healthz`` every ``every`` seconds on one keep-alive socket; latencies (s)."""
    import socket

    out: list[float] = []
    request = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    with socket.create_connection((host, port)) as sock:
        f = sock.makefile("rb")
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            sock.sendall(request)
            assert f.readline().startswith(b"HTTP/1.1 200")
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            f.read(length)
            out.append(time.perf_counter() - t0)
            time.sleep(max(0.0, every - (time.perf_counter() - t0)))
    return out


def _ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(values), q)) * 1e3, 2)


def healthz_under_load(units: int = 200_000, clients: int = 6, seconds: float = 20.0
                       ) -> dict[str, Any]:
    """``/healthz`` latency while ``clients`` request cache-busting results (see module doc)."""
    import multiprocessing

    import httpx

    frame = large_rows(units)
    with start_redis() as redis_server, tempfile.TemporaryDirectory() as tmp:
        client = connect(redis_server.url)
        write_matrices(client, frame, large_definition(), LARGE_VARIATIONS)
        s = replace(Settings(), redis_url=redis_server.url, api_read_tokens=(TOKEN,))
        with api_server(s, Path(tmp)) as url:
            host, port = url.removeprefix("http://").split(":")
            h = {"Authorization": f"Bearer {TOKEN}"}
            t0 = time.perf_counter()
            first = httpx.get(f"{url}/v1/experiments/{LARGE}/results?alpha=0.0123", headers=h,
                              timeout=60)
            one_s = time.perf_counter() - t0
            first.raise_for_status()
            idle = _probe(host, int(port), 3.0)
            ctx = multiprocessing.get_context("spawn")
            queue = ctx.Queue()
            load = ctx.Process(target=_cache_busters, args=(host, int(port), clients, seconds,
                                                            queue))
            load.start()
            time.sleep(1.0)  # the load process started and its requests are in flight
            busy = _probe(host, int(port), seconds - 2.0)
            counts = queue.get(timeout=seconds + 60)
            load.join(30)
    return {
        "variations": len(LARGE_VARIATIONS), "metrics": len(BINARY) + len(NUMERIC),
        "units": units, "clients": clients, "seconds": seconds,
        "results_bytes": len(first.content), "one_computation_s": round(one_s, 3),
        "healthz_idle_p50_ms": _ms(idle, 50), "healthz_idle_p99_ms": _ms(idle, 99),
        "healthz_p50_ms": _ms(busy, 50), "healthz_p99_ms": _ms(busy, 99),
        "healthz_max_ms": round(max(busy) * 1e3, 2), "healthz_probes": len(busy),
        "results_answered": counts.get("200", 0), "results_busy_503": counts.get("503", 0),
        "results_other": {k: v for k, v in counts.items() if k not in ("200", "503")},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--units", type=int, default=None)
    ap.add_argument("--pollers", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--healthz-under-load", action="store_true",
                    help="only the healthz_under_load figure (6 cache-busting clients)")
    args = ap.parse_args(argv)
    if args.healthz_under_load:
        out = healthz_under_load(args.units or 200_000, 6, args.seconds or 20.0)
    else:
        out = run(args.units or 1_000_000, args.pollers, args.seconds or 10.0)
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
