"""Hostile definitions: size bounds naming the field and the limit, strict YAML/JSON reading
(no aliases, no duplicate keys, a byte cap), bounded messages, clashes with derived columns."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from state.definition import (
    DefinitionError,
    ExperimentDef,
    load_definition,
    parse_definition,
    parse_definition_text,
)
from state.layout import ExperimentLayout
from state.limits import CEILINGS, DEFAULT_LIMITS, MAX_MESSAGE, DefinitionLimits
from state.naming import column_names

# 400 bytes: nine levels of ten aliases each expand to 10^9 leaves in ``id``
BILLION_LAUGHS = b"""\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g,*g]
id: [*h,*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def base(**extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"id": "shop", "variations": ["a", "b"],
                         "metrics": [{"name": "clk", "event": "click", "aggregate": "count"}]}
    d.update(extra)
    return d


def refused(data: Any, limits: DefinitionLimits = DEFAULT_LIMITS) -> str:
    with pytest.raises(DefinitionError) as info:
        parse_definition(data, limits)
    message = str(info.value)
    assert len(message) <= MAX_MESSAGE
    return message


def test_billion_laughs_refused_fast_with_a_short_message(tmp_path: Path) -> None:
    assert len(BILLION_LAUGHS) <= 400
    path = tmp_path / "bomb.yaml"
    path.write_bytes(BILLION_LAUGHS)
    t0 = time.perf_counter()
    with pytest.raises(DefinitionError) as info:
        load_definition(str(path))
    elapsed = time.perf_counter() - t0
    message = str(info.value)
    assert elapsed < 1.0, elapsed
    assert len(message.encode()) < 1000
    assert "alias" in message and "line 2" in message and message.startswith(str(path))


def test_anchor_merge_keys_are_aliases_too() -> None:
    text = b"m: &m {name: clk, event: click, aggregate: count}\nid: x\nmetrics: [{<<: *m}]\n"
    with pytest.raises(DefinitionError, match="alias"):
        parse_definition_text(text, "yaml", "-")


def test_ten_thousand_variations_refused_naming_the_limit() -> None:
    t0 = time.perf_counter()
    msg = refused(base(variations=[f"v{i}" for i in range(10_000)]))
    assert msg == "variations: 10000 variations; the limit is 64 (LIFTSTREAM_MAX_VARIATIONS)"
    assert time.perf_counter() - t0 < 2.0  # bounded work: validating 10,000 items would take longer


def test_count_limits_name_field_and_setting() -> None:
    metric = {"name": "m", "event": "e", "aggregate": "sum"}
    assert refused(base(metrics=[metric] * 10_000)) == \
        "metrics: 10000 metrics; the limit is 100 (LIFTSTREAM_MAX_METRICS)"
    t0 = time.perf_counter()
    assert refused(base(covariates=[f"c{i}" for i in range(100_000)])) == \
        "covariates: 100000 covariates; the limit is 64 (LIFTSTREAM_MAX_COVARIATES)"
    assert time.perf_counter() - t0 < 2.0
    cand = {"name": "p", "event": "pv", "aggregate": "count"}
    assert "(LIFTSTREAM_MAX_CANDIDATES)" in refused(base(in_experiment=[cand] * 65))
    assert "(LIFTSTREAM_MAX_VARIATIONS)" in refused(base(weights=[1] * 65))
    ratio = {"name": "r", "numerator": "clk", "denominator": "clk"}
    assert "(LIFTSTREAM_MAX_RATIOS)" in refused(base(ratios=[ratio] * 101))
    assert refused(base(guardrails=["clk"] * 100_000)).startswith("guardrails: 100000")


def test_limits_are_configurable() -> None:
    small = DefinitionLimits(max_variations=2)
    assert refused(base(variations=["a", "b", "c"]), small) == \
        "variations: 3 variations; the limit is 2 (LIFTSTREAM_MAX_VARIATIONS)"
    wide = DefinitionLimits(max_variations=100)
    assert len(parse_definition(base(variations=[f"v{i}" for i in range(100)]), wide)
               .variations) == 100


def _wide(metrics: int, covariates: int, candidates: int = 0, model: bool = True
          ) -> dict[str, Any]:
    return base(metrics=[{"name": f"m{i}", "event": "e", "aggregate": "sum"}
                         for i in range(metrics)],
                covariates=[f"x{i}" for i in range(covariates)],
                in_experiment=[{"name": f"p{i}", "event": "pv", "aggregate": "count"}
                               for i in range(candidates)],
                model="linear" if model else None)


def test_columns_counted_as_the_layout_builds_them() -> None:
    roomy = DefinitionLimits(max_metrics=255, max_covariates=255, max_candidates=255)
    # the poison definition of issue 10: 128 metrics + a model + 1 covariate = 257 columns
    msg = refused(_wide(128, 1), roomy)
    assert msg == ("columns: 257 unit-state columns in all (128 metrics + 0 in_experiment "
                   "candidates + 1 covariates + 128 model predictions); the limit is 255 "
                   "(LIFTSTREAM_MAX_COLUMNS)")
    for metrics, covs, cands, model in ((127, 1, 0, True), (100, 50, 5, False),
                                        (60, 60, 60, True), (1, 64, 64, True)):
        d = parse_definition(_wide(metrics, covs, cands, model), roomy)
        lay = ExperimentLayout.of(d)
        assert lay.columns == column_names(d)
        expected = metrics + covs + cands + (metrics if model else 0)
        assert lay.width == expected <= 255
    exactly = parse_definition(_wide(127, 1), roomy)
    assert ExperimentLayout.of(exactly).width == 255
    over = _wide(126, 1, 2)  # 126 + 2 + 1 + 126 = 255: fine; one more candidate is not
    assert ExperimentLayout.of(parse_definition(over, roomy)).width == 255
    assert "256 unit-state columns" in refused(_wide(126, 1, 3), roomy)
    # a model without covariates has no prediction columns
    assert ExperimentLayout.of(parse_definition(_wide(200, 0), roomy)).width == 200
    assert "(LIFTSTREAM_MAX_COLUMNS)" in refused(_wide(10, 10, 10),
                                                DefinitionLimits(max_columns=29))


def test_stored_definitions_are_held_to_the_storage_ceilings_only() -> None:
    """A definition created under raised limits reads back; a poison one (written by an
    older release) is refused before it reaches a worker."""
    wide = DefinitionLimits(max_variations=200)
    d = parse_definition(base(variations=[f"v{i}" for i in range(200)]), wide)
    assert ExperimentDef.from_json(d.to_json()) == d
    poison = json.loads(parse_definition(_wide(255, 0, model=False), CEILINGS).to_json())
    poison["metrics"].append({"name": "extra", "event": "e", "aggregate": "sum", "cap": None})
    with pytest.raises(DefinitionError, match="metrics: 256 metrics"):
        ExperimentDef.from_json(json.dumps(poison))


def test_definition_text_size_cap(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    body = json.dumps(base(covariates=["c" * 200] * 210_000)).encode()  # 42 MB
    assert len(body) > 42_000_000
    big.write_bytes(body)
    t0 = time.perf_counter()
    with pytest.raises(DefinitionError) as info:
        load_definition(str(big))
    assert time.perf_counter() - t0 < 1.0
    assert str(info.value) == (f"{big}: more than 1048576 bytes; the limit is 1048576 bytes "
                               f"(LIFTSTREAM_MAX_DEFINITION_BYTES)")
    with pytest.raises(DefinitionError, match=r"^-: more than 1000 bytes"):
        parse_definition_text(body, "json", "-", DefinitionLimits(max_definition_bytes=1000))


@pytest.mark.parametrize(("text", "fmt", "key"), [
    (b"id: a\nid: b\nvariations: [a, b]\nmetrics: []\n", "yaml", "'id' (line 2)"),
    (b"id: a\nvariations: [a, b]\nmetrics:\n  - {name: m, event: e, aggregate: sum,"
     b" aggregate: count}\n", "yaml", "'aggregate' (line 4)"),
    (b'{"id": "a", "variations": ["a", "b"], "metrics": [], "variations": ["c", "d"]}',
     "json", "'variations'"),
    (b'{"id": "a", "variations": ["a", "b"], "metrics": [{"name": "m", "name": "n"}]}',
     "json", "'name'"),
    (b'{"id": "a", "id": "b"}', "yaml", "'id'"),  # JSON piped to `create -` is read as YAML
])
def test_duplicate_keys_refused_naming_the_key(text: bytes, fmt: Any, key: str) -> None:
    with pytest.raises(DefinitionError) as info:
        parse_definition_text(text, fmt, "def")
    assert str(info.value).startswith(f"def: duplicate key {key}")


def test_prediction_column_clash_refused() -> None:
    clash = base(covariates=["x", "clk:pred"], model="linear")
    assert refused(clash) == ("covariates[1]: 'clk:pred' is the name of metric 'clk''s "
                              "model-prediction column (linear model); rename it")
    # without a model there is no prediction column, so nothing clashes
    assert parse_definition(base(covariates=["clk:pred"])).covariates == ("clk:pred",)
    # any two columns with one name were refused already
    cand = {"name": "clk", "event": "e", "aggregate": "count"}
    assert "already used by metrics[0].name" in refused(base(in_experiment=[cand]))
    assert "already used by covariates[0]" in refused(base(covariates=["clk"]))


@pytest.mark.parametrize("data", [
    base(id="x" * 1_000_000),
    base(id=[["lol"] * 1000] * 1000),
    base(variations=["a", "b" * 1_000_000]),
    base(variations=["a", {"k" * 10_000: ["v"] * 10_000}]),
    base(alpha="9" * 100_000),
    base(status="s" * 100_000),
    base(start="2024-" * 100_000),
    {**base(), **{f"unknown{i}" * 100: 1 for i in range(1000)}},
    base(metrics=[{"name": "m", "event": "e", "aggregate": "sum", "x" * 100_000: 1}]),
    base(primary_metric="p" * 256, guardrails=["g" * 256]),
    base(metrics=[{"name": f"m{i}" * 6, "event": "e", "aggregate": "sum"} for i in range(99)],
         ratios=[{"name": "r", "numerator": "n" * 256, "denominator": "m"}]),
])
def test_every_message_is_bounded(data: dict[str, Any]) -> None:
    message = refused(data)
    assert len(message) <= MAX_MESSAGE and "\n" not in message


def test_yaml_and_json_errors_are_bounded() -> None:
    for text, fmt in ((b"id: [" + b"x," * 300_000, "yaml"), (b"{" * 100_000, "json"),
                      (b"[" * 100_000 + b"]" * 100_000, "json"),
                      (b"[" * 500_000, "yaml"), (b'{"id": "' + b"x" * 900_000, "json"),
                      (b"\xff\xfe" * 1000, "json"), (b"\t" * 1000 + b"id: 1", "yaml")):
        with pytest.raises(DefinitionError) as info:
            parse_definition_text(text, fmt, "f")  # type: ignore[arg-type]
        assert len(str(info.value)) <= MAX_MESSAGE
