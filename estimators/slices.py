"""Benjamini–Hochberg control across the values of a dimension (DESIGN §3, "Multiple
testing": across the values of a dimension, Benjamini & Hochberg 1995).

Exploring segments runs one test per value; each estimator's p-value of one (metric,
treatment) is adjusted across the slices of the document, reported beside the raw one as
``slice_bh_p_value`` (fixed horizon) and ``slice_bh_seq_p_value`` (anytime-valid). A slice
whose p-value is null takes no part (its adjusted values are null).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import MutableMapping, Sequence
from typing import Any

from estimators.multiple import benjamini_hochberg

FIELDS = (("p_value", "slice_bh_p_value"), ("seq_p_value", "slice_bh_seq_p_value"))


def bh_across_slices(slices: Sequence[MutableMapping[str, Any]]) -> None:
    """Add the across-slices BH-adjusted p-values to every estimator of ``slices``."""
    families: dict[tuple[str, str, str], list[MutableMapping[str, Any]]] = defaultdict(list)
    for sl in slices:
        for m in sl.get("metrics", []):
            for c in m.get("comparisons", []):
                for name, e in c.get("estimators", {}).items():
                    families[(m["metric"], c["treatment"], name)].append(e)
    for members in families.values():
        for raw, adjusted in FIELDS:
            present = [e for e in members if e.get(raw) is not None]
            for e in members:
                e[adjusted] = None
            for e, p in zip(present, benjamini_hochberg([float(e[raw]) for e in present]),
                            strict=True):
                e[adjusted] = p
