"""Result records: small, immutable, snake_case, serialisable with :func:`as_dict`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """One estimator's treatment-vs-control comparison.

    Fields are ``None`` (and ``note`` says why) when the estimate cannot be computed.
    ``treatment_mean``/``control_mean`` are the (adjusted) arm means the effect is built on.
    ``rel_ci_low``/``rel_ci_high`` are Fieller's interval of ``rel_effect``, ``rel_se`` its
    delta-method SE; ``adjusted_p_value``/``adjusted_seq_p_value`` are the fixed-horizon and
    anytime-valid p-values after ``--correction`` (``None`` without one).
    """

    estimator: str
    effect: float | None = None
    se: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    rel_effect: float | None = None
    rel_ci_low: float | None = None
    rel_ci_high: float | None = None
    rel_se: float | None = None  # delta-method SE of rel_effect (the interval is Fieller's)
    seq_ci_low: float | None = None
    seq_ci_high: float | None = None
    seq_p_value: float | None = None
    variance_reduction: float | None = None
    ci_width_ratio: float | None = None
    r_squared: float | None = None
    treatment_mean: float | None = None
    control_mean: float | None = None
    treatment_se: float | None = None
    control_se: float | None = None
    adjusted_p_value: float | None = None
    adjusted_seq_p_value: float | None = None
    biased: bool = False
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.effect is not None and self.se is not None


@dataclass(frozen=True)
class CovariateCheck:
    """Balance test of one in-experiment candidate (Welch) and whether it was used."""

    name: str
    p_value: float | None
    selected: bool
    note: str | None = None


@dataclass(frozen=True)
class BayesResult:
    """Posterior means (LaunchDarkly's precision-weight formulas) and decision quantities."""

    model: str  # "normal-normal" | "beta-binomial"
    estimator: str
    control_posterior_mean: float | None = None
    treatment_posterior_mean: float | None = None
    precision_weight: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    chance_to_beat_control: float | None = None
    expected_loss: float | None = None
    note: str | None = None


@dataclass(frozen=True)
class SrmResult:
    """Sample-ratio mismatch: χ² p-value (reported) and the anytime-valid
    Dirichlet–multinomial one, which alone decides ``flagged``."""

    p_value: float | None
    sequential_p_value: float | None
    flagged: bool
    expected_weights: tuple[float, ...] = field(default_factory=tuple)
    note: str | None = None


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    return value


def as_dict(record: Any) -> dict[str, Any]:
    """A record as a JSON-ready dict (non-finite floats become ``None``)."""
    out: dict[str, Any] = _plain(record)
    return out
