"""docs/architecture.md names real places: every ``file.py:function`` it cites exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
CITED = re.compile(r"`([\w/]+\.py):([\w.]+)`")


def test_every_cited_function_is_defined_in_its_file() -> None:
    cited = CITED.findall(DOC.read_text())
    assert len(cited) >= 10
    missing = []
    for path, dotted in cited:
        source = (ROOT / path).read_text() if (ROOT / path).exists() else ""
        for name in dotted.split("."):
            if not re.search(rf"^\s*(?:async\s+)?(?:def|class)\s+{name}\b", source, re.M):
                missing.append(f"{path}:{dotted}")
                break
    assert not missing, missing


def test_every_cited_file_exists() -> None:
    files = set(re.findall(r"`((?:workers|stream|state|estimators)/[\w/]+\.(?:py|lua))",
                           DOC.read_text()))
    assert files and not [f for f in files if not (ROOT / f).exists()]
