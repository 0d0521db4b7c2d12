"""The learner path in one process: ŷ frozen at exposure from a model trained on earlier units.

Used by the efficiency and coverage tests and by ``bench/learner.py``; no Kafka, no Redis.
The timeline mirrors the streaming system: units are exposed in order; unit *j*'s outcome
window closes when unit ``j + window`` is exposed, and then the learner learns it; the learner
publishes a snapshot after every ``snapshot_every`` learned examples; a worker freezes ŷ of
unit *i* with the latest snapshot, so ŷ_i comes from a model that never saw unit *i* nor any
unit exposed after ``i − window`` (CUPAC, Tang et al. 2020; MLRATE, Guo et al. 2021).

The outcome model is nonlinear with a threshold and an interaction:
``E[y | x] = 2·1{x1 > 0} + 1.5·x2·1{x1 > 0} + 0.5·x3`` (x ~ N(0, I₃)), ``y = E[y|x] + τ·T + ε``
with ``ε ~ N(0, σ²)``. The oracle covariate is ``E[y | x]`` itself, whose variance reduction
is the best any covariate can achieve: ``Var(f)/(Var(f) + σ²)`` = 2.375/3.375 = 0.704 at σ = 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from estimators.analysis import AnalysisSettings, Comparison, MetricSpec, analyze_metric
from estimators.moments import FloatArray, MomentMatrix
from workers.learner.online_model import OnlineModel

__all__ = [
    "FEATURES",
    "CoverageSummary",
    "EfficiencyResult",
    "LearnerClock",
    "RunEstimates",
    "coverage_run",
    "efficiency",
    "frozen_predictions",
    "nonlinear_mean",
    "oracle_variance_reduction",
    "simulate_units",
    "summarize_runs",
    "warm_model",
]

FEATURES = ("x1", "x2", "x3")
NAMES = ("y", "yhat", "oracle")


def nonlinear_mean(x: FloatArray) -> FloatArray:
    """``E[y | x]`` in control: a threshold on x1 that switches on a slope in x2."""
    on = (x[:, 0] > 0.0).astype(np.float64)
    out: FloatArray = 2.0 * on + 1.5 * x[:, 1] * on + 0.5 * x[:, 2]
    return out


def oracle_variance_reduction(noise_sd: float = 1.0) -> float:
    """``Var(f)/(Var(f) + σ²)``: Var(f) = 1 + 1.125 + 0.25 = 2.375."""
    return 2.375 / (2.375 + noise_sd**2)


def simulate_units(rng: np.random.Generator, n: int, effect: float = 0.0,
                   noise_sd: float = 1.0) -> tuple[FloatArray, FloatArray, FloatArray,
                                                   np.ndarray]:
    """``(x, f(x), y, arm)`` of ``n`` units, arm ∈ {0 = control, 1 = treatment} at random."""
    x = rng.standard_normal((n, 3))
    f = nonlinear_mean(x)
    arm = rng.integers(2, size=n)
    y = f + effect * arm + noise_sd * rng.standard_normal(n)
    return x, f, y, arm


@dataclass
class LearnerClock:
    """Seconds spent learning and predicting, and how many of each."""

    learn_seconds: float = 0.0
    learned: int = 0
    predict_seconds: float = 0.0
    predicted: int = 0

    def learn_rate(self) -> float:
        return self.learned / self.learn_seconds if self.learn_seconds > 0 else float("nan")


def _rows(x: FloatArray) -> list[dict[str, float]]:
    return [dict(zip(FEATURES, r, strict=True)) for r in x.tolist()]


def frozen_predictions(model: OnlineModel, x: FloatArray, y: FloatArray, window: int,
                       snapshot_every: int, clock: LearnerClock | None = None) -> FloatArray:
    """ŷ of every unit at its exposure, learning matured units as the stream goes on.

    Unit *j* matures when unit ``j + window`` is exposed; the snapshot a worker uses at unit
    *i* holds the first ``⌊m_i / snapshot_every⌋·snapshot_every`` matured examples, where
    ``m_i = max(0, i − window + 1)``. ``model`` is updated in place (it is the learner's).
    """
    if window < 1 or snapshot_every < 1:
        raise ValueError("window and snapshot_every must be >= 1")
    clock = clock if clock is not None else LearnerClock()
    rows = _rows(x)
    targets = y.tolist()
    n = len(rows)
    out = np.empty(n)
    learned = 0
    for i in range(n):
        matured = max(0, i - window + 1)
        upto = (matured // snapshot_every) * snapshot_every
        if upto > learned:
            t0 = time.perf_counter()
            for j in range(learned, upto):
                model.learn(rows[j], targets[j])
            clock.learn_seconds += time.perf_counter() - t0
            clock.learned += upto - learned
            learned = upto
        out[i] = model.predict(rows[i])
    clock.predicted += n
    return out


def _arms(columns: FloatArray, arm: np.ndarray) -> dict[str, MomentMatrix]:
    return {"control": MomentMatrix.from_rows(NAMES, columns[arm == 0]),
            "treatment": MomentMatrix.from_rows(NAMES, columns[arm == 1])}


def _compare(spec: MetricSpec, arms: dict[str, MomentMatrix]) -> Comparison:
    (comp,) = analyze_metric(spec, arms, "control", AnalysisSettings()).comparisons
    return comp


@dataclass
class EfficiencyResult:
    kind: str
    units: int
    vr_cupac: float
    vr_oracle: float
    ratio: float
    prediction_outcome_correlation: float
    model_metrics: dict[str, float]
    learn_examples_per_second: float
    predict_per_second: float
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


def efficiency(kind: str, units: int = 100_000, warmup: int = 20_000, window: int = 1000,
               snapshot_every: int = 5000, effect: float = 0.1, noise_sd: float = 1.0,
               seed: int = 0) -> EfficiencyResult:
    """Variance reduction of cupac (ŷ frozen at exposure) vs the oracle covariate E[y|x].

    The model first learns ``warmup`` historical units (same population, before the
    experiment), then the experiment's matured units as they mature.
    """
    t_start = time.perf_counter()
    rng = np.random.default_rng(seed)
    model = OnlineModel(kind, seed=seed)
    clock = LearnerClock()
    hx, _, hy, _ = simulate_units(rng, warmup, 0.0, noise_sd)
    t0 = time.perf_counter()
    for r, t in zip(_rows(hx), hy.tolist(), strict=True):
        model.learn(r, t)
    clock.learn_seconds += time.perf_counter() - t0
    clock.learned += warmup
    x, f, y, arm = simulate_units(rng, units, effect, noise_sd)
    t0 = time.perf_counter()
    learn_before = clock.learn_seconds
    yhat = frozen_predictions(model, x, y, window, snapshot_every, clock)
    clock.predict_seconds += (time.perf_counter() - t0) - (clock.learn_seconds - learn_before)
    arms = _arms(np.column_stack([y, yhat, f]), arm)
    cupac = _compare(MetricSpec("y", "numeric", outcome="y", prediction="yhat"), arms)
    oracle = _compare(MetricSpec("y", "numeric", outcome="y", prediction="oracle"), arms)
    vr_c = cupac.estimators["cupac"].variance_reduction
    vr_o = oracle.estimators["cupac"].variance_reduction
    assert vr_c is not None and vr_o is not None
    corr = cupac.diagnostics.prediction_outcome_correlation
    return EfficiencyResult(
        kind, units, vr_c, vr_o, vr_c / vr_o, float(corr) if corr is not None else float("nan"),
        model.metrics(), clock.learn_rate(),
        clock.predicted / clock.predict_seconds if clock.predict_seconds > 0 else float("nan"),
        time.perf_counter() - t_start,
        {"theoretical_oracle_vr": oracle_variance_reduction(noise_sd)})


@dataclass(frozen=True)
class RunEstimates:
    """One simulated experiment: effect and SE per estimator, and the truth."""

    truth: float
    effect: dict[str, float]
    se: dict[str, float]


def coverage_run(warm: bytes, seed: int, units: int = 2000, effect: float = 0.0,
                 window: int = 200, snapshot_every: int = 200,
                 estimators: tuple[str, ...] = ("diff", "cupac", "mlrate")) -> RunEstimates:
    """One experiment through the learner path; ``warm`` is a pickled, warmed-up model."""
    import pickle

    rng = np.random.default_rng(seed)
    model: OnlineModel = pickle.loads(warm)  # our own bytes, made by the caller
    x, f, y, arm = simulate_units(rng, units, effect)
    yhat = frozen_predictions(model, x, y, window, snapshot_every)
    columns = np.column_stack([y, yhat, f])
    comp = _compare(MetricSpec("y", "numeric", outcome="y", prediction="yhat"),
                    _arms(columns, arm))
    eff: dict[str, float] = {}
    se: dict[str, float] = {}
    for name in estimators:
        e = comp.estimators[name]
        eff[name] = float("nan") if e.effect is None else e.effect
        se[name] = float("nan") if e.se is None else e.se
    return RunEstimates(effect, eff, se)


def warm_model(kind: str = "linear", units: int = 300, seed: int = 12345) -> bytes:
    """A pickled model that learned ``units`` historical units (shared by coverage runs)."""
    import pickle

    rng = np.random.default_rng(seed)
    model = OnlineModel(kind, seed=seed, dedupe_window=1)
    x, _, y, _ = simulate_units(rng, units)
    for r, t in zip(_rows(x), y.tolist(), strict=True):
        model.learn(r, t)
    return pickle.dumps(model)


@dataclass(frozen=True)
class CoverageSummary:
    """Coverage and bias per estimator over runs (bias in units of the mean SE)."""

    runs: int
    coverage: dict[str, float]
    bias_in_se: dict[str, float]
    mean_se: dict[str, float]


def summarize_runs(runs: list[RunEstimates], level_z: float = 1.959963984540054
                   ) -> CoverageSummary:
    names = tuple(runs[0].effect)
    cov, bias, se_mean = {}, {}, {}
    for name in names:
        eff = np.array([r.effect[name] for r in runs])
        se = np.array([r.se[name] for r in runs])
        truth = np.array([r.truth for r in runs])
        cov[name] = float(np.mean(np.abs(eff - truth) <= level_z * se))
        se_mean[name] = float(se.mean())
        bias[name] = float(np.mean(eff - truth) / se.mean())
    return CoverageSummary(len(runs), cov, bias, se_mean)
