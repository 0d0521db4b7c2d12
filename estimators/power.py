"""Power, minimum detectable effect and time to decision (fixed-horizon and anytime-valid).

With the recommended estimator's standard error ``SE`` at ``N = n_t + n_c`` units:

* fixed horizon (two-sided level-α z-test, power 1 − β): ``mde = (z_{1−α/2} + z_{1−β})·SE``
  (e.g. Kohavi, Tang & Xu 2020, ch. 17; van Belle 2008 §2.3);
* anytime-valid: the asymptotic confidence sequence (Waudby-Smith et al. 2023, see
  :mod:`estimators.sequential`) has half-width ``h(N) = SE·c(N)``; it excludes 0 at N with
  probability ≈ Φ((δ − h)/SE) for a true effect δ, so ``mde_sequential = h(N) + z_{1−β}·SE``.

Projection to a target effect δ (relative target × |control mean|): SE shrinks as 1/√N with
the allocation fixed, ``SE(N) = SE_now·√(N_now/N)``. The fixed-horizon plan is
``N = N_now·((z_{1−α/2} + z_{1−β})·SE_now/δ)²``; the anytime-valid plan is the smallest N with
``SE(N)·(c(N) + z_{1−β}) ≤ δ`` (solved by bisection on log N; the left side decreases in N).

>>> round(mde(0.01, 0.05), 6)
0.028016
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Any

from estimators import sequential

POWER = 0.8
_STANDARD = NormalDist()
_MAX_UNITS = 1e15


def z(p: float) -> float:
    """Standard normal quantile."""
    return _STANDARD.inv_cdf(p)


def mde(se: float, alpha: float, power: float = POWER) -> float:
    """Fixed-horizon minimum detectable (absolute) effect: (z_{1−α/2} + z_{power})·SE."""
    return (z(1.0 - alpha / 2.0) + z(power)) * se


def cs_factor(n: float, alpha: float, tuning: float) -> float:
    """Half-width of the confidence sequence at ``n`` units in units of SE."""
    return sequential.half_width(1.0, n, alpha, tuning)  # type: ignore[arg-type]


def mde_sequential(se: float, n: float, alpha: float, tuning: float,
                   power: float = POWER) -> float:
    """Smallest effect the confidence sequence excludes from 0 with ``power`` at ``n``."""
    return (cs_factor(n, alpha, tuning) + z(power)) * se


def units_fixed(se_now: float, n_now: float, effect: float, alpha: float,
                power: float = POWER) -> float:
    """Units (N = n_t + n_c) at which the fixed-horizon test has ``power`` for ``effect``."""
    return n_now * (mde(se_now, alpha, power) / abs(effect)) ** 2


def units_sequential(se_now: float, n_now: float, effect: float, alpha: float,
                     tuning: float, power: float = POWER) -> float:
    """Smallest N at which the confidence sequence excludes 0 for ``effect`` with ``power``.

    ``SE(N) = se_now·√(n_now/N)``; bisection on log N between 2 and 10¹⁵ units (inf beyond).
    """
    target = abs(effect)

    def gap(n: float) -> float:
        return se_now * math.sqrt(n_now / n) * (cs_factor(n, alpha, tuning) + z(power)) - target

    lo, hi = 2.0, _MAX_UNITS
    if gap(hi) > 0:
        return math.inf
    if gap(lo) <= 0:
        return lo
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if gap(mid) > 0:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.0 + 1e-12:
            break
    return hi


@dataclass(frozen=True)
class Power:
    """Power of one comparison (absolute effects on the metric's scale; seconds wall-clock)."""

    estimator: str
    power: float = POWER
    mde: float | None = None
    mde_sequential: float | None = None
    rel_mde: float | None = None
    rel_mde_sequential: float | None = None
    target_rel_mde: float | None = None
    target_effect: float | None = None
    units: int | None = None  # n_t + n_c now
    projected_units: int | None = None  # n_t + n_c needed (anytime-valid, 80 %)
    projected_units_fixed: int | None = None  # the same for the fixed-horizon test
    remaining_units: int | None = None
    units_per_second: float | None = None
    projected_seconds: float | None = None  # from now until projected_units
    progress: float | None = None  # units / projected_units, capped at 1
    reached: bool | None = None
    note: str | None = None


def comparison_power(estimator: str, se: float | None, control_mean: float | None,
                     n: int, alpha: float, tuning: float, target_rel: float | None = None,
                     units_per_second: float | None = None, power: float = POWER) -> Power:
    """Power record of a comparison from its recommended estimate."""
    if se is None or not se > 0 or n < 2:
        why = ("standard error is 0 (no variation): power not meaningful" if se == 0.0
               else "no standard error yet: power not estimable")
        return Power(estimator, power, units=n, target_rel_mde=target_rel, note=why)
    m = mde(se, alpha, power)
    ms = mde_sequential(se, n, alpha, tuning, power)
    if control_mean is None or control_mean == 0.0:
        out = Power(estimator, power, m, ms, None, None, target_rel, units=n)
        if target_rel is None:
            return _replace(out, note="control mean is 0: relative MDE undefined")
        return _replace(out, note="control mean is 0: a relative target has no absolute size")
    scale = abs(control_mean)
    out = Power(estimator, power, m, ms, m / scale, ms / scale, target_rel, units=n)
    if target_rel is None:
        return out
    effect = target_rel * scale
    need = units_sequential(se, n, effect, alpha, tuning, power)
    need_fixed = units_fixed(se, n, effect, alpha, power)
    if not math.isfinite(need):
        return _replace(out, target_effect=effect,
                        note="target not reachable within 1e15 units")
    need_i, fixed_i = math.ceil(need), math.ceil(need_fixed)
    remaining = max(0, need_i - n)
    notes = []
    secs = None
    if remaining == 0:
        secs = 0.0
    elif units_per_second is not None and units_per_second > 0:
        secs = remaining / units_per_second
    else:
        notes.append("exposure rate unknown (no start time and no earlier snapshot, or no "
                     "units yet): projected_seconds not estimable")
    return _replace(out, target_effect=effect, projected_units=need_i,
                    projected_units_fixed=fixed_i, remaining_units=remaining,
                    units_per_second=units_per_second, projected_seconds=secs,
                    progress=min(1.0, n / need_i), reached=remaining == 0,
                    note="; ".join(notes) or None)


def _replace(p: Power, **kw: Any) -> Power:
    return replace(p, **kw)


def annotate(doc: dict[str, Any], alpha: float, tuning: float,
             targets: Mapping[str, float] | None = None, elapsed_seconds: float | None = None,
             since: tuple[float, Mapping[str, int]] | None = None) -> dict[str, Any]:
    """Add ``power`` to every comparison of one slice document (in place; returned).

    Reads the recommended (``primary``) estimate of each comparison and the arm sizes from
    ``variations``; ``targets`` maps metric name → relative target MDE; ``elapsed_seconds``
    (time since the experiment started) gives the exposure rate of each comparison. Without
    it, ``since = (seconds ago, arm sizes then)`` (an earlier snapshot) gives the rate.
    """
    from estimators.records import as_dict

    counts = {v["name"]: int(v["n"]) for v in doc.get("variations", [])}
    for m in doc.get("metrics", []):
        target = (targets or {}).get(m["metric"])
        for c in m["comparisons"]:
            name = c.get("primary") or "diff"
            e = c["estimators"].get(name) or {}
            n = counts.get(c["treatment"], 0) + counts.get(c["control"], 0)
            rate = _rate(n, c, elapsed_seconds, since)
            c["power"] = as_dict(comparison_power(name, e.get("se"), e.get("control_mean"), n,
                                                  alpha, tuning, target, rate))
    return doc


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Plan:
    """Units needed for a target relative MDE, equal allocation over ``arms`` variations.

    ``units`` count every arm (``units_per_arm × arms``); a comparison has ``2·units_per_arm``.
    """

    adjustment: str  # "none" | "covariates"
    sigma: float  # per-unit sd of the outcome (after adjustment)
    variance_reduction: float
    fixed_units_per_arm: int | None
    fixed_units: int | None
    sequential_units_per_arm: int | None
    sequential_units: int | None
    fixed_days: float | None = None
    sequential_days: float | None = None
    note: str | None = None


def plan(sigma: float, control_mean: float, target_rel: float, arms: int, alpha: float,
         tuning: float, daily_units: float | None = None, adjustment: str = "none",
         variance_reduction: float = 0.0, power: float = POWER) -> Plan:
    """Units for 80 % power at ``target_rel × |control_mean|`` (two-sample, equal arms).

    SE at N comparison units (N/2 per arm) is ``2σ/√N``; see the module docstring.
    """
    effect = target_rel * abs(control_mean)
    if not sigma > 0 or effect == 0:
        note = ("outcome has zero variance" if not sigma > 0 else
                "control mean is 0: a relative MDE has no absolute size")
        return Plan(adjustment, sigma, variance_reduction, None, None, None, None, note=note)
    n_fixed = units_fixed(2.0 * sigma, 1.0, effect, alpha, power)
    n_seq = units_sequential(2.0 * sigma, 1.0, effect, alpha, tuning, power)
    if not math.isfinite(n_seq):
        return Plan(adjustment, sigma, variance_reduction, None, None, None, None,
                    note="target not reachable within 1e15 units")
    per_f, per_s = math.ceil(n_fixed / 2.0), math.ceil(n_seq / 2.0)

    def days(units: int) -> float | None:
        return units / daily_units if daily_units else None

    return Plan(adjustment, sigma, variance_reduction, per_f, per_f * arms, per_s,
                per_s * arms, days(per_f * arms), days(per_s * arms),
                None if daily_units else "give --daily-units for days")


def _rate(n: int, c: Mapping[str, Any], elapsed: float | None,
          since: tuple[float, Mapping[str, int]] | None) -> float | None:
    """Units per second of one comparison (None when not estimable)."""
    if elapsed is not None:
        return n / elapsed if elapsed > 0 and n > 0 else None
    if since is None:
        return None
    dt, then = since
    n0 = int(then.get(c["treatment"], 0)) + int(then.get(c["control"], 0))
    return (n - n0) / dt if dt > 0 and n > n0 else None
