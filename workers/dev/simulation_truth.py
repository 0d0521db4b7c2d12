"""The simulated experiment: its configuration, the generating process's constants and the
true effects tests compare against (:mod:`workers.dev.simulate` streams it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from stream.messages import MAX_TS, MIN_TS

# ---- the generating process's constants (see the docstring of workers.dev.simulate)
ACTIVITY_SHAPE: Final = 2.0  # k
ACTIVITY_SCALE: Final = 1.0  # θ
P_MAX: Final = 0.3
SATURATION: Final = 2.0  # p(x) = P_MAX·(1 − exp(−x/SATURATION))
SESSIONS_PER_ACTIVITY: Final = 0.5
PAGEVIEWS_PER_SESSION: Final = 1.5
EXTRA_PURCHASES_PER_ACTIVITY: Final = 0.3
VALUE_SHAPE: Final = 2.0
VALUE_SCALE: Final = 15.0
TICKET_BASE: Final = 0.2
TICKET_SLOPE: Final = 0.1

BLOCK: Final = 1000  # units generated at once; late exposures move one block back
UNIT_SPACING: Final = 0.01  # seconds between units' exposures when no rate is given
EVENT_SPACING: Final = 0.001  # seconds between a unit's consecutive events
STREAMS: Final = ("arm", "activity", "uniform", "sessions", "pageviews", "purchases",
                   "values", "noise", "tickets", "srm", "late", "garbage")


@dataclass(frozen=True)
class SimulationConfig:
    """Parameters of a simulated experiment (see the module docstring for their meaning)."""

    experiment: str = "sim"
    units: int = 20000
    arms: int = 2
    effect: float = 0.05
    covariate_strength: float = 0.7
    srm_fault: float = 0.0
    affected_candidate_shift: float = 0.0
    late_fraction: float = 0.0
    malformed_fraction: float = 0.0
    seed: int = 0
    start_ts: float = 1_700_000_000.0
    rate: float | None = None
    model: str | None = None  # online learner for CUPAC/MLRATE (linear|logistic|tree|forest)
    outcome_window_seconds: float | None = None  # when matured units become training examples

    def __post_init__(self) -> None:
        if self.units < 0:
            raise ValueError(f"units: must be >= 0, got {self.units}")
        if self.arms < 2:
            raise ValueError(f"arms: need at least 2 (control and a treatment), got {self.arms}")
        top = 1.0 + (self.arms - 1) * self.effect
        if not (math.isfinite(self.effect) and 0.0 <= top <= 1.0 / P_MAX):
            raise ValueError(f"effect: arm {self.arms - 1} would get the lift factor {top:g}; "
                             f"it must lie in [0, {1 / P_MAX:g}] (a probability stays ≤ 1)")
        for name in ("covariate_strength", "srm_fault", "late_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}: must be between 0 and 1, got {v}")
        if not 0.0 <= self.malformed_fraction <= 0.5:
            raise ValueError(f"malformed_fraction: must be between 0 and 0.5, "
                             f"got {self.malformed_fraction}")
        low = TICKET_BASE + (self.arms - 1) * min(self.affected_candidate_shift, 0.0) * \
            _ticket_sd()
        if not math.isfinite(self.affected_candidate_shift) or low < 0:
            raise ValueError(f"affected_candidate_shift: {self.affected_candidate_shift} "
                             f"would make the ticket rate negative")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"rate: must be a positive number of messages/s, got {self.rate}")
        if not MIN_TS <= self.start_ts < MAX_TS - 86400.0:
            raise ValueError(f"start_ts: must be epoch seconds in years 2000-2100, "
                             f"got {self.start_ts}")

    @property
    def variations(self) -> tuple[str, ...]:
        """``control, treatment_1, …, treatment_{arms−1}``."""
        return ("control", *(f"treatment_{i}" for i in range(1, self.arms)))


# --------------------------------------------------------------------------- the truth


def _gamma_moment(j: int, t: float) -> float:
    """``E[x^j · exp(−t·x)]`` for ``x ~ Gamma(k, θ)``, j ∈ {0, 1, 2}."""
    k, th = ACTIVITY_SHAPE, ACTIVITY_SCALE
    rising = math.prod(k + m for m in range(j))  # Γ(k+j)/Γ(k)
    return float(rising * th**j * (1.0 + th * t) ** (-k - j))


def _converted_moment(j: int) -> float:
    """``E[p(x) · x^j]`` with ``p(x) = P_MAX·(1 − exp(−x/s))``."""
    return P_MAX * (_gamma_moment(j, 0.0) - _gamma_moment(j, 1.0 / SATURATION))


@dataclass(frozen=True)
class _Moments:
    conversion: float  # E[p(x)], the control conversion rate
    revenue: float  # E[Y₀]
    revenue_sq: float  # E[Y₀²]
    sessions: float
    pageviews: float
    purchases: float  # E[number of purchase events] in control
    tickets: float
    ticket_sd: float

    @property
    def revenue_sd(self) -> float:
        return math.sqrt(max(self.revenue_sq - self.revenue**2, 0.0))


def moments() -> _Moments:
    c = EXTRA_PURCHASES_PER_ACTIVITY
    mu_v = VALUE_SHAPE * VALUE_SCALE
    var_v = VALUE_SHAPE * VALUE_SCALE**2
    p0, p1, p2 = (_converted_moment(j) for j in range(3))
    # S = Σ_{1..M} V with M = 1 + Poisson(c·x): E[S|x] = μ(1+cx),
    # E[S²|x] = σ²(1+cx) + μ²(1 + 3cx + c²x²); Y₀ = 1[U < p(x)]·S
    revenue = mu_v * (p0 + c * p1)
    revenue_sq = var_v * (p0 + c * p1) + mu_v**2 * (p0 + 3 * c * p1 + c * c * p2)
    mean_x = _gamma_moment(1, 0.0)
    sessions = 1.0 + SESSIONS_PER_ACTIVITY * mean_x
    tickets = TICKET_BASE + TICKET_SLOPE * mean_x
    return _Moments(p0, revenue, revenue_sq, sessions, PAGEVIEWS_PER_SESSION * sessions,
                    p0 + c * p1, tickets, _ticket_sd())


def _ticket_sd() -> float:
    """Control sd of tickets: Var = E[λ(x)] + Var(λ(x)) for a Poisson mixture."""
    mean_x = _gamma_moment(1, 0.0)
    var_x = _gamma_moment(2, 0.0) - mean_x**2
    return math.sqrt(TICKET_BASE + TICKET_SLOPE * mean_x + TICKET_SLOPE**2 * var_x)


def true_effects(cfg: SimulationConfig) -> dict[str, dict[str, float]]:
    """Metric → treatment → exact difference of population means (treatment − control).

    Closed form (no Monte-Carlo): conversion and revenue means scale by ``1 + i·effect``,
    sessions are unaffected, ``revenue_per_session`` is the difference of the ratios of
    population means. Exposure faults drop units at random, so they leave the truth as is.
    """
    m = moments()
    out: dict[str, dict[str, float]] = {"converted": {}, "revenue": {}, "sessions": {},
                                        "revenue_per_session": {}}
    for i, name in enumerate(cfg.variations[1:], start=1):
        lift = i * cfg.effect
        out["converted"][name] = lift * m.conversion
        out["revenue"][name] = lift * m.revenue
        out["sessions"][name] = 0.0
        out["revenue_per_session"][name] = lift * m.revenue / m.sessions
    return out


def true_candidate_effects(cfg: SimulationConfig) -> dict[str, dict[str, float]]:
    """In-experiment candidate → treatment → exact difference of population means."""
    sd = _ticket_sd()
    names = cfg.variations[1:]
    return {"pageviews": dict.fromkeys(names, 0.0),
            "support_tickets": {n: i * cfg.affected_candidate_shift * sd
                                for i, n in enumerate(names, start=1)}}


def control_means() -> dict[str, float]:
    """Exact control-population means of every metric and candidate (and Var of revenue)."""
    m = moments()
    return {"converted": m.conversion, "revenue": m.revenue, "sessions": m.sessions,
            "revenue_per_session": m.revenue / m.sessions, "pageviews": m.pageviews,
            "support_tickets": m.tickets, "revenue_variance": m.revenue_sd**2}


def expected_messages_per_unit(cfg: SimulationConfig) -> float:
    """Expected messages per control unit, garbage included (paces timestamps to ``rate``)."""
    m = moments()
    real = 1.0 + m.sessions + m.pageviews + m.purchases + m.tickets
    return real / (1.0 - cfg.malformed_fraction)


def simulation_definition(cfg: SimulationConfig) -> dict[str, Any]:
    """The experiment definition (for ``state.registry.parse_definition``)."""
    return {
        "id": cfg.experiment,
        "variations": list(cfg.variations),
        "weights": [1.0] * cfg.arms,
        "metrics": [
            {"name": "converted", "event": "purchase", "aggregate": "binary"},
            {"name": "revenue", "event": "purchase", "aggregate": "sum", "mde": 0.05},
            {"name": "sessions", "event": "session", "aggregate": "count"},
        ],
        "ratios": [{"name": "revenue_per_session", "numerator": "revenue",
                    "denominator": "sessions"}],
        "covariates": ["pre_revenue"],
        "in_experiment": [
            {"name": "pageviews", "event": "pageview", "aggregate": "count"},
            {"name": "support_tickets", "event": "ticket", "aggregate": "count"},
        ],
        "primary_metric": "revenue",
        "guardrails": ["sessions"],
        **({"model": cfg.model} if cfg.model else {}),
        **({"outcome_window_seconds": cfg.outcome_window_seconds}
           if cfg.outcome_window_seconds else {}),
    }
