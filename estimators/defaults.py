"""The analysis defaults, written once (definitions, estimator settings, CLI options, alerter).

* :data:`ALPHA` — significance level of confidence intervals and tests.
* :data:`SEQUENTIAL_TUNING` — N* where the confidence sequence is tightest (Howard et al.
  2021, "Time-uniform, nonparametric, nonasymptotic confidence sequences", eq. 14).
* :data:`PRIOR_SIGMA` — prior sd of the relative difference for posterior means.
* :data:`SELECTION_ALPHA` — in-experiment covariates with balance p ≤ this are dropped.
* :data:`SRM_THRESHOLD` — sample-ratio mismatch flagged when the anytime-valid p-value is
  below it (Lindon & Malek 2022, "Anytime-valid inference for multinomial count data").

>>> ALPHA, SEQUENTIAL_TUNING, PRIOR_SIGMA, SRM_THRESHOLD
(0.05, 5000.0, 0.3, 0.001)
"""

from __future__ import annotations

from typing import Final

__all__ = ["ALPHA", "PRIOR_SIGMA", "SELECTION_ALPHA", "SEQUENTIAL_TUNING", "SRM_THRESHOLD"]

ALPHA: Final = 0.05
SEQUENTIAL_TUNING: Final = 5000.0
PRIOR_SIGMA: Final = 0.3
SELECTION_ALPHA: Final = 0.05
SRM_THRESHOLD: Final = 0.001
