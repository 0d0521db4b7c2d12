"""``liftstream analyze`` end to end on the real data sets, plus its error messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.support.data import DATA, HILLSTROM
from workers.cli import main

HILL = str(HILLSTROM)
CATS = str(DATA / "cookie_cats.csv")


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["analyze", *argv, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_hillstrom_diff_and_cuped(capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(capsys, HILL, "--variation", "segment", "--control", "No E-Mail",
                   "--metric", "spend:numeric", "--metric", "visit:binary",
                   "--covariate", "recency", "--covariate", "history")
    (sl,) = doc["slices"]
    assert [v["name"] for v in sl["variations"]] == ["No E-Mail", "Mens E-Mail", "Womens E-Mail"]
    assert sum(v["n"] for v in sl["variations"]) == 64000
    frame = pd.read_csv(HILL)
    for metric in sl["metrics"]:
        for comp in metric["comparisons"]:
            est = comp["estimators"]
            assert set(est) == {"diff", "cuped", "mlrate", "adjusted"}
            y = frame[metric["metric"]]
            t = y[frame.segment == comp["treatment"]]
            c = y[frame.segment == "No E-Mail"]
            assert est["diff"]["effect"] == pytest.approx(t.mean() - c.mean(), rel=1e-9)
            assert est["cuped"]["se"] <= est["diff"]["se"]
            assert est["cuped"]["variance_reduction"] > 0
    assert sl["metrics"][1]["kind"] == "binary"
    assert sl["metrics"][1]["comparisons"][0]["bayes"]["model"] == "normal-normal"


def test_cookie_cats_reports_candidate_balance(capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(capsys, CATS, "--variation", "version", "--control", "gate_30",
                   "--metric", "retention_7", "--in-experiment", "sum_gamerounds",
                   "--in-experiment", "retention_1")
    comp = doc["slices"][0]["metrics"][0]["comparisons"][0]
    sel = {c["name"]: c for c in comp["covariate_selection"]}
    assert set(sel) == {"sum_gamerounds", "retention_1"}
    frame = pd.read_csv(CATS)
    from scipy import stats
    r1 = frame.retention_1.astype(float)
    p = stats.ttest_ind(r1[frame.version == "gate_40"], r1[frame.version == "gate_30"],
                        equal_var=False).pvalue
    assert sel["retention_1"]["p_value"] == pytest.approx(p, rel=1e-6)
    assert sel["retention_1"]["selected"] == (p > 0.05)
    assert "lin_crespo" in comp["estimators"]
    assert doc["slices"][0]["metrics"][0]["kind"] == "binary"


def test_by_and_timeline_agree_with_direct_analysis(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    n = 6000
    frame = pd.DataFrame({
        "arm": rng.choice(["c", "t"], n), "country": rng.choice(["de", "fr", "us"], n),
        "x": rng.normal(size=n), "ts": rng.permutation(n)})
    frame["y"] = frame.x + (frame.arm == "t") * 0.2 + rng.normal(size=n)
    path = tmp_path / "units.csv"
    frame.to_csv(path, index=False)
    common = ["--variation", "arm", "--control", "c", "--metric", "y", "--covariate", "x"]
    by = run_json(capsys, str(path), *common, "--by", "country")
    assert sorted(s["by"]["country"] for s in by["slices"]) == ["de", "fr", "us"]
    for sl in by["slices"]:
        sub = tmp_path / f"{sl['by']['country']}.csv"
        frame[frame.country == sl["by"]["country"]].to_csv(sub, index=False)
        alone = run_json(capsys, str(sub), *common)["slices"][0]
        for est in ("diff", "cuped"):
            a = sl["metrics"][0]["comparisons"][0]["estimators"][est]
            b = alone["metrics"][0]["comparisons"][0]["estimators"][est]
            assert a["effect"] == pytest.approx(b["effect"], rel=1e-9)
            assert a["se"] == pytest.approx(b["se"], rel=1e-9)
    tl = run_json(capsys, str(path), *common, "--timeline", "ts", "--points", "4")
    (sl,) = tl["slices"]
    points = sl["timeline"]
    assert [p["rows"] for p in points] == [1500, 3000, 4500, 6000]
    first = frame.sort_values("ts").head(1500)
    first_path = tmp_path / "first.csv"
    first.to_csv(first_path, index=False)
    early = run_json(capsys, str(first_path), *common)["slices"][0]
    for p, ref in ((points[0], early), (points[-1], sl)):
        a = p["metrics"][0]["comparisons"][0]["estimators"]["cuped"]
        b = ref["metrics"][0]["comparisons"][0]["estimators"]["cuped"]
        assert a["effect"] == pytest.approx(b["effect"], rel=1e-9)
        assert a["se"] == pytest.approx(b["se"], rel=1e-9)


def test_ratio_metric_and_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(1)
    n = 4000
    frame = pd.DataFrame({"arm": rng.choice(["a", "b"], n, p=[0.3, 0.7]),
                          "sessions": rng.poisson(3, n) + 1})
    frame["revenue"] = frame.sessions * rng.gamma(2.0, 1.0, n)
    path = tmp_path / "r.csv"
    frame.to_csv(path, index=False)
    doc = run_json(capsys, str(path), "--variation", "arm", "--control", "a",
                   "--ratio", "rps=revenue/sessions", "--weights", "a=0.3,b=0.7")
    sl = doc["slices"][0]
    assert sl["srm"]["flagged"] is False
    m = sl["metrics"][0]
    assert m["kind"] == "ratio"
    ratio = {k: g.revenue.sum() / g.sessions.sum() for k, g in frame.groupby("arm")}
    eff = m["comparisons"][0]["estimators"]["diff"]["effect"]
    assert eff == pytest.approx(ratio["b"] - ratio["a"], rel=1e-9)
    flagged = run_json(capsys, str(path), "--variation", "arm", "--control", "a",
                       "--ratio", "rps=revenue/sessions")
    assert flagged["slices"][0]["srm"]["flagged"] is True


@pytest.mark.parametrize("argv,needle", [
    (["--variation", "segmentx", "--control", "x", "--metric", "spend"], "'segmentx'"),
    (["--variation", "segment", "--control", "Nope", "--metric", "spend"], "'Nope'"),
    (["--variation", "segment", "--control", "No E-Mail", "--metric", "zip_code"],
     "'zip_code' is not numeric"),
    (["--variation", "segment", "--control", "No E-Mail", "--metric", "spend:binary"],
     "'spend' is declared binary"),
    (["--variation", "segment", "--control", "No E-Mail", "--metric", "spend",
      "--weights", "a=1"], "unknown variation 'a'"),
    (["--variation", "segment", "--control", "No E-Mail", "--ratio", "bad"], "NAME=NUM_COL"),
    (["--variation", "segment", "--control", "No E-Mail", "--metric", "spend",
      "--alpha", "2"], "alpha"),
])
def test_bad_input_exits_nonzero_naming_the_problem(
        argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", HILL, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err
    assert len(err.splitlines()) == 1


def test_table_format_is_readable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", HILL, "--variation", "segment", "--control", "No E-Mail",
                 "--metric", "visit", "--covariate", "history"]) == 0
    out = capsys.readouterr().out
    assert "visit (binary): Mens E-Mail vs No E-Mail" in out
    assert "cuped" in out and "anytime CI" in out
