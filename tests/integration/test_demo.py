"""``liftstream demo``: the headless form returns results with the truth; Ctrl-C leaves nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from estimators.decision import decide_document
from workers.dev.embedded import free_port

CLI = str(Path(sys.executable).parent / "liftstream")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LIFTSTREAM_")}


def _descendants(pid: int) -> set[int]:
    """Every process whose ancestry leads to ``pid`` (children re-parented by setsid keep
    their parent pid)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out: set[int] = set()
    frontier = {pid}
    while frontier:
        nxt = {p for p, parent in parents.items() if parent in frontier} - out
        out |= nxt
        frontier = nxt
    return out


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return f"{pid} (gone)"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_headless_demo_prints_truth_and_results() -> None:
    port = free_port()
    proc = subprocess.run([CLI, "demo", "--duration", "30", "--json", "--api-port", str(port)],
                          env=_env(), capture_output=True, timeout=240)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["experiment"] == "demo"
    sl = doc["results"]["slices"][0]
    assert sum(v["n"] for v in sl["variations"]) > 1000
    assert [v["name"] for v in sl["variations"]] == ["control", "treatment_1", "treatment_2"]
    metrics = {m["metric"]: m for m in sl["metrics"]}
    assert set(doc["truth"]) <= set(metrics)
    for name, by_treatment in doc["truth"].items():
        comps = {c["treatment"]: c for c in metrics[name]["comparisons"]}
        for treatment in by_treatment:
            est = comps[treatment]["estimators"]
            assert est["diff"]["effect"] is not None
            assert "adjusted" in est
    kinds = {m["kind"] for m in sl["metrics"]}
    assert kinds == {"binary", "numeric", "ratio"}
    selection = metrics["revenue"]["comparisons"][0]["covariate_selection"]
    assert {c["name"] for c in selection} == {"pageviews", "support_tickets"}
    # the verdict follows its rule (estimators.decision) on the demo's own results
    verdict = decide_document(sl, "revenue", ["sessions"], {}, None, None)
    assert doc["results"]["decision"]["recommendation"] == verdict.recommendation
    assert doc["results"]["decision"]["reasons"] == list(verdict.reasons)
    assert metrics["revenue"]["comparisons"][0]["power"]["target_rel_mde"] == 0.05


def test_sigint_stops_every_child(tmp_path: Path) -> None:
    port = free_port()
    # the demo's output goes to a file: a pipe nobody reads fills up (its summary every 2 s)
    # and blocks the demo's next print, so it could never finish stopping
    out = (tmp_path / "demo.out").open("wb")
    # started with SIGINT ignored, as under a parent that ignores it (SIG_IGN is inherited
    # across exec, and Python then installs no KeyboardInterrupt handler): the demo must
    # still stop on SIGINT
    proc = subprocess.Popen([CLI, "demo", "--api-port", str(port), "--rate", "500"],
                            env=_env(), stdout=out, stderr=subprocess.STDOUT,
                            preexec_fn=_ignore_sigint)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("the demo's API never answered")
        children = _descendants(proc.pid)
        assert len(children) >= 7  # broker, redis, 2 workers, learner, alerter, api, simulator
        proc.send_signal(signal.SIGINT)
        try:  # bounded: children get 10 s after SIGTERM, then SIGKILL, then the servers stop
            rc = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the demo did not stop; still running: "
                                 f"{[_cmdline(p) for p in children if _alive(p)]}; output: "
                                 f"{(tmp_path / 'demo.out').read_bytes()[-2000:]!r}") from None
        assert rc == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
    time.sleep(0.5)
    left = [p for p in children if _alive(p)]
    assert left == [], f"processes left running: {left}"
