"""``liftstream plan`` and ``analyze --prior empirical --past`` end to end, with their errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from tests.support.data import DATA, HILLSTROM
from workers.cli import main

HILL = str(HILLSTROM)
CATS = str(DATA / "cookie_cats.csv")
Z = NormalDist().inv_cdf


def test_plan_cookie_cats_binary_matches_the_closed_form(capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    assert main(["plan", CATS, "--variation", "version", "--control", "gate_30",
                 "--metric", "retention_7:binary", "--mde", "0.02", "--daily-units", "10000",
                 "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    y = pd.read_csv(CATS)
    p = y.retention_7[y.version == "gate_30"].mean()
    (plan,) = doc["plans"]
    groups = [g.retention_7.astype(float) for _, g in y.groupby("version")]
    pooled = sum(((g - g.mean()) ** 2).sum() for g in groups) / (len(y) - 2)
    n_arm = 2 * (Z(0.975) + Z(0.8)) ** 2 * pooled / (0.02 * p) ** 2
    assert plan["fixed_units_per_arm"] == math.ceil(n_arm)
    assert plan["fixed_units"] == 2 * math.ceil(n_arm)
    assert plan["fixed_days"] == pytest.approx(plan["fixed_units"] / 10000)
    assert plan["sequential_units"] > plan["fixed_units"]


def test_plan_table_with_covariates(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", HILL, "--variation", "segment", "--control", "No E-Mail",
                 "--metric", "spend", "--covariate", "history", "--mde", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "none" in out and "covariates" in out and "give --daily-units" in out


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--mde", "0"], "--mde must be > 0"),
    (["--mde", "0.02", "--alpha", "2"], "--alpha must be in (0, 1)"),
    (["--mde", "0.02", "--daily-units", "-1"], "--daily-units must be > 0"),
    (["--mde", "0.02", "--covariate", "nope"], "column 'nope' not found"),
])
def test_plan_errors(capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
                     ) -> None:
    assert main(["plan", CATS, "--variation", "version", "--control", "gate_30",
                 "--metric", "sum_gamerounds", *argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_plan_bad_control_and_binary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", CATS, "--variation", "version", "--control", "nope",
                 "--metric", "retention_7", "--mde", "0.02"]) == 2
    assert "control 'nope' not found" in capsys.readouterr().err
    assert main(["plan", CATS, "--variation", "version", "--control", "gate_30",
                 "--metric", "sum_gamerounds:binary", "--mde", "0.02"]) == 2
    assert "declared binary" in capsys.readouterr().err


def _past_csv(tmp_path: Path, k: int) -> str:
    rng = np.random.default_rng(3)
    s = rng.uniform(0.01, 0.03, k)
    frame = pd.DataFrame({"experiment": [f"e{i}" for i in range(k)], "metric": "retention_7",
                          "rel_effect": rng.normal(0, 0.05, k) + rng.normal(0, s),
                          "rel_se": s, "stopped_at": 1.7e9})
    path = tmp_path / "past.csv"
    frame.to_csv(path, index=False)
    return str(path)


def test_analyze_empirical_prior_from_past_csv(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    base = ["analyze", CATS, "--variation", "version", "--control", "gate_30",
            "--metric", "retention_7:binary", "--format", "json"]
    assert main([*base, "--prior", "empirical", "--past", _past_csv(tmp_path, 30)]) == 0
    doc = json.loads(capsys.readouterr().out)
    prior = doc["prior"]["metrics"]["retention_7"]
    assert prior["source"] == "empirical" and prior["k"] == 30
    assert 0.02 < prior["sigma"] < 0.1
    assert [x["experiment"] for x in prior["experiments"]][:2] == ["e0", "e1"]
    emp = doc["slices"][0]["metrics"][0]["comparisons"][0]["bayes"]
    assert main(base) == 0
    fixed = json.loads(capsys.readouterr().out)["slices"][0]["metrics"][0]["comparisons"][0]
    assert emp["precision_weight"] < fixed["bayes"]["precision_weight"]  # tighter prior
    assert "power" in fixed and fixed["power"]["mde"] > 0
    # too few: configured σ with a note
    assert main([*base, "--prior", "empirical", "--past", _past_csv(tmp_path, 3)]) == 0
    few = json.loads(capsys.readouterr().out)["prior"]["metrics"]["retention_7"]
    assert few["source"] == "configured" and few["sigma"] == 0.3 and "fewer than 5" in few["note"]


@pytest.mark.parametrize(("content", "suffix", "fragment"), [
    ("{not json", ".json", "not valid JSON"),
    ('[{"metrics": {}}]', ".json", "needs 'experiment'"),
    ("experiment,metric\ne1,m\n", ".csv", "column 'rel_effect' missing"),
    ("experiment,metric,rel_effect,rel_se\ne1,m,0.1,0\n", ".csv", "rel_se > 0"),
])
def test_analyze_past_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str,
                             suffix: str, fragment: str) -> None:
    path = tmp_path / f"past{suffix}"
    path.write_text(content)
    assert main(["analyze", CATS, "--variation", "version", "--control", "gate_30",
                 "--metric", "retention_7", "--prior", "empirical", "--past", str(path)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert main(["analyze", CATS, "--variation", "version", "--control", "gate_30",
                 "--metric", "retention_7", "--past", str(path)]) == 2
    assert "--past is used with --prior empirical" in capsys.readouterr().err
