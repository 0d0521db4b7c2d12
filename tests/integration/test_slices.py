"""Dimension slices, live (issue 13 item 1; DESIGN §2 "Slices and pre-periods").

A replay of Hillstrom rows with two attribute columns — ``channel`` (3 values, under its
cap) and ``zr`` = zip code × recency (36 values, cap 10; first come, first kept) — with some
rows lacking each attribute gives, through the real broker and Redis, ``results --by`` equal
to ``analyze --by`` on the same rows mapped to ``(other)`` / ``(none)``, per slice, to 1e-9
(diff, cuped, adjusted and every other estimator field), also shuffled with 20 % duplicates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from estimators.analysis import AnalysisSettings
from state import slices
from state.registry import Registry, parse_definition
from state.results import experiment_document
from workers import cli
from workers.batch.analyze import AnalyzeRequest, analyze_frame
from workers.batch.columns import MetricColumn
from workers.dev.embedded import Broker
from workers.dev.replay import replay_messages

from .conftest import unique
from .streaming import (
    assert_documents_equal,
    create_topics,
    publish,
    redis_client,
    streaming_settings,
    wait_for_messages,
    worker_thread,
)

HILL = Path(__file__).resolve().parents[3] / "shared" / "data" / "hillstrom.csv"
ROWS = 12_000
ZR_CAP = 10
DEFINITION = {
    "id": "hills",
    "variations": ["No E-Mail", "Mens E-Mail", "Womens E-Mail"],
    "metrics": [{"name": "spend", "event": "spend", "aggregate": "sum"},
                {"name": "visit", "event": "visit", "aggregate": "binary"}],
    "covariates": ["recency", "history"],
    "dimensions": ["channel", {"name": "zr", "max_values": ZR_CAP}],
}


def hillstrom_with_attributes() -> pd.DataFrame:
    frame = pd.read_csv(HILL, nrows=ROWS)
    frame["zr"] = frame["zip_code"].astype(str) + "-" + frame["recency"].astype(str)
    rows = np.arange(len(frame))
    frame["channel"] = frame["channel"].astype(object).where(rows % 7 != 3, None)
    frame["zr"] = frame["zr"].astype(object).where(rows % 11 != 5, None)
    return frame


def mapped(frame: pd.DataFrame, column: str, kept: list[str]) -> pd.Series:
    """The column as the slices see it: kept values, ``(other)``, ``(none)``."""
    s = frame[column]
    out = s.where(s.isin(kept), slices.OTHER)
    return out.where(s.notna(), slices.NONE)


def batch_by(frame: pd.DataFrame, column: str) -> dict[str, Any]:
    req = AnalyzeRequest(variation="segment", control="No E-Mail",
                         metrics=(MetricColumn("spend", "numeric"),
                                  MetricColumn("visit", "binary")),
                         covariates=("recency", "history"), weights=None,
                         settings=AnalysisSettings(), by=(column,))
    return analyze_frame(frame, req)


def by_value(doc: dict[str, Any], column: str) -> dict[str, dict[str, Any]]:
    return {sl["by"][column]: sl for sl in doc["slices"]}


@pytest.mark.parametrize("shuffle,duplicate", [(False, 0.0), (True, 0.2)])
def test_live_slices_equal_analyze_by(broker: Broker, redis_url: str, shuffle: bool,
                                      duplicate: float, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    s = streaming_settings(broker.bootstrap, redis_url, unique("hills"))
    create_topics(s)
    client = redis_client(s)
    Registry(client).create(parse_definition(DEFINITION))
    frame = hillstrom_with_attributes()
    msgs = replay_messages(frame, "hills", None, "segment", ["spend", "visit"],
                           ["recency", "history"], shuffle=shuffle, duplicate=duplicate,
                           seed=5, attributes=["channel", "zr"])
    publish(s, msgs)
    with worker_thread(s):
        wait_for_messages(client, len(msgs))
    d = Registry(client).get("hills")
    assert d is not None

    kept_zr = slices.kept_values(client, "hills", "zr")
    assert len(kept_zr) == ZR_CAP  # 36 values offered, the first 10 kept
    assert frame["zr"].dropna().nunique() > ZR_CAP
    assert sorted(slices.kept_values(client, "hills", "channel")) == \
        sorted(frame["channel"].dropna().unique())
    compared = 0
    for column, kept in (("channel", slices.kept_values(client, "hills", "channel")),
                         ("zr", kept_zr)):
        rows = frame.assign(**{column: mapped(frame, column, kept)})
        live = by_value(experiment_document(client, d, by=column), column)
        batch = by_value(batch_by(rows, column), column)
        assert set(live) == set(batch)
        assert slices.NONE in live
        if column == "zr":
            assert slices.OTHER in live
        for value, sl in live.items():
            compared += assert_documents_equal({"slices": [sl]}, {"slices": [batch[value]]})
            est = sl["metrics"][0]["comparisons"][0]["estimators"]
            assert {"diff", "cuped", "adjusted"} <= set(est)
            assert "slice_bh_p_value" in est["cuped"]
        counts = {v: sum(x["n"] for x in sl["variations"]) for v, sl in live.items()}
        assert sum(counts.values()) == ROWS  # every unit in exactly one slice
    assert compared > 1000
    # `liftstream results ID --by zr` prints the same slices
    monkeypatch.setenv("LIFTSTREAM_REDIS_URL", redis_url)
    capsys.readouterr()
    assert cli.main(["results", "hills", "--by", "zr", "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert by_value(printed, "zr").keys() == by_value(
        experiment_document(client, d, by="zr"), "zr").keys()
    assert cli.main(["results", "hills", "--by", "nope"]) == 2
    assert "not a dimension" in capsys.readouterr().err
    # without by: the unsliced document, unchanged
    whole = experiment_document(client, d)
    assert len(whole["slices"]) == 1 and whole["slices"][0]["by"] is None


def test_live_slices_on_redis_cluster(broker: Broker, redis_cluster_url: str) -> None:
    """The value registry is one key per dimension and every batch script still touches one
    slot: the same slices on a 3-node cluster."""
    s = streaming_settings(broker.bootstrap, redis_cluster_url, unique("hillsc"),
                           redis_cluster=True)
    create_topics(s)
    client = redis_client(s)
    Registry(client).create(parse_definition({**DEFINITION, "id": "hillsc"}))
    frame = hillstrom_with_attributes().head(3000)
    msgs = replay_messages(frame, "hillsc", None, "segment", ["spend", "visit"],
                           ["recency", "history"], shuffle=True, duplicate=0.2, seed=9,
                           attributes=["channel", "zr"])
    publish(s, msgs)
    with worker_thread(s):
        wait_for_messages(client, len(msgs))
    d = Registry(client).get("hillsc")
    assert d is not None
    kept = slices.kept_values(client, "hillsc", "zr")
    assert len(kept) == ZR_CAP
    live = by_value(experiment_document(client, d, by="zr"), "zr")
    batch = by_value(batch_by(frame.assign(zr=mapped(frame, "zr", kept)), "zr"), "zr")
    assert set(live) == set(batch)
    for value, sl in live.items():
        assert_documents_equal({"slices": [sl]}, {"slices": [batch[value]]})
