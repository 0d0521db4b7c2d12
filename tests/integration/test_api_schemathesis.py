"""schemathesis (every check, all phases) against the real ``liftstream api`` process: no 5xx,
every answer as documented in /openapi.json (status, body schema, headers, ``Allow``).

Bounded and deterministic: ``--generation-deterministic`` and at most 30 examples per
operation (about 1,000 requests, well under a minute). ``schemathesis.toml`` beside this file
says which operations may answer 422 to schema-valid data (rules across fields).
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from state.definition import parse_definition
from state.registry import Registry
from state.store import connect
from workers.settings import Settings

from .apikit import DirectIngest, Population, api_server, experiment_definition, experiment_messages

ADMIN = "schemathesis-admin-token"
CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_schemathesis_finds_nothing(redis_url: str, tmp_path: Path) -> None:
    client = connect(redis_url)
    Registry(client).create(parse_definition(experiment_definition("shop")))
    DirectIngest(client).feed(experiment_messages(Population("shop"), 0, 300))
    s = replace(Settings(), redis_url=redis_url, api_admin_tokens=(ADMIN,),
                api_read_tokens=("schemathesis-read-token",))
    exe = Path(sys.executable).with_name("schemathesis")
    with api_server(s, tmp_path, "--no-lag") as server:
        run = subprocess.run(
            [str(exe), "--config-file", str(CONFIG), "--no-color", "run",
             f"{server.url}/openapi.json", "-H", f"Authorization: Bearer {ADMIN}",
             "--checks", "all", "--max-examples", "30", "--generation-deterministic",
             "--workers", "1", "--request-timeout", "20"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300)
        log = server.log_text()
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", out)
    assert counts is not None, out[-3000:]
    assert int(counts[1]) == int(counts[2]) >= 500, counts[0]
    assert "Selected: 10/10" in out and "Tested: 10" in out
    assert "Traceback" not in log, log[-3000:]
