"""The result document, typed: one set of msgspec Structs describing what
``estimators.report`` + ``state.results`` + ``workers.analyze`` produce and what the API
serves (``GET /v1/experiments/{id}/results``: its OpenAPI schema is :func:`json_schema`).

Field names and values are those of the JSON document. Only what every producer always writes
is required (names, arm sizes); fields that a producer may leave out
(the API's ``estimator=`` and ``sequential=false`` shapes, the batch CLI's ``timeline``, a
definition without a prior, …) have defaults, so they are not *required* in the schema;
numbers are ``float | None`` because a degenerate estimate is ``null`` with a ``note``.

Consumers (the table, the demo summary, the alerter, history snapshots, the verdict, the
finished-experiment record, the API's freshness, …) parse a document once, where they get it,
with :func:`parse` (a typed document is returned as is) and then read attributes, never string
keys. Producers (``estimators.report``, ``power.annotate``, ``estimators.slices``,
``state.results``, ``workers.batch.analyze``) build plain dicts, and the API's shaped responses
stay dicts: their key order and the fields a shape leaves out are the JSON's, which a
round-trip through these structs (defaults filled in, declaration order) would change.

>>> doc = parse({"experiment": "shop", "slices": [{"variations": [
...     {"name": "control", "n": 10, "is_control": True}, {"name": "t", "n": 12,
...     "is_control": False}], "metrics": [{"metric": "revenue", "kind": "numeric",
...     "comparisons": [{"treatment": "t", "control": "control", "primary": "diff",
...     "estimators": {"diff": {"estimator": "diff", "effect": 0.5}}}]}]}]})
>>> c = doc.slices[0].metrics[0].comparisons[0]
>>> c.estimators[c.primary].effect, doc.slices[0].total_units
(0.5, 22)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

__all__ = ["Bayes", "Comparison", "CovariateCheck", "Decision", "Estimator", "Freshness",
           "MetricResult", "Power", "ResultDocument", "ResultWarning", "Slice", "Srm",
           "Variation", "Window", "first_freshness", "json_schema", "parse", "parse_slice",
           "to_builtins"]

Number = float | None


class Estimator(msgspec.Struct, kw_only=True):
    """One estimator's comparison (``estimators.records.Estimate`` as JSON)."""

    estimator: str = ""
    effect: Number = None  # fixed horizon
    se: Number = None
    ci_low: Number = None
    ci_high: Number = None
    p_value: Number = None
    rel_effect: Number = None  # relative (Fieller's interval, delta-method SE)
    rel_ci_low: Number = None
    rel_ci_high: Number = None
    rel_se: Number = None
    seq_ci_low: Number = None  # anytime-valid
    seq_ci_high: Number = None
    seq_p_value: Number = None
    variance_reduction: Number = None  # against diff
    ci_width_ratio: Number = None
    r_squared: Number = None
    treatment_mean: Number = None  # the (adjusted) arm means the effect is built on
    control_mean: Number = None
    treatment_se: Number = None
    control_se: Number = None
    adjusted_p_value: Number = None  # after the correction across metrics × treatments
    adjusted_seq_p_value: Number = None
    slice_bh_p_value: Number = None  # BH across a dimension's values (estimators.slices)
    slice_bh_seq_p_value: Number = None
    biased: bool = False
    note: str | None = None


class CovariateCheck(msgspec.Struct, kw_only=True):
    """Balance test of one in-experiment candidate and whether it was used."""

    name: str
    p_value: Number = None
    selected: bool = False
    note: str | None = None


class Bayes(msgspec.Struct, kw_only=True):
    """Posterior means and decision quantities (``estimators.bayes``)."""

    model: str | None = ""  # None: no Bayesian model (quantile metrics)
    estimator: str = ""
    control_posterior_mean: Number = None
    treatment_posterior_mean: Number = None
    precision_weight: Number = None
    ci_low: Number = None
    ci_high: Number = None
    chance_to_beat_control: Number = None
    expected_loss: Number = None
    note: str | None = None


class Power(msgspec.Struct, kw_only=True):
    """Power, MDE and time to decision of a comparison (``estimators.power.Power``)."""

    estimator: str = ""
    power: Number = None
    mde: Number = None
    mde_sequential: Number = None
    rel_mde: Number = None
    rel_mde_sequential: Number = None
    target_rel_mde: Number = None
    target_effect: Number = None
    units: int | None = None
    projected_units: int | None = None
    projected_units_fixed: int | None = None
    remaining_units: int | None = None
    units_per_second: Number = None
    projected_seconds: Number = None
    progress: Number = None
    reached: bool | None = None
    note: str | None = None


class Comparison(msgspec.Struct, kw_only=True):
    """One treatment against the control for one metric."""

    treatment: str
    control: str = ""
    primary: str | None = "diff"
    estimators: dict[str, Estimator] = {}
    covariate_selection: list[CovariateCheck] = []
    bayes: Bayes | None = None
    diagnostics: dict[str, Any] | None = None
    power: Power | None = None
    selection: dict[str, Any] | None = None
    proxy: dict[str, Any] | None = None
    power_note: str | None = None  # why ``power`` is null (quantile metrics)

    @property
    def primary_name(self) -> str:
        """The recommended estimator (``diff`` when none is named)."""
        return self.primary or "diff"

    def primary_estimate(self) -> Estimator | None:
        """The recommended estimator's numbers (None when filtered out)."""
        return self.estimators.get(self.primary_name)


class MetricResult(msgspec.Struct, kw_only=True):
    """Every comparison of one metric."""

    metric: str
    kind: str = ""
    comparisons: list[Comparison] = []
    # kind ``quantile`` (estimators.quantiles): the quantile of metric ``of`` compared
    quantile: Number = None
    of: str | None = None
    accuracy: Number = None
    histogram_buckets: dict[str, int] | None = None


class Variation(msgspec.Struct, kw_only=True):
    name: str
    n: int
    is_control: bool = False


class Srm(msgspec.Struct, kw_only=True):
    """Sample-ratio mismatch: χ² p-value (reported), the anytime-valid one (decides)."""

    p_value: Number = None
    sequential_p_value: Number = None
    flagged: bool = False
    expected_weights: list[float] = []
    note: str | None = None


class Freshness(msgspec.Struct, kw_only=True):
    """How new the data is: a slice's newest applied event; the API adds the rest."""

    last_event_ts: Number = None
    computed_at: Number = None
    last_event_age_seconds: Number = None
    consumer_lag: dict[str, Any] | None = None
    cache_seconds: Number = None


class Slice(msgspec.Struct, kw_only=True):
    """One slice (``by`` = None: everyone): arm sizes, SRM and every metric."""

    variations: list[Variation]
    metrics: list[MetricResult] = []
    by: dict[str, Any] | None = None
    srm: Srm | None = None
    counters: dict[str, int] | None = None
    freshness: Freshness | None = None
    timeline: list[dict[str, Any]] | None = None

    @property
    def total_units(self) -> int:
        return sum(v.n for v in self.variations)

    def metric(self, name: str) -> MetricResult | None:
        return next((m for m in self.metrics if m.metric == name), None)


class Window(msgspec.Struct, kw_only=True):
    start: Number = None
    end: Number = None
    interval: str = "[start, end)"
    phase: str | None = None


class Decision(msgspec.Struct, kw_only=True):
    """The verdict (``estimators.decision``): overall and per treatment."""

    recommendation: str
    reasons: list[str] = []
    treatment: str | None = None
    by_treatment: dict[str, dict[str, Any]] | None = None


class ResultWarning(msgspec.Struct, kw_only=True):
    """A counted loss, eviction or refusal (``state.warnings``), or dropped input rows."""

    code: str
    detail: str = ""


class ResultDocument(msgspec.Struct, kw_only=True):
    """The whole result document (the API adds ``status``, ``query`` and ``freshness``)."""

    slices: list[Slice]
    experiment: str | None = None
    window: Window | None = None
    warnings: list[ResultWarning] = []
    decision: Decision | None = None
    prior: dict[str, Any] | None = None
    timeline: list[dict[str, Any]] | None = None
    status: str | None = None
    query: dict[str, Any] | None = None
    freshness: Freshness | None = None

    @property
    def first(self) -> Slice:
        """The first slice (everyone, unless the document is sliced by a column)."""
        return self.slices[0]


class _FreshnessOnly(msgspec.Struct):
    freshness: Freshness | None = None


class _SlicesFreshness(msgspec.Struct):
    slices: list[_FreshnessOnly] = []


def first_freshness(doc_json: bytes) -> Freshness | None:
    """The first slice's freshness of an encoded document, decoding nothing else (a large
    document's other fields are skipped, not built).

    >>> first_freshness(b'{"slices": [{"freshness": {"last_event_ts": 5.0}, "metrics": []}]}')
    Freshness(last_event_ts=5.0, computed_at=None, last_event_age_seconds=None, \
consumer_lag=None, cache_seconds=None)
    """
    slices = msgspec.json.decode(doc_json, type=_SlicesFreshness).slices
    return slices[0].freshness if slices else None


def parse(doc: Mapping[str, Any] | bytes | ResultDocument) -> ResultDocument:
    """A produced document (a mapping, or its JSON) as typed structs (a typed one as is)."""
    if isinstance(doc, ResultDocument):
        return doc
    if isinstance(doc, bytes | bytearray | memoryview):
        return msgspec.json.decode(doc, type=ResultDocument)
    return msgspec.convert(doc, ResultDocument)


def parse_slice(sl: Mapping[str, Any] | Slice) -> Slice:
    """One slice document (what ``estimators.report.slice_document`` builds) as typed."""
    return sl if isinstance(sl, Slice) else msgspec.convert(sl, Slice)


def to_builtins(doc: ResultDocument) -> dict[str, Any]:
    """Plain JSON-ready data (what a serialiser wants)."""
    out: dict[str, Any] = msgspec.to_builtins(doc)
    return out


def json_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """``(schema of ResultDocument, its component schemas)`` in OpenAPI form."""
    (schema,), components = msgspec.json.schema_components(
        [ResultDocument], ref_template="#/components/schemas/{name}")
    return schema, components
