"""Per-message cost breakdown of one ``liftstream worker``, sampled by py-spy.

``py-spy record --pid --subprocesses`` samples the worker and its fetch process
(``--nonblocking``: they are not paused) while it ingests the benchmark's messages; each
function's *self* samples ÷ the sampling rate ÷ the messages is its cost in µs per message,
and each process's samples the same way are its CPU per message. Needs ``py-spy``
(``pip install py-spy``); without it the breakdown reports why it is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from state.store import connect, partition_count, read_counters
from workers.settings import Settings, to_env

RATE = 250  # samples per second


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def self_costs(raw: str) -> tuple[Counter[str], Counter[str]]:
    """Self samples per function, and samples per process (``fetch`` for the fetch process,
    ``worker`` for the rest), from py-spy's raw (collapsed-stack) output.

    >>> c, per = self_costs("a (x.py:1);b (y.py:2) 3\\n"
    ...                     'process 9:"python -c from stream.fetch_child …";a (x.py:1) 1\\n')
    >>> c.most_common(), per.most_common()
    ([('b (y.py)', 3), ('a (x.py)', 1)], [('worker', 3), ('fetch', 1)])
    """
    costs: Counter[str] = Counter()
    per_process: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        per_process["fetch" if "stream.fetch_child" in stack else "worker"] += int(count)
        if leaf.startswith("process "):
            continue  # a process sampled outside Python code
        name, _, where = leaf.partition(" (")
        file = where.split(":", 1)[0].rstrip(")")
        costs[f"{name} ({'/'.join(Path(file).parts[-2:])})"] += int(count)
    return costs, per_process


def profile(s: Settings, total: int, top: int = 5) -> dict[str, Any]:
    """Run one worker process on ``s``'s topics (already published, Redis flushed, the
    definition stored) under py-spy; the ``top`` functions by self time, µs per message."""
    spy = py_spy()
    if spy is None:
        return {"error": "py-spy not installed (pip install py-spy)"}
    client = connect(s.redis_url)
    exe = Path(sys.executable).parent / "liftstream"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LIFTSTREAM_")},
           **to_env(s)}
    worker = subprocess.Popen([str(exe), "worker", "--name", "profiled"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = Path(tempfile.mkdtemp()) / "profile.txt"
    spy_proc: subprocess.Popen[bytes] | None = None
    first = 0
    try:
        start = None
        while True:
            n = partition_count(client)
            done = int(read_counters(client, range(n)).get("messages", 0)) if n else 0
            if done and start is None:  # sample the ingest, not the start-up
                start, first = time.perf_counter(), done
                spy_proc = subprocess.Popen(
                    [spy, "record", "--pid", str(worker.pid), "--subprocesses", "--rate", str(RATE),
                     "--nonblocking", "--format", "raw", "-o", str(out)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if done >= total or worker.poll() is not None:
                break
            time.sleep(0.05)
        wall = time.perf_counter() - (start or time.perf_counter())
    finally:
        err = b""
        if spy_proc is not None:
            err = _stop(spy_proc)
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    if not out.exists():
        return {"error": f"py-spy wrote no profile: {err.decode(errors='replace')[-300:]}"}
    total -= first
    costs, per_process = self_costs(out.read_text())
    samples = sum(per_process.values())
    per_msg = 1e6 / RATE / total
    return {"messages": total, "samples": samples, "seconds": round(wall, 1),
            "us_per_message_sampled": round(samples * per_msg, 2),
            "us_per_message_by_process": {k: round(n * per_msg, 2)
                                          for k, n in sorted(per_process.items())},
            "top": [{"function": f, "share": round(n / max(samples, 1), 3),
                     "us_per_message": round(n * per_msg, 2)}
                    for f, n in costs.most_common(top)]}


def _stop(spy: subprocess.Popen[bytes]) -> bytes:
    spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
    try:
        return spy.communicate(timeout=60)[1] or b""
    except subprocess.TimeoutExpired:
        spy.kill()
        return b""


def markdown(prof: dict[str, Any]) -> list[str]:
    if "top" not in prof:
        return [f"- per-message cost breakdown: not measured ({prof.get('error', '?')})"]
    by = ", ".join(f"{k} {v} µs" for k, v in prof.get("us_per_message_by_process", {}).items())
    lines = [f"- per-message cost breakdown (py-spy, {prof['samples']:,} samples of one worker "
             f"and its fetch process, {prof['us_per_message_sampled']} µs/message sampled: "
             f"{by}), top five by self time:", "",
             "| function | share | µs / message |", "|---|---|---|"]
    lines += [f"| `{t['function']}` | {t['share']:.1%} | {t['us_per_message']} |"
              for t in prof["top"]]
    return [*lines, ""]
