"""``liftstream analyze --metric COL:quantile=Q[,Q]`` on a real data set, and its errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from workers.cli import main

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
HILL = str(DATA / "hillstrom.csv")


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["analyze", *argv, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_quantiles_of_a_real_column(capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(capsys, HILL, "--variation", "segment", "--control", "No E-Mail",
                   "--metric", "history:quantile=0.9,0.5", "--metric", "visit:binary")
    (sl,) = doc["slices"]
    names = [m["metric"] for m in sl["metrics"]]
    assert names == ["visit", "history:p50", "history:p90"]
    frame = pd.read_csv(HILL)
    for m in sl["metrics"][1:]:
        assert m["kind"] == "quantile" and m["accuracy"] == 0.01
        q = m["quantile"]
        for comp in m["comparisons"]:
            e = comp["estimators"]["quantile"]
            assert comp["primary"] == "quantile" and comp["power"] is None
            for arm, got in ((comp["treatment"], e["treatment_mean"]),
                             (comp["control"], e["control_mean"])):
                x = np.sort(frame.loc[frame.segment == arm, "history"].to_numpy())
                exact = x[math.ceil(len(x) * q) - 1]  # the order statistic of rank ⌈nq⌉
                assert abs(got - exact) <= 0.01 * exact * (1 + 1e-9)
            assert e["ci_low"] < e["effect"] < e["ci_high"]
            assert e["seq_ci_low"] < e["ci_low"] and e["rel_effect"] is not None


def _without_slice_bh(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _without_slice_bh(v) for k, v in x.items() if not k.startswith("slice_bh")}
    if isinstance(x, list):
        return [_without_slice_bh(v) for v in x]
    return x


def test_quantiles_in_slices_and_timeline(capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(capsys, HILL, "--variation", "segment", "--control", "No E-Mail",
                   "--metric", "history:quantile=0.5", "--by", "zip_code",
                   "--timeline", "recency", "--points", "3", "--quantile-accuracy", "0.005")
    for sl in doc["slices"]:
        (m,) = sl["metrics"]
        assert m["metric"] == "history:p50" and m["accuracy"] == 0.005
        assert len(sl["timeline"]) == 3
        last = sl["timeline"][-1]["metrics"][0]
        # the last point is every row (the slice document adds BH across slices beside)
        assert last["comparisons"] == _without_slice_bh(m["comparisons"])


@pytest.mark.parametrize("arg,says", [
    ("history:quantile=1.5", "must be in (0, 1)"),
    ("history:quantile=0", "must be in (0, 1)"),
    ("history:quantile=abc", "not a number"),
    ("history:quantile", "expected COL:quantile=Q"),
])
def test_bad_quantile_is_refused(capsys: pytest.CaptureFixture[str], arg: str,
                                 says: str) -> None:
    assert main(["analyze", HILL, "--variation", "segment", "--control", "No E-Mail",
                 "--metric", arg]) == 2
    assert says in capsys.readouterr().err


def test_bad_accuracy_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", HILL, "--variation", "segment", "--control", "No E-Mail",
                 "--metric", "history:quantile=0.5", "--quantile-accuracy", "0.1"]) == 2
    assert "--quantile-accuracy must be in [0.0001, 0.01]" in capsys.readouterr().err
