"""CLI start-up: ``liftstream --help`` wall time, and launch → first Redis command of
``liftstream results ID`` (a listener on a free port timestamps the first bytes the command
sends; it never answers, and the command is killed then). Medians over repeated runs.

``python -m bench.startup``
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_EXE = str(Path(sys.executable).parent / "liftstream")


def help_seconds(runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([_EXE, "--help"], check=True, capture_output=True)
        out.append(time.perf_counter() - t0)
    return out


def first_redis_read_seconds(runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            listener.settimeout(30)
            port = listener.getsockname()[1]
            env = os.environ | {"LIFTSTREAM_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
            t0 = time.perf_counter()
            proc = subprocess.Popen([_EXE, "results", "any"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(30)
                    conn.recv(1)
                    out.append(time.perf_counter() - t0)
            finally:
                proc.kill()
                proc.wait()
    return out


def run(runs: int = 9) -> dict[str, Any]:
    h = help_seconds(runs)
    r = first_redis_read_seconds(runs)
    return {"runs": runs, "help_median_s": round(statistics.median(h), 3),
            "help_max_s": round(max(h), 3),
            "results_first_redis_read_median_s": round(statistics.median(r), 3),
            "results_first_redis_read_max_s": round(max(r), 3)}


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
