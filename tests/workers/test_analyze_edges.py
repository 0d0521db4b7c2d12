"""``liftstream analyze`` on the edge cases of issue 12 (items 1, 3, 6, 8), end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from estimators.multiple import holm
from workers.cli import main


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["analyze", *argv, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture()
def edge_csv(tmp_path: Path) -> str:
    rng = np.random.default_rng(12)
    n = 3000
    arm = np.repeat(["a", "b", "c"], n)
    g = np.repeat([0, 1, 2], n)
    frame = pd.DataFrame({
        "arm": arm,
        "revenue": np.where(g == 0, 0.0, rng.exponential(2.0, 3 * n)),  # control all 0
        "conv": (rng.random(3 * n) < 0.03 * (1 + 0.1 * g)).astype(int),
        "num": rng.poisson(2, 3 * n).astype(float),
        "den": np.where(g == 0, 0, rng.poisson(3, 3 * n) + 1).astype(float),
        "y": 10 + rng.normal(size=3 * n) + 0.05 * g,
    })
    path = tmp_path / "edge.csv"
    frame.to_csv(path, index=False)
    return str(path)


def test_degenerate_metrics_have_notes_not_huge_numbers(capsys: pytest.CaptureFixture[str],
                                                        edge_csv: str) -> None:
    """Control revenue 0 for every unit: control mean exactly 0, no relative effect, no SE
    (zero variance in the control only); ratio with denominator 0 in the control: null with
    a note naming it. Nothing anywhere exceeds 1e6 in magnitude."""
    doc = run_json(capsys, edge_csv, "--variation", "arm", "--control", "a",
                   "--metric", "revenue:numeric", "--ratio", "r=num/den")
    metrics = {m["metric"]: m for m in doc["slices"][0]["metrics"]}
    for comp in metrics["revenue"]["comparisons"]:
        d = comp["estimators"]["diff"]
        assert d["control_mean"] == 0.0 and d["rel_effect"] is None and d["p_value"] is None
        assert "control arm only" in d["note"]
    for comp in metrics["r"]["comparisons"]:
        d = comp["estimators"]["diff"]
        assert d["effect"] is None and "'den' sums to 0 in the control arm" in d["note"]
        assert comp["bayes"]["note"]

    def walk(x: object) -> None:
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, float):
            assert abs(x) < 1e6, x
    walk(doc["slices"][0]["metrics"])


def test_correction_adjusts_anytime_valid_p_values(capsys: pytest.CaptureFixture[str],
                                                   edge_csv: str) -> None:
    """``--correction holm`` fills adjusted_seq_p_value with Holm over the seq_p_values of
    each estimator across metrics × treatments; relative intervals and rel_se are reported."""
    doc = run_json(capsys, edge_csv, "--variation", "arm", "--control", "a",
                   "--metric", "conv:binary", "--metric", "y:numeric", "--correction", "holm")
    ests = [c["estimators"]["diff"] for m in doc["slices"][0]["metrics"]
            for c in m["comparisons"]]
    assert len(ests) == 4
    expected = holm([e["seq_p_value"] for e in ests])
    assert [e["adjusted_seq_p_value"] for e in ests] == pytest.approx(expected, rel=1e-12)
    for e in ests:
        assert e["rel_ci_low"] < e["rel_effect"] < e["rel_ci_high"] and e["rel_se"] > 0
