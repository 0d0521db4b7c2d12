"""From adjusted arm means and their variances to a complete :class:`Estimate`.

Arms are independent, so ``Var(effect) = v_t + v_c (+ shared terms)``.

Relative effect ``m_t/m_c − 1``: its standard error ``rel_se`` is the delta method's
(Deng et al. 2018, §3.2), but its interval is Fieller's (Fieller 1954): the set of ratios
``ρ`` with ``(m_t − ρ m_c)² ≤ z²(v_t + ρ² v_c)``, i.e. with ``g = z² v_c / m_c²``

    ρ ∈ [ρ̂ ∓ (z/|m_c|)·√(v_t(1 − g) + v_c ρ̂²)] / (1 − g),

which is asymmetric like the ratio's sampling distribution (the symmetric delta interval
misses below the truth about twice as often as above for 3% conversion rates). When
``g ≥ 1`` the control mean is not distinguishable from 0, the set is unbounded, and the
relative effect is null with a note.

>>> rel, se, lo, hi, note = _relative(1.05, 1.0, 0.0004, 0.0004, 1.959964)
>>> round(rel, 6), round(se, 5), round(lo, 5), round(hi, 5), note
(0.05, 0.029, -0.00529, 0.10852, None)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Final, Literal

from estimators import defaults, sequential
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
    # rounding bounds of treatment_var / control_var (a variance within its bound is zero)
    treatment_var_bound: float = 0.0
    control_var_bound: float = 0.0

    @property
    def effect(self) -> float:
        return self.treatment_mean - self.control_mean

    @property
    def variance(self) -> float:
        return self.treatment_var + self.control_var + self.extra_var


@dataclass(frozen=True)
class Inference:
    """What turns a contrast into intervals: level, units seen, sequential tuning."""

    alpha: float = defaults.ALPHA
    n_total: int = 0
    sequential_tuning: float = defaults.SEQUENTIAL_TUNING


# An SE below a few units in the last place of the arm means is rounding, whatever the bounds.
_ULP_FLOOR = 4.0 * 2.0**-53

ONE_ARM_NOTE = ("zero variance in the {arm} arm only: the sampling variance of its mean "
                "cannot be estimated from the data, so no SE, interval or p-value is given "
                "(not estimable rather than a p-value that pretends certainty)")


#: ``reference_se`` of :func:`to_estimate` for the reference estimator itself (``diff``).
SELF: Final[Literal["self"]] = "self"


def to_estimate(name: str, c: Contrast, inf: Inference, *,
                reference_se: float | Literal["self"] | None = None,
                one_arm: str | None = None, bias_note: str | None = None) -> Estimate:
    """Fixed-horizon and anytime-valid inference for one contrast, built once complete.

    Zero variance (within the contrast's rounding bounds) in both arms: the exact difference
    with ``se = 0`` and a note. In one arm only: effect and means, no SE (the data cannot
    say how variable that arm is; binary metrics get a conservative variance upstream,
    :func:`estimators.analysis.conservative_binary_variance`). ``one_arm``: that note for a
    metric constant in one arm (every estimator then reports no SE).

    ``reference_se``: the SE of ``diff`` for the variance reduction ``1 − (se/se_diff)²`` and
    CI-width ratio ``se/se_diff`` (:data:`SELF` for ``diff`` itself: 0 and 1).
    ``bias_note``: the estimate is biased by design (``biased=True``, the note appended).
    """

    def build(note: str | None = None, **fields: Any) -> Estimate:
        se = fields.get("se")
        ref = se if reference_se == SELF else reference_se
        if se is not None and isinstance(ref, float) and ref > 0.0:
            ratio = se / ref
            fields.update(variance_reduction=1.0 - ratio**2, ci_width_ratio=ratio)
        if bias_note is not None:
            note = bias_note if note is None else f"{note}; {bias_note}"
        return Estimate(name, biased=bias_note is not None, note=note, **fields)

    effect = c.effect
    vt, vc, extra = max(0.0, c.treatment_var), max(0.0, c.control_var), max(0.0, c.extra_var)
    var = vt + vc + extra
    if not (math.isfinite(effect) and math.isfinite(var)):
        return build("non-finite statistics (an arm without data?)")
    means = {"effect": effect, "treatment_mean": c.treatment_mean,
             "control_mean": c.control_mean, "r_squared": c.r_squared}
    if one_arm is not None:
        return build(one_arm, **means)
    scale = max(abs(c.treatment_mean), abs(c.control_mean), abs(effect))
    t_zero, c_zero = vt <= c.treatment_var_bound, vc <= c.control_var_bound
    if (t_zero and c_zero) or var <= (_ULP_FLOOR * scale) ** 2:
        return build("zero variance in both arms: no uncertainty can be estimated",
                     se=0.0, **means)
    if t_zero or c_zero:
        return build(ONE_ARM_NOTE.format(arm="treatment" if t_zero else "control"), **means)
    se = math.sqrt(var)
    z = _STANDARD.inv_cdf(1.0 - inf.alpha / 2.0)
    p = math.erfc(abs(effect) / se / math.sqrt(2.0))
    seq_half = sequential.half_width(se, inf.n_total, inf.alpha, inf.sequential_tuning)
    seq_p = sequential.p_value(effect, se, inf.n_total, inf.alpha, inf.sequential_tuning)
    rel, rel_se, rel_lo, rel_hi, note = _relative(c.treatment_mean, c.control_mean,
                                                  vt + extra, vc, z)
    return build(
        note, effect=effect, se=se, ci_low=effect - z * se, ci_high=effect + z * se,
        p_value=p, rel_effect=rel, rel_ci_low=rel_lo, rel_ci_high=rel_hi, rel_se=rel_se,
        seq_ci_low=effect - seq_half, seq_ci_high=effect + seq_half, seq_p_value=seq_p,
        r_squared=c.r_squared, treatment_mean=c.treatment_mean, control_mean=c.control_mean,
        treatment_se=math.sqrt(vt), control_se=math.sqrt(vc),
    )


def _relative(mt: float, mc: float, vt: float, vc: float, z: float
              ) -> tuple[float | None, float | None, float | None, float | None, str | None]:
    """(rel, delta-method SE, Fieller low, Fieller high, note); see the module docstring."""
    if mc == 0.0:
        return None, None, None, None, "control mean is 0: relative effect undefined"
    ratio = mt / mc
    g = z * z * vc / (mc * mc)
    if not g < 1.0:
        return None, None, None, None, (
            f"control mean {mc:.4g} is not distinguishable from 0 (|mean| ≤ {z:.3g}·SE): "
            "relative effect undefined (its interval is unbounded)")
    rel_se = math.sqrt(vt / mc**2 + mt**2 * vc / mc**4)
    half = z / abs(mc) * math.sqrt(vt * (1.0 - g) + vc * ratio * ratio)
    lo, hi = (ratio - half) / (1.0 - g), (ratio + half) / (1.0 - g)
    return ratio - 1.0, rel_se, lo - 1.0, hi - 1.0, None


