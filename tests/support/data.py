"""Where the data sets are, and the Hillstrom definition the tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Final

#: ``../shared/data`` next to the checkout (a symlink in a worktree).
DATA: Final = Path(__file__).resolve().parents[3] / "shared" / "data"
HILLSTROM: Final = DATA / "hillstrom.csv"

#: The Hillstrom e-mail experiment as a YAML definition (no window).
HILL_YAML: Final = """\
id: hill
variations: [No E-Mail, Mens E-Mail, Womens E-Mail]
weights: [0.333, 0.333, 0.334]
metrics:
  - {name: spend, event: spend, aggregate: sum, cap: 500}
  - {name: visit, event: visit, aggregate: binary}
covariates: [recency, history]
in_experiment:
  - {name: pageviews, event: pageview, aggregate: count}
"""
