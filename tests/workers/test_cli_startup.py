"""The CLI imports a command's module only when that command runs (fast ``--help``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from workers.cli import COMMANDS, build_parser

HEAVY = ("scipy", "fastapi", "river", "kafka", "pandas", "redis")


def _imported_after(code: str) -> list[str]:
    probe = (f"import sys\n{code}\n"
             f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.strip()
    return [m for m in out.split(",") if m]


def test_top_level_help_imports_no_heavy_module() -> None:
    code = ("import contextlib, io\nfrom workers.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    main(['--help'])")
    assert _imported_after(code) == []


def test_every_command_is_listed_and_builds() -> None:
    full = build_parser()
    sub = next(a for a in full._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)  # type: ignore[arg-type]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_help_runs(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from workers.cli import main

    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert f"liftstream {command}" in capsys.readouterr().out
