"""Live slices of a result document: one slice per value of a dimension (DESIGN §2 "Slices
and pre-periods"), the document ``liftstream analyze --by`` returns for the same rows."""

from __future__ import annotations

from typing import Any

from estimators import power
from estimators.analysis import analyze_metric
from estimators.moments import MomentMatrix
from estimators.report import Correction, slice_document
from estimators.slices import bh_across_slices
from state import slices as stored
from state.layout import ExperimentLayout
from state.registry import ExperimentDef
from state.store import Client, partition_count


class UnknownDimension(ValueError):
    """``by`` names no dimension of the definition."""


def dimension_slices(client: Client, d: ExperimentDef, by: str,
                     correction: Correction | None = None) -> list[dict[str, Any]]:
    """One slice document per value of dimension ``by`` (kept values in the order kept,
    then ``(other)``, then ``(none)``), BH-adjusted across the values."""
    if by not in [x.name for x in d.dimensions]:
        names = ", ".join(x.name for x in d.dimensions) or "none"
        raise UnknownDimension(f"by: {by[:70]!r} is not a dimension of experiment {d.id!r} "
                               f"(dimensions: {names})")
    lay = ExperimentLayout.of(d)
    merged = stored.read_slice_matrices(client, d.id, by, lay.columns,
                                        range(partition_count(client)))
    order = [v for v in stored.kept_values(client, d.id, by) if v in merged]
    order += sorted(v for v in merged if v not in order and v not in (stored.OTHER,
                                                                       stored.NONE))
    order += [v for v in (stored.OTHER, stored.NONE) if v in merged]
    settings = lay.analysis_settings()
    out = []
    for value in order:
        arms = {v: merged[value].get(v, MomentMatrix.empty(lay.columns)) for v in d.variations}
        metrics = [analyze_metric(spec, arms, d.control, settings)
                   for spec in lay.metric_specs()]
        doc = slice_document({by: value}, list(d.variations), {v: arms[v].n for v in arms},
                             list(d.weights), metrics,
                             correction if correction is not None else d.correction)
        out.append(power.annotate(doc, d.alpha, d.sequential_tuning))
    bh_across_slices(out)
    return out
