"""Agreement of two result documents (streamed vs batch), number by number.

>>> a = {"slices": [{"variations": [], "metrics": []}]}
>>> document_differences(a, a)
[]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from estimators.document import ResultDocument, parse

# Fields of the form 1 − x live on an O(1) scale: near 0 their relative error is amplified by
# cancellation (1 − 0.99999974 has 9 digits fewer than its inputs), so compare absolutely.
ONE_MINUS_FIELDS = frozenset({"variance_reduction", "r_squared"})


def _close(a: float, b: float, rel: float, field: str = "") -> bool:
    if math.isnan(a) and math.isnan(b):
        return True
    abs_tol = rel if field in ONE_MINUS_FIELDS else 1e-300
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_tol)


def document_differences(a: Mapping[str, Any] | ResultDocument,
                         b: Mapping[str, Any] | ResultDocument, rel: float = 1e-9
                         ) -> list[str]:
    """Every estimator field of the first slice that differs beyond ``rel`` (empty: agree)."""
    sa, sb = _typed(a).first, _typed(b).first
    out = []
    va = [(v.name, v.n) for v in sa.variations]
    vb = [(v.name, v.n) for v in sb.variations]
    if va != vb:
        out.append(f"variations {va} != {vb}")
    for ma, mb in zip(sa.metrics, sb.metrics, strict=False):
        for ca, cb in zip(ma.comparisons, mb.comparisons, strict=False):
            where = f"{ma.metric}/{ca.treatment}"
            if set(ca.estimators) != set(cb.estimators):
                out.append(f"{where}: estimators {sorted(ca.estimators)} != "
                           f"{sorted(cb.estimators)}")
                continue
            for name, ea in ca.estimators.items():
                eb = cb.estimators[name]
                for field in ea.__struct_fields__:
                    x, y = getattr(ea, field), getattr(eb, field)
                    if isinstance(x, float) and isinstance(y, float):
                        if not _close(x, y, rel, field):
                            out.append(f"{where}/{name}.{field}: {x!r} != {y!r}")
                    elif x != y:
                        out.append(f"{where}/{name}.{field}: {x!r} != {y!r}")
    if len(sa.metrics) != len(sb.metrics):
        out.append(f"{len(sa.metrics)} metrics != {len(sb.metrics)}")
    return out


def _typed(doc: Mapping[str, Any] | ResultDocument) -> ResultDocument:
    return doc if isinstance(doc, ResultDocument) else parse(doc)
