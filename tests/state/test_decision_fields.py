"""Definition fields for power, priors, pre-selection and the verdict: parsing and refusals."""

from __future__ import annotations

from typing import Any

import pytest

from state.definition import DefinitionError, ExperimentDef, parse_definition


def _base(**extra: Any) -> dict[str, Any]:
    return {"id": "x", "variations": ["a", "b"],
            "metrics": [{"name": "m", "event": "e", "aggregate": "sum"},
                        {"name": "s", "event": "f", "aggregate": "count"}], **extra}


def test_fields_parse_and_round_trip() -> None:
    d = parse_definition(_base(
        metrics=[{"name": "m", "event": "e", "aggregate": "sum", "mde": 0.02,
                  "higher_is_better": False},
                 {"name": "s", "event": "f", "aggregate": "count"}],
        ratios=[{"name": "r", "numerator": "m", "denominator": "s", "mde": 0.05}],
        prior={"kind": "empirical"}, in_experiment_selection={"kind": "fisher"},
        min_runtime_seconds=3600))
    assert d.targets() == {"m": 0.02, "r": 0.05}
    assert d.higher_is_better() == {"m": False, "s": True, "r": True}
    assert (d.prior, d.in_experiment_selection, d.min_runtime_seconds) == \
        ("empirical", "fisher", 3600.0)
    assert ExperimentDef.from_json(d.to_json()) == d
    plain = parse_definition(_base())
    assert (plain.prior, plain.in_experiment_selection, plain.min_runtime_seconds) == \
        ("fixed", "balance", None)


@pytest.mark.parametrize(("extra", "fragment"), [
    ({"metrics": [{"name": "m", "event": "e", "aggregate": "sum", "mde": 0}]},
     "metrics[0].mde: must be > 0"),
    ({"metrics": [{"name": "m", "event": "e", "aggregate": "sum", "higher_is_better": "no"}]},
     "metrics[0].higher_is_better: expected true or false"),
    ({"ratios": [{"name": "r", "numerator": "m", "denominator": "s", "mde": -1}]},
     "ratios[0].mde: must be > 0"),
    ({"prior": {"kind": "learned"}}, "prior.kind: must be one of fixed, empirical"),
    ({"prior": "empirical"}, "prior: expected a mapping"),
    ({"prior": {"kind": "empirical", "sigma": 1}}, "prior: unknown field(s) sigma"),
    ({"in_experiment_selection": {"kind": "holm"}},
     "in_experiment_selection.kind: must be one of balance, fisher"),
    ({"min_runtime_seconds": 0}, "min_runtime_seconds: must be > 0"),
])
def test_bad_fields_are_refused_naming_the_field(extra: dict[str, Any], fragment: str) -> None:
    with pytest.raises(DefinitionError) as exc:
        parse_definition(_base(**extra))
    assert fragment in str(exc.value)
