"""One metric, every comparison: which estimators apply, and their results.

:func:`analyze_metric` is the single place that decides which columns feed which
estimator, so the batch CLI, the streaming query path and the API give identical numbers.
Input is one :class:`~estimators.moments.MomentMatrix` per variation whose columns include
the metric's outcome (or numerator and denominator), its covariates, the prediction and
in-experiment candidates, as named by a :class:`MetricSpec`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from estimators import bayes, defaults
from estimators.contrast import (
    ONE_ARM_NOTE,
    SELF,
    Contrast,
    Inference,
    NotEstimable,
    to_estimate,
)
from estimators.lin_crespo import lin_crespo, residual_by_covariates, residual_by_prediction
from estimators.moments import MomentMatrix
from estimators.proxy import DEFAULT_RIDGE, proxy_estimate
from estimators.records import BayesResult, CovariateCheck, Estimate
from estimators.regression import adjusted, cupac, cuped, diff, mlrate
from estimators.selection import balance_p_values, select_covariates
from estimators.summary import ArmSummary, is_constant, summarize, summarize_ratio

MetricKind = Literal["binary", "numeric", "ratio"]
ESTIMATORS = ("diff", "cuped", "cupac", "mlrate", "lin_crespo", "adjusted")
PRIMARY_ORDER = ("adjusted", "cupac", "cuped", "diff")
IMBALANCE_THRESHOLD = 0.001


@dataclass(frozen=True)
class MetricSpec:
    """Which moment-matrix columns make up a metric and its adjustment sets."""

    name: str
    kind: MetricKind
    outcome: str | None = None  # binary / numeric
    numerator: str | None = None  # ratio
    denominator: str | None = None  # ratio
    covariates: tuple[str, ...] = ()
    prediction: str | None = None
    in_experiment: tuple[str, ...] = ()
    # optional, separate, biased: the predicted-metric proxy (estimators.proxy)
    proxy_indicators: tuple[str, ...] = ()
    proxy_ridge: float = DEFAULT_RIDGE
    proxy_include_outcome: bool = True

    def __post_init__(self) -> None:
        if self.kind == "ratio":
            if not (self.numerator and self.denominator):
                raise ValueError(f"ratio metric {self.name!r} needs numerator and denominator")
        elif not self.outcome:
            raise ValueError(f"metric {self.name!r} needs an outcome column")


@dataclass(frozen=True)
class AnalysisSettings:
    alpha: float = defaults.ALPHA
    sequential_tuning: float = defaults.SEQUENTIAL_TUNING
    selection_alpha: float = defaults.SELECTION_ALPHA
    selection_holm: bool = False
    prior_sigma: float = defaults.PRIOR_SIGMA
    # in-experiment candidates chosen beforehand (Fisher pre-selection, estimators.selection
    # .preselect); None: the per-experiment balance test selects
    preselected: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 0.0 < self.selection_alpha < 1.0:
            raise ValueError(f"selection_alpha must be in (0, 1), got {self.selection_alpha}")
        if not self.sequential_tuning > 0:
            raise ValueError(f"sequential_tuning must be > 0, got {self.sequential_tuning}")
        if not self.prior_sigma > 0:
            raise ValueError(f"prior_sigma must be > 0, got {self.prior_sigma}")


@dataclass(frozen=True)
class Diagnostics:
    prediction_outcome_correlation: float | None = None
    covariate_balance: tuple[CovariateCheck, ...] = ()
    pre_period_imbalance: bool = False


@dataclass(frozen=True)
class Comparison:
    treatment: str
    control: str
    estimators: dict[str, Estimate]
    covariate_selection: tuple[CovariateCheck, ...]
    bayes: BayesResult
    diagnostics: Diagnostics = field(default_factory=Diagnostics)
    proxy: Estimate | None = None  # biased predicted-metric proxy; never in ``estimators``

    @property
    def primary(self) -> Estimate:
        """The recommended estimate: ``adjusted`` when it applies, else the best available."""
        for name in PRIMARY_ORDER:
            e = self.estimators.get(name)
            if e is not None and e.ok and e.se:
                return e
        return self.estimators["diff"]


@dataclass(frozen=True)
class MetricResult:
    metric: str
    kind: MetricKind
    comparisons: tuple[Comparison, ...]


def _summary(spec: MetricSpec, m: MomentMatrix, columns: Sequence[str]) -> ArmSummary:
    if spec.kind == "ratio":
        assert spec.numerator and spec.denominator
        return summarize_ratio(m, spec.numerator, spec.denominator, columns)
    assert spec.outcome
    return summarize(m, spec.outcome, columns)


def _run(name: str, fn: Callable[[], Contrast], inf: Inference,
         reference_se: float | Literal["self"] | None, one_arm: str | None) -> Estimate:
    try:
        return to_estimate(name, fn(), inf, reference_se=reference_se, one_arm=one_arm)
    except NotEstimable as exc:
        return Estimate(name, note=str(exc))


def analyze_metric(spec: MetricSpec, arms: Mapping[str, MomentMatrix], control: str,
                   settings: AnalysisSettings = AnalysisSettings()) -> MetricResult:
    """Compare every non-control arm with ``control`` for one metric."""
    if control not in arms:
        raise KeyError(f"control {control!r} is not among the variations {list(arms)}")
    comps = tuple(_compare(spec, arms[name], arms[control], name, control, settings)
                  for name in arms if name != control)
    if spec.proxy_indicators:
        comps = tuple(_with_proxy(spec, c, arms, settings) for c in comps)
    return MetricResult(spec.name, spec.kind, comps)


def _with_proxy(spec: MetricSpec, comp: Comparison, arms: Mapping[str, MomentMatrix],
                s: AnalysisSettings) -> Comparison:
    """Attach the biased ``proxy`` (fitted on all arms pooled); it is never primary."""
    mt, mc = arms[comp.treatment], arms[comp.control]
    if spec.kind == "ratio" or spec.outcome is None:
        e = Estimate("proxy", biased=True, note="the proxy applies to binary and numeric "
                                                 "metrics only")
    else:
        inf = Inference(s.alpha, mt.n + mc.n, s.sequential_tuning)
        e = proxy_estimate(mt, mc, spec.outcome, spec.proxy_indicators, inf, spec.proxy_ridge,
                           spec.proxy_include_outcome, pooled=list(arms.values()),
                           reference_se=comp.estimators["diff"].se)
    return replace(comp, proxy=e)


def _compare(spec: MetricSpec, mt: MomentMatrix, mc: MomentMatrix, treatment: str,
             control: str, s: AnalysisSettings) -> Comparison:
    inf = Inference(s.alpha, mt.n + mc.n, s.sequential_tuning)
    pre = list(spec.covariates)
    pred = [spec.prediction] if spec.prediction else []
    cands = list(spec.in_experiment)

    def pair(columns: Sequence[str]) -> tuple[ArmSummary, ArmSummary]:
        return _summary(spec, mt, columns), _summary(spec, mc, columns)

    blocker = _blocker(spec, mt, mc)
    one_arm = None if blocker else _one_arm_constant(spec, mt, mc)

    def run(name: str, fn: Callable[[], Contrast]) -> Estimate:
        if blocker:
            return Estimate(name, note=blocker)
        reference = SELF if name == "diff" else out["diff"].se
        return _run(name, fn, inf, reference, one_arm)

    out: dict[str, Estimate] = {}
    out["diff"] = run("diff", lambda: diff(*pair([])))
    if pre:
        out["cuped"] = run("cuped", lambda: cuped(*pair(pre)))
    if pred:
        out["cupac"] = run("cupac", lambda: cupac(*pair(pred)))
    if pre or pred:
        out["mlrate"] = run("mlrate", lambda: mlrate(*pair(pre + pred)))

    checks: tuple[CovariateCheck, ...] = ()
    selected: list[str] = []
    if cands:
        zt, zc = summarize(mt, cands[0], cands[1:]), summarize(mc, cands[0], cands[1:])
        checks = tuple(select_covariates(cands, zt, zc, s.selection_alpha, s.selection_holm))
        if s.preselected is not None:
            checks = tuple(replace(ch, selected=ch.name in s.preselected and ch.note is None)
                           for ch in checks)
        selected = [c.name for c in checks if c.selected]
        out["lin_crespo"] = run("lin_crespo",
                                lambda: _lin_crespo(spec, mt, mc, pre, pred, selected))
    if pre or pred or cands:
        out["adjusted"] = run("adjusted", lambda: _adjusted(*pair(pre + pred + selected)))

    comp = Comparison(treatment, control, out, checks, _bayes(spec, out, mt, mc, s, blocker),
                      _diagnostics(spec, mt, mc, pre + pred))
    return comp


def _blocker(spec: MetricSpec, mt: MomentMatrix, mc: MomentMatrix) -> str | None:
    """Why no estimator (and no posterior) can be computed for this pair of arms, if so."""
    for label, m in (("treatment", mt), ("control", mc)):
        if m.n < 2:
            return f"{label} arm has {m.n} unit(s); at least 2 are needed"
    if spec.kind == "ratio":
        assert spec.denominator
        for label, m in (("treatment", mt), ("control", mc)):
            if float(m.mean[m.index(spec.denominator)]) == 0.0:
                return (f"denominator {spec.denominator!r} sums to 0 in the {label} arm: "
                        "the ratio is undefined")
    return None


def _one_arm_constant(spec: MetricSpec, mt: MomentMatrix, mc: MomentMatrix) -> str | None:
    """The note when the outcome is constant in exactly one arm (issue 12, item 3).

    That arm's sampling variance cannot be estimated: its sample variance is 0, and the
    adjusted estimators would replace it by the covariates' share alone (an underestimate),
    so every estimator keeps its effect and means but reports no SE, interval or p-value.
    """
    zero = [_summary(spec, m, []).y_constant for m in (mt, mc)]
    if zero[0] == zero[1]:
        return None
    return ONE_ARM_NOTE.format(arm="treatment" if zero[0] else "control")


def _adjusted(t: ArmSummary, c: ArmSummary) -> Contrast:
    return adjusted(t, c) if t.k else diff(t, c)


def _lin_crespo(spec: MetricSpec, mt: MomentMatrix, mc: MomentMatrix, pre: list[str],
                pred: list[str], selected: list[str]) -> Contrast:
    if pred:
        t = residual_by_prediction(_summary(spec, mt, pred + selected))
        c = residual_by_prediction(_summary(spec, mc, pred + selected))
    elif pre:
        t, c = residual_by_covariates(_summary(spec, mt, pre + selected),
                                      _summary(spec, mc, pre + selected), len(pre))
    else:
        t, c = _summary(spec, mt, selected), _summary(spec, mc, selected)
    out = lin_crespo(t, c)
    # R = y − (what step 1 removed): add back its pooled mean so the arm means (and the
    # relative effect) are on the outcome's scale; the effect itself is unchanged.
    yt, yc = _summary(spec, mt, []), _summary(spec, mc, [])
    offset = ((yt.n * (yt.y_mean - t.y_mean) + yc.n * (yc.y_mean - c.y_mean))
              / (yt.n + yc.n))
    return replace(out, treatment_mean=out.treatment_mean + offset,
                   control_mean=out.control_mean + offset)


def _bayes(spec: MetricSpec, out: dict[str, Estimate], mt: MomentMatrix, mc: MomentMatrix,
           s: AnalysisSettings, blocker: str | None = None) -> BayesResult:
    """The posterior of the primary estimate; null with the same note when it is null.

    The beta–binomial posterior needs no sample variance, so it is computed whenever the
    binary ``diff`` has an effect (also when one arm has zero variance and no SE).
    """
    primary = Comparison("", "", out, (), BayesResult("", "")).primary
    if spec.kind == "binary" and primary.estimator == "diff":
        if blocker or primary.effect is None:
            return BayesResult("beta-binomial", "diff",
                               note=blocker or primary.note or "no estimate available")
        assert spec.outcome
        i_t, i_c = mt.index(spec.outcome), mc.index(spec.outcome)
        x_t, x_c = round(float(mt.mean[i_t]) * mt.n), round(float(mc.mean[i_c]) * mc.n)
        return bayes.beta_binomial(x_t, mt.n, x_c, mc.n, s.prior_sigma, s.alpha)
    if not primary.ok or primary.treatment_mean is None or primary.control_mean is None:
        return BayesResult("normal-normal", primary.estimator,
                           note=primary.note or "no estimate available")
    v_t, v_c = (primary.treatment_se or 0.0) ** 2, (primary.control_se or 0.0) ** 2
    return bayes.normal_normal(primary.treatment_mean, v_t, primary.control_mean, v_c,
                               s.prior_sigma, s.alpha, primary.estimator)


def _diagnostics(spec: MetricSpec, mt: MomentMatrix, mc: MomentMatrix,
                 pre: list[str]) -> Diagnostics:
    if not pre or mt.n < 2 or mc.n < 2:
        return Diagnostics()
    t, c = _summary(spec, mt, pre), _summary(spec, mc, pre)
    ps = balance_p_values(t, c)[1:]
    checks = tuple(CovariateCheck(n, p, False) if math.isfinite(p) else
                   CovariateCheck(n, None, False, "zero variance: balance not testable")
                   for n, p in zip(pre, ps, strict=True))
    corr = None
    if spec.prediction:
        both = (mt + mc)
        sm = _summary(spec, both, [spec.prediction])
        constant = sm.n < 2 or any(is_constant(float(sm.cov[j, j]), float(sm.bound[j, j]))
                                   for j in (0, 1))
        corr = None if constant else float(sm.cov[0, 1] / math.sqrt(sm.cov[0, 0] * sm.cov[1, 1]))
    imbalance = any(ch.p_value is not None and ch.p_value < IMBALANCE_THRESHOLD for ch in checks)
    return Diagnostics(corr, checks, imbalance)
