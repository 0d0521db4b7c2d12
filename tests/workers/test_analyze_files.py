"""``liftstream analyze`` on real-world files: missing values, repeated roles, and a generated
corpus of hostile CSVs that must never produce a traceback."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.cli import main

COMMON = ["--variation", "arm", "--control", "a", "--metric", "y", "--covariate", "x"]


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["analyze", *argv])
    out.flush()
    buffer = out.buffer
    assert isinstance(buffer, io.BytesIO)
    return rc, buffer.getvalue().decode(), err.getvalue()


def _frame(seed: int, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"arm": rng.choice(["a", "b"], n), "x": rng.normal(size=n)})
    frame["y"] = frame.x + (frame.arm == "b") * 0.3 + rng.normal(size=n)
    return frame


def _with_holes(frame: pd.DataFrame) -> pd.DataFrame:
    holed = frame.astype({"arm": object, "x": object, "y": object})
    holed.loc[[2, 9, 40], "y"] = np.nan
    holed.loc[[9, 17], "x"] = ""
    holed.loc[[30], "arm"] = np.nan
    return holed


def _estimators(doc: dict) -> dict:
    return doc["slices"][0]["metrics"][0]["comparisons"][0]["estimators"]


def test_default_names_column_count_first_row_and_the_option(tmp_path: Path) -> None:
    path = tmp_path / "holes.csv"
    frame = _frame(0)
    holed = frame.astype({"y": object})
    holed.loc[[4, 11, 12], "y"] = np.nan
    holed.to_csv(path, index=False)
    rc, _, err = _run(str(path), *COMMON)
    assert rc == 2
    assert err.count("\n") == 1
    assert "column 'y' has 3 missing values (first in data row 5)" in err
    assert "--missing drop" in err and "--missing zero" in err


def test_missing_variation_is_an_error_not_a_crash_and_never_zero_filled(
        tmp_path: Path) -> None:
    path = tmp_path / "arm.csv"
    frame = _frame(1).astype({"arm": object})
    frame.loc[[7], "arm"] = np.nan
    frame.loc[[8], "arm"] = "  "
    frame.to_csv(path, index=False)
    for mode in ("error", "zero"):
        rc, _, err = _run(str(path), *COMMON, "--missing", mode)
        assert rc == 2 and err.count("\n") == 1
        assert "column 'arm' has 2 missing values (first in data row 8)" in err
        assert "--missing drop" in err and "never filled" in err
    rc, out, _ = _run(str(path), *COMMON, "--missing", "drop", "--format", "json")
    assert rc == 0
    doc = json.loads(out)
    assert sum(v["n"] for v in doc["slices"][0]["variations"]) == 398
    assert doc["warnings"][0]["code"] == "rows_dropped"


def test_drop_analyses_the_complete_rows_and_says_how_many(tmp_path: Path) -> None:
    frame = _frame(2)
    holed = _with_holes(frame)
    path, complete = tmp_path / "holes.csv", tmp_path / "complete.csv"
    holed.to_csv(path, index=False)
    keep = ~frame.index.isin([2, 9, 40, 17, 30])
    frame[keep].to_csv(complete, index=False)
    rc, out, _ = _run(str(path), *COMMON, "--missing", "drop", "--format", "json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["warnings"] == [{"code": "rows_dropped", "detail": "5 of 400 rows dropped for "
                                "missing values ('arm': 1, 'y': 3, 'x': 2)"}]
    rc, ref_out, _ = _run(str(complete), *COMMON, "--format", "json")
    assert rc == 0
    ref = json.loads(ref_out)
    assert ref["warnings"] == []
    for name, e in _estimators(doc).items():
        assert e["effect"] == pytest.approx(_estimators(ref)[name]["effect"], rel=1e-12)
        assert e["se"] == pytest.approx(_estimators(ref)[name]["se"], rel=1e-12)
    rc, table, _ = _run(str(path), *COMMON, "--missing", "drop")
    assert rc == 0
    assert table.splitlines()[0] == ("warning [rows_dropped]: 5 of 400 rows dropped for "
                                     "missing values ('arm': 1, 'y': 3, 'x': 2)")


def test_zero_counts_missing_metric_and_covariate_values_as_zero(tmp_path: Path) -> None:
    frame = _frame(3)
    holed = _with_holes(frame)
    holed.loc[[30], "arm"] = "a"  # labels are never filled: keep this test about values
    path, filled = tmp_path / "holes.csv", tmp_path / "filled.csv"
    holed.to_csv(path, index=False)
    zeroed = frame.copy()
    zeroed.loc[[30], "arm"] = "a"
    zeroed.loc[[2, 9, 40], "y"] = 0.0
    zeroed.loc[[9, 17], "x"] = 0.0
    zeroed.to_csv(filled, index=False)
    rc, out, _ = _run(str(path), *COMMON, "--missing", "zero", "--format", "json")
    assert rc == 0
    rc2, ref, _ = _run(str(filled), *COMMON, "--format", "json")
    assert rc2 == 0
    a, b = json.loads(out), json.loads(ref)
    assert a["warnings"] == [] and a["slices"] == b["slices"]


@pytest.mark.parametrize("cell,needle", [
    ("abc", "column 'y' is not numeric: value 'abc' in data row 3"),
    ("inf", "column 'y' has a non-finite value inf in data row 3"),
    ("x" * 500, "column 'y' is not numeric: value 'xxxxxxxx"),
    ("1e80", "column 'y' has a value too large for the float64 statistics: 1e+80 in data row 3"),
])
def test_bad_cells_are_named_in_plain_words(tmp_path: Path, cell: str, needle: str) -> None:
    frame = _frame(4).astype({"y": object})
    frame.loc[2, "y"] = cell
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    rc, _, err = _run(str(path), *COMMON)
    assert rc == 2 and err.count("\n") == 1 and len(err) < 200
    assert needle in err and "np.float64" not in err


@pytest.mark.parametrize("argv,needle", [
    (["--metric", "y", "--metric", "y"], "metric 'y' is given twice"),
    (["--metric", "y:numeric", "--metric", "y:binary"], "metric 'y' is given twice"),
    (["--metric", "y", "--covariate", "y"],
     "column 'y' is given as --metric/--ratio and as --covariate"),
    (["--metric", "y", "--covariate", "x", "--covariate", "x"],
     "column 'x' is given twice as --covariate"),
    (["--metric", "y", "--covariate", "x", "--in-experiment", "x"],
     "column 'x' is given as --covariate and as --in-experiment"),
    (["--metric", "arm"], "column 'arm' is given as --variation and as --metric/--ratio"),
    (["--metric", "y", "--by", "arm"], "column 'arm' is given as --variation and as --by"),
    (["--metric", "y", "--prediction", "y"], "as --metric/--ratio and as --prediction"),
    (["--ratio", "r=y/y"], "numerator and denominator are the same column 'y'"),
    (["--metric", "y", "--ratio", "y=y/x"], "ratio name 'y' is already a metric"),
])
def test_a_repeated_metric_or_role_is_refused_naming_it(tmp_path: Path, argv: list[str],
                                                        needle: str) -> None:
    path = tmp_path / "f.csv"
    _frame(5).to_csv(path, index=False)
    rc, _, err = _run(str(path), "--variation", "arm", "--control", "a", *argv)
    assert rc == 2 and err.count("\n") == 1
    assert needle in err


def test_metric_shared_with_a_ratio_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    frame = _frame(6)
    frame["s"] = 1.0 + (np.arange(len(frame)) % 3)
    frame.to_csv(path, index=False)
    rc, out, _ = _run(str(path), "--variation", "arm", "--control", "a", "--metric", "y",
                      "--ratio", "per_s=y/s", "--ratio", "x_per_s=x/s", "--format", "json")
    assert rc == 0
    assert [m["metric"] for m in json.loads(out)["slices"][0]["metrics"]] == [
        "y", "per_s", "x_per_s"]


def test_numeric_arm_labels_are_kept_as_written(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_text("arm,y\n1,0.5\n2,1.5\n1,0.7\n,3\n2,2.5\n01,4\n")
    rc, out, _ = _run(str(path), "--variation", "arm", "--control", "1", "--metric", "y",
                      "--missing", "drop", "--format", "json")
    assert rc == 0
    names = [v["name"] for v in json.loads(out)["slices"][0]["variations"]]
    assert names == ["1", "01", "2"]


# --------------------------------------------------------------------------------------------
# a generated corpus: whatever the file, exit 0 or 2, and an error is one bounded line

ARM_BAD = ["", " ", "NA", "a\nb", 'q"uote', "ä", "a,b", "1.0"]
NUM_BAD = ["", " ", "nan", "NaN", "inf", "-inf", "1e308", "-1e308", "abc", "True", "false",
           " 7 ", "1,5", "\n", "1e-320", "0x10", "١", "1e400", "1e80", "-1e76", "1e-160",
           "3e-170"]
GOOD_NUMBER = st.one_of(st.floats(-1e6, 1e6).map(repr), st.integers(0, 3).map(str),
                        st.sampled_from(["0", "1"]))
NUMBER = st.one_of(GOOD_NUMBER, GOOD_NUMBER, GOOD_NUMBER, st.sampled_from(NUM_BAD),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.integers(-10**20, 10**20).map(str))
ARM = st.one_of(st.sampled_from(["a", "b", "1", "2", "a", "b"]), st.sampled_from(ARM_BAD))


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    """Mostly plausible tables with hostile cells; sometimes no table at all."""
    kind = draw(st.sampled_from(["table"] * 6 + ["empty", "bytes", "ragged", "header"]))
    if kind == "empty":
        return b""
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    columns = draw(st.permutations(["arm", "y", "x", "t"]))
    if draw(st.integers(0, 9)) == 0:
        columns = draw(st.lists(st.sampled_from(["arm", "y", "x", "t", "arm"]), min_size=1,
                                max_size=5))
    n = 0 if kind == "header" else draw(st.integers(1, 30))
    clean = draw(st.booleans())  # half the tables: no hostile cell at all
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerow(columns)
    for _ in range(n):
        if clean:
            row = [draw(st.sampled_from(["a", "b", "1"])) if c == "arm" else draw(GOOD_NUMBER)
                   for c in columns]
        else:
            row = [draw(ARM) if c == "arm" else draw(NUMBER) for c in columns]
        if kind == "ragged" and draw(st.booleans()):
            row = row[:draw(st.integers(0, len(row)))] + draw(st.lists(NUMBER, max_size=2))
        writer.writerow(row)
    bom = "\ufeff" if draw(st.integers(0, 3)) == 0 else ""
    encoding = draw(st.sampled_from(["utf-8"] * 4 + ["latin-1"]))
    return (bom + buf.getvalue()).encode(encoding, errors="replace")


@st.composite
def argvs(draw: st.DrawFn) -> list[str]:
    argv = ["--variation", "arm", "--control", draw(st.sampled_from(["a", "a", "1", "b"])),
            "--metric", "y" + draw(st.sampled_from(["", "", ":binary", ":numeric"]))]
    if draw(st.booleans()):
        argv += ["--covariate", "x"]
    argv += ["--missing", draw(st.sampled_from(["error", "drop", "drop", "zero"]))]
    extra = draw(st.sampled_from([[], ["--by", "t"], ["--timeline", "t", "--points", "3"],
                                  ["--ratio", "r=y/x"], ["--in-experiment", "x"]]))
    if "--covariate" in argv and ("--in-experiment" in extra or "--ratio" in extra):
        extra = []
    return argv + extra + ["--format", draw(st.sampled_from(["json", "table"]))]


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(content=csv_files(), argv=argvs())
def test_no_csv_makes_analyze_print_a_traceback(content: bytes, argv: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.csv"
        path.write_bytes(content)
        rc, out, err = _run(str(path), *argv)
    assert rc in (0, 2)
    assert "Traceback" not in err
    if rc == 2:
        assert err.startswith("liftstream analyze: error: ")
        assert err.count("\n") == 1 and len(err) <= 400, err
    elif "--format" in argv and argv[argv.index("--format") + 1] == "json":
        doc = json.loads(out)
        assert isinstance(doc["warnings"], list) and doc["slices"]


@pytest.mark.parametrize("content", [
    b"", b"arm,y\n", b"\xef\xbb\xbfarm,y\na,1\n", b'arm,y\n"a\nb",1\na,\n', b"arm,y\na,1,2,3\n",
    b"\xff\xfe\x00a\x00r\x00m", b"arm,y\nnan,1\na,2\n",
    b"arm,y\n" + b"".join(b"%s,%de-160\n" % (b"ab"[i % 2:i % 2 + 1], i) for i in range(1, 9)),
])
def test_the_installed_command_prints_one_line_not_a_traceback(tmp_path: Path,
                                                               content: bytes) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(content)
    exe = Path(sys.executable).with_name("liftstream")
    proc = subprocess.run([str(exe), "analyze", str(path), "--variation", "arm", "--control",
                           "a", "--metric", "y"], capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 2)
    assert "Traceback" not in proc.stderr
    if proc.returncode == 2:
        assert proc.stderr.count("\n") == 1
