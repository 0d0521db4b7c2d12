"""Exposure attributes and definition dimensions are bounded (issue 13 item 1)."""

from __future__ import annotations

import pytest

from estimators.slices import bh_across_slices
from state.limits import MAX_ATTRIBUTE_LENGTH, MAX_ATTRIBUTES, MAX_DIMENSION_VALUES
from state.registry import DefinitionError, ExperimentDef, parse_definition
from stream.messages import Exposure, Rejected, encode_exposure, parse_exposure

BASE = b'{"experiment":"e","unit":"u","variation":"a","ts":1.7e9'


def test_attributes_parse_and_round_trip() -> None:
    x = parse_exposure(BASE + b',"attributes":{"country":"DE","platform":"ios"}}')
    assert isinstance(x, Exposure) and x.attributes == {"country": "DE", "platform": "ios"}
    assert parse_exposure(encode_exposure(x)) == x
    plain = parse_exposure(BASE + b"}")
    assert isinstance(plain, Exposure) and plain.attributes == {}


@pytest.mark.parametrize("attrs,reason", [
    (b'{"c":3}', "attributes: every value must be a string"),
    (b'["DE"]', "attributes"),
    (b'{"":"x"}', "attributes: empty attribute name"),
    (b'{"c":"' + b"x" * (MAX_ATTRIBUTE_LENGTH + 1) + b'"}', "attributes.c: value longer"),
    (b'{"' + b"n" * (MAX_ATTRIBUTE_LENGTH + 1) + b'":"x"}', "attributes: name longer"),
    (b"{" + b",".join(b'"a%d":"x"' % i for i in range(MAX_ATTRIBUTES + 1)) + b"}",
     f"attributes: {MAX_ATTRIBUTES + 1} entries"),
])
def test_bad_attributes_are_rejected_with_a_reason(attrs: bytes, reason: str) -> None:
    r = parse_exposure(BASE + b',"attributes":' + attrs + b"}")
    assert isinstance(r, Rejected) and r.reason.startswith(reason), r


def _definition(**extra: object) -> dict[str, object]:
    return {"id": "x", "variations": ["a", "b"],
            "metrics": [{"name": "m", "event": "e", "aggregate": "sum"}], **extra}


def test_dimensions_parse_with_default_cap_and_round_trip() -> None:
    d = parse_definition(_definition(dimensions=["country", {"name": "seg",
                                                             "max_values": 3}]))
    assert [(x.name, x.max_values) for x in d.dimensions] == [("country", 50), ("seg", 3)]
    assert ExperimentDef.from_json(d.to_json()).dimensions == d.dimensions


@pytest.mark.parametrize("dims,message", [
    ([{"name": "seg", "max_values": 0}], "dimensions[0].max_values: must be an integer"),
    ([{"name": "seg", "max_values": MAX_DIMENSION_VALUES + 1}], "dimensions[0].max_values"),
    (["a", "a"], "dimensions[1]: duplicate"),
    ([{"max_values": 3}], "dimensions[0].name: required"),
    ([3], "dimensions[0]: expected a mapping"),
    ([f"d{i}" for i in range(9)], "dimensions: 9 dimensions; the limit is 8"),
])
def test_bad_dimensions_are_refused_naming_the_field(dims: object, message: str) -> None:
    with pytest.raises(DefinitionError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_definition(_definition(dimensions=dims))


def _slice(p: float | None) -> dict[str, object]:
    return {"metrics": [{"metric": "m", "comparisons": [
        {"treatment": "t", "estimators": {"diff": {"p_value": p, "seq_p_value": p}}}]}]}


def test_bh_across_slices_beside_raw_p_values() -> None:
    slices = [_slice(0.01), _slice(0.04), _slice(0.03), _slice(None)]
    bh_across_slices(slices)
    got = [s["metrics"][0]["comparisons"][0]["estimators"]["diff"]  # type: ignore[index]
           for s in slices]
    # BH over the three present p-values: 0.01·3/1, then min(0.04·3/3, 0.03·3/2) = 0.04
    assert [g["slice_bh_p_value"] for g in got] == pytest.approx([0.03, 0.04, 0.04, None])
    assert got[0]["p_value"] == 0.01  # the raw one is kept
    assert got[3]["slice_bh_seq_p_value"] is None
