"""The result table reads the typed document (estimators.document): a mapping and its parsed
form render the same text, warnings, slices and the power line included."""

from __future__ import annotations

import numpy as np
import pandas as pd

from estimators import document
from workers.batch.analyze import AnalyzeRequest, analyze_frame
from workers.batch.columns import parse_metric
from workers.cli.table import render


def test_mapping_and_typed_document_render_alike() -> None:
    rng = np.random.default_rng(21)
    n = 1200
    frame = pd.DataFrame({"arm": rng.choice(["a", "b"], n), "y": rng.normal(size=n),
                          "x": rng.normal(size=n), "platform": rng.choice(["ios", "web"], n)})
    frame.loc[[3, 7], "y"] = np.nan
    doc = analyze_frame(frame, AnalyzeRequest(variation="arm", control="a",
                                              metrics=(parse_metric("y"),), covariates=("x",),
                                              by=("platform",), missing="drop"))
    text = render(doc)
    assert text == render(document.parse(doc))
    lines = text.splitlines()
    assert lines[0].startswith("warning [rows_dropped]: 2 of 1200 rows dropped")
    assert sum(line.startswith("== platform=") for line in lines) == 2
    assert sum(line.startswith("  power 80% (") for line in lines) == 2
