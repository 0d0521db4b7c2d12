"""The result table: rich tables on a terminal carry the same numbers as the plain text."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from rich.console import Console

from workers.batch.analyze import AnalyzeRequest, analyze_frame
from workers.batch.columns import parse_metric
from workers.cli.table import COLUMNS, render, renderable


def test_rich_table_has_the_plain_numbers() -> None:
    rng = np.random.default_rng(9)
    n = 1000
    frame = pd.DataFrame({"arm": rng.choice(["a", "b"], n), "y": rng.normal(size=n),
                          "x": rng.normal(size=n)})
    doc = analyze_frame(frame, AnalyzeRequest(variation="arm", control="a",
                                              metrics=(parse_metric("y"),),
                                              covariates=("x",)))
    plain = render(doc)
    header = next(line for line in plain.splitlines() if line.strip().startswith("estimator"))
    assert header.split()[:3] == ["estimator", "effect", "95%"]
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(renderable(doc))
    shown = out.getvalue()
    for name, e in doc["slices"][0]["metrics"][0]["comparisons"][0]["estimators"].items():
        assert name in shown and f"{e['effect']:.4g}" in shown and f"{e['effect']:.4g}" in plain
    assert all(c in shown for c in COLUMNS)
