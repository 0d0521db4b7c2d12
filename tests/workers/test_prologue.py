"""The one command prologue: failures become one line on stderr and an exit code."""

from __future__ import annotations

import pytest
import redis

from workers.cli.prologue import CommandError, guarded, run
from workers.settings import SettingsError


def _raise(exc: Exception) -> int:
    raise exc


@pytest.mark.parametrize(("exc", "code", "line"), [
    (SettingsError("LIFTSTREAM_X: expected a number, got 'y'"), 2,
     "liftstream demo-cmd: error: LIFTSTREAM_X: expected a number, got 'y'"),
    (CommandError("unknown experiment 'e'"), 2,
     "liftstream demo-cmd: error: unknown experiment 'e'"),
    (CommandError("a stored definition is invalid", 1), 1,
     "liftstream demo-cmd: error: a stored definition is invalid"),
    (redis.ConnectionError("refused"), 1,
     "liftstream demo-cmd: error: Redis is unavailable: refused"),
    (ValueError("bad --flag"), 2, "liftstream demo-cmd: error: bad --flag"),
])
def test_failures_map_to_exit_codes(exc: Exception, code: int, line: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert guarded("demo-cmd", lambda: _raise(exc), usage_errors=(ValueError,)) == code
    assert capsys.readouterr().err.strip() == line


def test_unexpected_errors_are_not_swallowed() -> None:
    with pytest.raises(ValueError):
        guarded("demo-cmd", lambda: _raise(ValueError("a bug")))


def test_run_loads_settings_first(monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LIFTSTREAM_PARTITIONS", "many")
    assert run("demo-cmd", lambda settings: 0) == 2
    err = capsys.readouterr().err
    assert err.startswith("liftstream demo-cmd: error: LIFTSTREAM_PARTITIONS")
    monkeypatch.delenv("LIFTSTREAM_PARTITIONS")
    assert run("demo-cmd", lambda settings: settings.partitions) == 12
