"""From adjusted arm means and their variances to a complete :class:`Estimate`.

Arms are independent, so ``Var(effect) = v_t + v_c (+ shared terms)``. The relative effect
``m_t/m_c − 1`` gets its variance from the delta method (Deng et al. 2018, §3.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from statistics import NormalDist

from estimators import sequential
from estimators.records import Estimate

_STANDARD = NormalDist()


class NotEstimable(Exception):
    """Raised inside an estimator when the data cannot support it; the message says why."""


@dataclass(frozen=True)
class Contrast:
    """Adjusted arm means, the variances of those means, and shared variance terms."""

    treatment_mean: float
    control_mean: float
    treatment_var: float
    control_var: float
    extra_var: float = 0.0
    r_squared: float | None = None

    @property
    def effect(self) -> float:
        return self.treatment_mean - self.control_mean

    @property
    def variance(self) -> float:
        return self.treatment_var + self.control_var + self.extra_var


@dataclass(frozen=True)
class Inference:
    """What turns a contrast into intervals: level, units seen, sequential tuning."""

    alpha: float = 0.05
    n_total: int = 0
    sequential_tuning: float = 5000.0


def to_estimate(name: str, c: Contrast, inf: Inference) -> Estimate:
    """Fixed-horizon and anytime-valid inference for one contrast."""
    effect = c.effect
    vt, vc, extra = max(0.0, c.treatment_var), max(0.0, c.control_var), max(0.0, c.extra_var)
    var = vt + vc + extra
    if not (math.isfinite(effect) and math.isfinite(var)):
        return Estimate(name, note="non-finite statistics (an arm without data?)")
    scale = max(abs(c.treatment_mean), abs(c.control_mean), abs(effect))
    if var <= (1e-15 * scale) ** 2:
        return Estimate(name, effect=effect, se=0.0, treatment_mean=c.treatment_mean,
                        control_mean=c.control_mean, r_squared=c.r_squared,
                        note="zero variance in both arms: no uncertainty can be estimated")
    se = math.sqrt(var)
    z = _STANDARD.inv_cdf(1.0 - inf.alpha / 2.0)
    p = math.erfc(abs(effect) / se / math.sqrt(2.0))
    seq_half = sequential.half_width(se, inf.n_total, inf.alpha, inf.sequential_tuning)
    seq_p = sequential.p_value(effect, se, inf.n_total, inf.alpha, inf.sequential_tuning)
    rel, rel_lo, rel_hi, note = _relative(c.treatment_mean, c.control_mean, vt + extra, vc, z)
    return Estimate(
        name, effect=effect, se=se, ci_low=effect - z * se, ci_high=effect + z * se,
        p_value=p, rel_effect=rel, rel_ci_low=rel_lo, rel_ci_high=rel_hi,
        seq_ci_low=effect - seq_half, seq_ci_high=effect + seq_half, seq_p_value=seq_p,
        r_squared=c.r_squared, treatment_mean=c.treatment_mean, control_mean=c.control_mean,
        treatment_se=math.sqrt(vt), control_se=math.sqrt(vc), note=note,
    )


def _relative(mt: float, mc: float, vt: float, vc: float, z: float
              ) -> tuple[float | None, float | None, float | None, str | None]:
    if mc == 0.0:
        return None, None, None, "control mean is 0: relative effect undefined"
    rel = mt / mc - 1.0
    var = vt / mc**2 + mt**2 * vc / mc**4
    half = z * math.sqrt(var)
    return rel, rel - half, rel + half, None


def with_reduction(e: Estimate, diff: Estimate) -> Estimate:
    """Attach variance reduction and CI-width ratio relative to ``diff``."""
    if e.se is None or diff.se is None or diff.se <= 0.0:
        return e
    ratio = e.se / diff.se
    return replace(e, variance_reduction=1.0 - ratio**2, ci_width_ratio=ratio)
