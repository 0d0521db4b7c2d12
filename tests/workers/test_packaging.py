"""What a wheel ships: every package under workers/ is a package, package data is found."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_every_workers_directory_with_modules_is_a_package() -> None:
    dirs = {p.parent for p in (ROOT / "workers").rglob("*.py")}
    assert {d for d in dirs if not (d / "__init__.py").is_file()} == set()
    assert {d.name for d in dirs} >= {"api", "alerter", "learner", "dev", "batch", "cli"}


def test_package_data_globs_match_files() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found: dict[str, int] = {}
    for package, globs in cfg["package-data"].items():
        base = ROOT.joinpath(*package.split("."))
        found[package] = sum(len(list(base.glob(g))) for g in globs)
    assert found["workers.api"] >= 1 and found["state"] >= 5, found
    assert (ROOT / "workers/api/static/dashboard.html").is_file()
