"""Quantile metrics: exact, mergeable log-bucket histograms and the difference of quantiles.

**Histogram** (DDSketch, Masson, Rim & Lee 2019). With relative accuracy ``α`` and
``γ = (1 + α)/(1 − α)``, a positive value ``x`` falls in bucket ``i = ⌈log_γ x⌉`` covering
``(γ^(i−1), γ^i]``; its representative ``2γ^i/(γ + 1)`` is within ``α·x`` of every value of the
bucket. Negative values use the bucket of ``−x`` in a separate (mirrored) set, zero has its own
bucket. Counts are integers, so histograms add and subtract exactly (:class:`Histogram` ``+`` /
``-``): a unit whose value changes moves one count from its old bucket to its new one, and a
streamed histogram equals the one built in one pass over the same unit values.

**Estimate** (Deng, Knoblich & Lu 2018, "Applying the Delta Method in Metric Analytics", §4).
For ``n`` i.i.d. unit values the sample ``q``-quantile is the order statistic of rank
``⌈nq⌉``; a ``1 − a`` confidence interval for the true quantile is ``[X_(L), X_(U)]`` with ranks
``L, U = nq ∓ z·√(nq(1 − q))`` (the binomial count of values below the quantile, normal
approximation; the "outer CI"). Its half-width over ``z`` estimates the quantile's standard
error, ``SE_q ≈ (X_(U) − X_(L))/(2z)`` — a density-free form of ``√(q(1−q)/n)/f(Q)``. The
difference of two independent arms' quantiles has ``SE = √(SE_t² + SE_c²)`` (Welch-style),
its CI ``Δ ± z·SE``; the relative difference ``Q_t/Q_c − 1`` has the delta-method SE
``√(SE_t²/Q_c² + Q_t²·SE_c²/Q_c⁴)``.

**Anytime-valid interval.** The sample quantile is asymptotically linear (Bahadur 1966:
``Q̂ − Q = −(1/(n f(Q)))·Σ(1{X_i ≤ Q} − q) + O(n^(−3/4) log n)`` a.s.), i.e. a mean of i.i.d.
influence values plus a remainder smaller than the sequence's ``√(log n / n)`` width; the
asymptotic confidence sequences of Waudby-Smith et al. (2023), which
:mod:`estimators.sequential` implements, apply to such estimators with a consistent SE, so the
same width factor is applied to ``SE``. It is asymptotic (like every sequence in liftstream).

Bucketing moves each order statistic by at most ``α`` relatively (≤ 1% by default); with
the sample quantile's own spread spanning several buckets this acts as rounding noise, and
the coverage simulation (tests/estimators/test_quantiles.py) checks it does not spoil the CI.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from estimators import defaults, sequential
from estimators.records import Estimate

DEFAULT_ACCURACY = 0.01  # relative accuracy α of a bucket's representative value
MIN_ACCURACY = 1e-4  # finer buckets cost memory (≈ ln(range)/(2α) buckets) for no coverage
MAX_ACCURACY = 0.01  # coarser buckets could spoil the CI's coverage
MIN_UNITS = 20  # per arm; fewer: the normal approximation of the rank interval is too rough
Bucket = tuple[int, int]  # (sign −1/0/1, index): sorts as (sign, sign·index) in value order


def gamma(accuracy: float) -> float:
    return (1.0 + accuracy) / (1.0 - accuracy)


def bucket_indices(values: np.ndarray, accuracy: float) -> tuple[np.ndarray, np.ndarray]:
    """(sign, index) per value: ``index = ⌈log_γ |x|⌉`` (0 for zero). The one function that
    places values in buckets, for streaming and batch alike (so they agree exactly)."""
    v = np.asarray(values, dtype=np.float64)
    sign = np.sign(v).astype(np.int64)
    mag = np.abs(v)
    idx = np.zeros(v.shape, dtype=np.int64)
    nz = mag > 0
    idx[nz] = np.ceil(np.log(mag[nz]) / math.log(gamma(accuracy))).astype(np.int64)
    return sign, idx


def bucket_field(b: Bucket) -> str:
    """Bucket → its stored field suffix: ``z``, ``p<i>`` or ``n<i>``."""
    sign, i = b
    return "z" if sign == 0 else f"{'p' if sign > 0 else 'n'}{i}"


def parse_bucket(text: str) -> Bucket:
    if text == "z":
        return (0, 0)
    if text[:1] not in ("p", "n"):
        raise ValueError(f"bad histogram bucket {text!r}")
    return (1 if text[0] == "p" else -1, int(text[1:]))


@dataclass(frozen=True)
class Histogram:
    """Integer counts per log bucket of one arm's unit values (relative accuracy ``accuracy``).

    ``a + b`` merges (partitions, batches); ``a - b`` reverts; zero counts are dropped so
    equal histograms compare equal."""

    accuracy: float = DEFAULT_ACCURACY
    counts: Mapping[Bucket, int] = field(default_factory=dict)

    @classmethod
    def of(cls, values: Iterable[float] | np.ndarray, accuracy: float = DEFAULT_ACCURACY
           ) -> Histogram:
        """One pass over unit values."""
        sign, idx = bucket_indices(np.asarray(list(values) if not isinstance(values, np.ndarray)
                                              else values, dtype=np.float64), accuracy)
        return cls(accuracy, count_buckets(sign, idx))

    def _check(self, other: Histogram) -> None:
        if other.accuracy != self.accuracy:
            raise ValueError(f"histograms of accuracy {self.accuracy} and {other.accuracy} "
                             f"do not combine")

    def __add__(self, other: Histogram) -> Histogram:
        self._check(other)
        out = dict(self.counts)
        for b, c in other.counts.items():
            out[b] = out.get(b, 0) + c
        return Histogram(self.accuracy, {b: c for b, c in out.items() if c})

    def __sub__(self, other: Histogram) -> Histogram:
        self._check(other)
        return self + Histogram(self.accuracy, {b: -c for b, c in other.counts.items()})

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def sorted_buckets(self) -> list[tuple[Bucket, int]]:
        return sorted(self.counts.items(), key=lambda kv: (kv[0][0], kv[0][0] * kv[0][1]))

    def value(self, b: Bucket) -> float:
        """The bucket's representative value (within ``accuracy`` of each of its values)."""
        sign, i = b
        if sign == 0:
            return 0.0
        g = gamma(self.accuracy)
        return sign * 2.0 * g ** i / (g + 1.0)

    def at_ranks(self, ranks: Iterable[int]) -> list[float]:
        """Representative values of the order statistics of the given 1-based ranks."""
        want = sorted(set(ranks))
        out: dict[int, float] = {}
        seen, k = 0, 0
        for b, c in self.sorted_buckets():
            seen += c
            while k < len(want) and want[k] <= seen:
                out[want[k]] = self.value(b)
                k += 1
        return [out[r] for r in ranks]

    def buckets(self) -> Iterator[tuple[str, int]]:
        for b, c in self.counts.items():
            yield bucket_field(b), c


def count_buckets(sign: np.ndarray, idx: np.ndarray) -> dict[Bucket, int]:
    if not len(sign):
        return {}
    pairs = np.stack([sign, idx], axis=1)
    uniq, counts = np.unique(pairs, axis=0, return_counts=True)
    return {(int(s), int(i)): int(c) for (s, i), c in zip(uniq, counts, strict=True)}


def histogram_delta(new: np.ndarray, old: np.ndarray, accuracy: float) -> dict[str, int]:
    """Count change ``field → n`` when units with values ``old`` now have values ``new``
    (one count leaves each old value's bucket, one enters each new value's)."""
    plus = count_buckets(*bucket_indices(new, accuracy))
    for b, c in count_buckets(*bucket_indices(old, accuracy)).items():
        plus[b] = plus.get(b, 0) - c
    return {bucket_field(b): c for b, c in plus.items() if c}


def from_fields(fields: Mapping[str, int], accuracy: float) -> Histogram:
    """A histogram from stored ``bucket field → count``."""
    counts = {parse_bucket(f): int(c) for f, c in fields.items() if int(c)}
    return Histogram(accuracy, counts)


@dataclass(frozen=True)
class ArmQuantile:
    """One arm's sample quantile, its outer CI (Deng et al. 2018 §4) and SE."""

    n: int
    value: float | None
    ci_low: float | None
    ci_high: float | None
    se: float | None
    note: str | None = None


def rank_interval(n: int, q: float, z: float) -> tuple[int, int, int]:
    """(point, lower, upper) 1-based ranks: ``⌈nq⌉`` and ``nq ∓ z√(nq(1−q))`` (rounded
    outward, clipped to ``[1, n]``)."""
    half = z * math.sqrt(n * q * (1.0 - q))
    point = min(n, max(1, math.ceil(n * q)))
    lo = min(n, max(1, math.floor(n * q - half)))
    hi = min(n, max(1, math.ceil(n * q + half)))
    return point, lo, hi


def arm_quantile(h: Histogram, q: float, alpha: float = defaults.ALPHA) -> ArmQuantile:
    n = h.n
    if n < MIN_UNITS:
        return ArmQuantile(n, None, None, None, None,
                           f"fewer than {MIN_UNITS} units in the arm")
    z = float(stats.norm.ppf(1.0 - alpha / 2.0))
    point, lo, hi = rank_interval(n, q, z)
    value, low, high = h.at_ranks([point, lo, hi])
    return ArmQuantile(n, value, low, high, (high - low) / (2.0 * z))


def quantile_estimate(treatment: Histogram, control: Histogram, q: float,
                      alpha: float = defaults.ALPHA,
                      tuning: float = defaults.SEQUENTIAL_TUNING) -> Estimate:
    """Treatment − control difference of ``q``-quantiles with its CI, relative form and
    anytime-valid interval (module docstring); degenerate data → nulls with a note."""
    t, c = arm_quantile(treatment, q, alpha), arm_quantile(control, q, alpha)
    for arm, name in ((t, "treatment"), (c, "control")):
        if arm.value is None or arm.se is None:
            return Estimate("quantile", treatment_mean=t.value, control_mean=c.value,
                            note=f"{name}: {arm.note}")
    assert t.value is not None and c.value is not None and t.se is not None and c.se is not None
    se = math.hypot(t.se, c.se)
    effect = t.value - c.value
    if se == 0.0:
        return Estimate("quantile", treatment_mean=t.value, control_mean=c.value,
                        treatment_se=t.se, control_se=c.se,
                        note="both arms' rank intervals lie in one bucket (an atom, e.g. many "
                             "equal values): no standard error")
    z = float(stats.norm.ppf(1.0 - alpha / 2.0))
    n = t.n + c.n
    hw = sequential.half_width(se, n, alpha, tuning)
    p = float(2.0 * stats.norm.sf(abs(effect) / se))
    rel = rel_se = rel_lo = rel_hi = None
    note = ("treatment_mean/control_mean hold the arms' quantiles; CI: binomial-rank outer CI "
            "(Deng et al. 2018 §4); no regression adjustment, no Bayesian posterior")
    if c.value > 0.0:
        rel = t.value / c.value - 1.0
        rel_se = math.sqrt(t.se ** 2 / c.value ** 2 + t.value ** 2 * c.se ** 2 / c.value ** 4)
        rel_lo, rel_hi = rel - z * rel_se, rel + z * rel_se
    else:
        note += "; relative effect: control quantile ≤ 0"
    return Estimate("quantile", effect=effect, se=se, ci_low=effect - z * se,
                    ci_high=effect + z * se, p_value=p, rel_effect=rel, rel_se=rel_se,
                    rel_ci_low=rel_lo, rel_ci_high=rel_hi, seq_ci_low=effect - hw,
                    seq_ci_high=effect + hw,
                    seq_p_value=sequential.p_value(effect, se, n, alpha, tuning),
                    treatment_mean=t.value, control_mean=c.value, treatment_se=t.se,
                    control_se=c.se, note=note)


def quantile_name(metric: str, q: float) -> str:
    """The metric document name of one quantile of a metric, e.g. ``latency:p90``."""
    return f"{metric}:p{100.0 * q:.10g}"


def quantile_document(metric: str, q: float, accuracy: float, variations: list[str],
                      histograms: Mapping[str, Histogram], alpha: float = defaults.ALPHA,
                      tuning: float = defaults.SEQUENTIAL_TUNING) -> dict[str, object]:
    """One quantile's metric document, shaped like the other metrics' (estimators.report):
    every treatment against the first variation, estimator ``quantile``."""
    from estimators.records import as_dict

    control = variations[0]
    empty = Histogram(accuracy)
    comps: list[dict[str, object]] = []
    for v in variations[1:]:
        e = quantile_estimate(histograms.get(v, empty), histograms.get(control, empty), q,
                              alpha, tuning)
        comps.append({
            "treatment": v, "control": control, "primary": "quantile",
            "estimators": {"quantile": as_dict(e)},
            "covariate_selection": [],
            "bayes": {"model": None, "estimator": "quantile", "control_posterior_mean": None,
                      "treatment_posterior_mean": None, "precision_weight": None,
                      "ci_low": None, "ci_high": None, "chance_to_beat_control": None,
                      "expected_loss": None,
                      "note": "no Bayesian model for quantiles"},
            "diagnostics": {"prediction_outcome_correlation": None, "covariate_balance": [],
                            "pre_period_imbalance": False},
            "power": None,
            "power_note": "power is computed for mean metrics only",
        })
    return {"metric": quantile_name(metric, q), "kind": "quantile", "quantile": q,
            "of": metric, "accuracy": accuracy,
            "histogram_buckets": {v: len(histograms.get(v, empty).counts) for v in variations},
            "comparisons": comps}


@dataclass(frozen=True)
class QuantileSpec:
    """A quantile metric: its name, the quantiles compared and the histogram accuracy."""

    name: str
    quantiles: tuple[float, ...]
    accuracy: float = DEFAULT_ACCURACY


def metric_documents(specs: Iterable[QuantileSpec], variations: list[str],
                     histograms: Mapping[str, Mapping[str, Histogram]],
                     alpha: float = defaults.ALPHA,
                     tuning: float = defaults.SEQUENTIAL_TUNING) -> list[dict[str, object]]:
    """Every quantile of every quantile metric: ``histograms`` is variation → metric →
    histogram (missing: empty)."""
    out = []
    for s in specs:
        arms = {v: histograms.get(v, {}).get(s.name, Histogram(s.accuracy)) for v in variations}
        out += [quantile_document(s.name, q, s.accuracy, variations, arms, alpha, tuning)
                for q in s.quantiles]
    return out
