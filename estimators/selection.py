"""In-experiment covariate selection (Lin & Crespo 2024, §4).

An in-experiment covariate ``z`` may adjust the estimate only if treatment does not shift
its mean. Each candidate gets a Welch two-sample test of equal means between the arms; it is
kept when ``p > α_sel`` (optionally after Holm's step-down adjustment). Across past
experiments, :func:`fisher_combination` pools a candidate's p-values to pre-select a set
that is stable.

>>> round(welch_p_value(0.0, 1.0, 1000, 0.0, 1.0, 1000), 6)
1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import special, stats

from estimators.multiple import holm
from estimators.records import CovariateCheck
from estimators.summary import ArmSummary, is_constant


def welch_p_value(mean_t: float, var_t: float, n_t: int,
                  mean_c: float, var_c: float, n_c: int,
                  bound_t: float = 0.0, bound_c: float = 0.0) -> float:
    """Two-sided Welch t-test p-value for equal means; NaN if both variances are zero.

    ``bound_t``/``bound_c``: rounding bounds of the variances (within them a variance is 0).
    """
    var_t = 0.0 if is_constant(var_t, bound_t) else var_t
    var_c = 0.0 if is_constant(var_c, bound_c) else var_c
    se2_t, se2_c = var_t / n_t, var_c / n_c
    se2 = se2_t + se2_c
    if not se2 > 0.0:
        return math.nan
    t = (mean_t - mean_c) / math.sqrt(se2)
    df = se2**2 / (se2_t**2 / (n_t - 1) + se2_c**2 / (n_c - 1))
    return float(2.0 * special.stdtr(df, -abs(t)))


def balance_p_values(t: ArmSummary, c: ArmSummary) -> list[float]:
    """Welch p-value of every column of two summaries (column 0 included)."""
    bt, bc = t.bound, c.bound
    return [welch_p_value(float(t.mean[j]), float(t.cov[j, j]), t.n,
                          float(c.mean[j]), float(c.cov[j, j]), c.n,
                          float(bt[j, j]), float(bc[j, j]))
            for j in range(len(t.mean))]


def select_covariates(names: Sequence[str], t: ArmSummary, c: ArmSummary,
                      alpha: float = 0.05, use_holm: bool = False) -> list[CovariateCheck]:
    """Check each candidate (all columns of ``t``/``c``, named by ``names``)."""
    if t.n < 2 or c.n < 2:
        return [CovariateCheck(n, None, False, "too few units to test balance") for n in names]
    raw = balance_p_values(t, c)
    finite = [p for p in raw if math.isfinite(p)]
    adjusted = iter(holm(finite) if use_holm else finite)
    out = []
    for name, p in zip(names, raw, strict=True):
        if not math.isfinite(p):
            out.append(CovariateCheck(name, None, False, "zero variance: cannot adjust with it"))
            continue
        p_used = next(adjusted)
        out.append(CovariateCheck(name, p, p_used > alpha))
    return out


def fisher_combination(p_values: Sequence[float]) -> float:
    """Fisher's combined p-value ``P(χ²_{2k} ≥ −2 Σ ln p)``."""
    p = np.clip(np.asarray(p_values, dtype=np.float64), 1e-300, 1.0)
    if p.size == 0:
        return 1.0
    return float(stats.chi2.sf(-2.0 * np.log(p).sum(), 2 * p.size))


def preselect(history: dict[str, Sequence[float]], alpha: float = 0.05) -> list[str]:
    """Candidates whose balance p-values over past experiments pass Fisher's test."""
    return [name for name, ps in history.items() if fisher_combination(ps) > alpha]
