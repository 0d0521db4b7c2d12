"""Anytime-valid inference: asymptotic confidence sequences (Waudby-Smith et al. 2023).

With ``N = n_t + n_c`` units seen and an estimator's standard error ``se``, the normal-mixture
confidence sequence has half-width

    se·√N · √( 2(Nρ² + 1)/(N²ρ²) · ln(√(Nρ² + 1)/α) ),
    ρ² = (−2 ln α + ln(−2 ln α + 1)) / N*,

tuned to be tightest near ``N*`` units. It is valid at every N simultaneously, so it may be
checked after every event (Lindon et al. 2022 apply it to regression-adjusted estimators).

>>> round(half_width(se=0.01, n=10_000, alpha=0.05, tuning=5000) / 0.01, 3)
3.061
"""

from __future__ import annotations

import math


def rho_squared(alpha: float, tuning: float) -> float:
    """Mixture variance tuned so the sequence is tightest at ``tuning`` units."""
    la = -2.0 * math.log(alpha)
    return (la + math.log(la + 1.0)) / tuning


def half_width(se: float, n: int, alpha: float, tuning: float) -> float:
    """Half-width of the asymptotic confidence sequence at ``n`` units."""
    r2 = rho_squared(alpha, tuning)
    nr = n * r2
    return se * math.sqrt(n) * math.sqrt(2.0 * (nr + 1.0) / (n * n * r2)
                                         * math.log(math.sqrt(nr + 1.0) / alpha))


def p_value(effect: float, se: float, n: int, alpha: float, tuning: float) -> float:
    """Always-valid p-value: the smallest level whose sequence (same ρ) excludes 0.

    ``p ≤ α`` exactly when the level-α sequence excludes zero; it is the inverse of the
    normal-mixture test martingale, so it may be read at any stopping time.
    """
    if se <= 0.0:
        return 0.0 if effect != 0.0 else 1.0
    r2 = rho_squared(alpha, tuning)
    nr = n * r2
    log_p = 0.5 * math.log(nr + 1.0) - effect * effect * nr / (2.0 * se * se * (nr + 1.0))
    return min(1.0, math.exp(log_p))
