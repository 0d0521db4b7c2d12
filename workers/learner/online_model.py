"""Online models for CUPAC/MLRATE predictions: River pipelines behind one small picklable class.

The learner (``liftstream learner``) trains an :class:`OnlineModel` per model id and publishes
it as a signed snapshot (:mod:`state.models`); ingest workers unpickle the snapshot and call
:meth:`OnlineModel.predict` to freeze ŷ at a unit's exposure (Tang et al. 2020, CUPAC;
Guo et al. 2021, MLRATE). Both sides import this module, so the pickled class resolves.

Pipelines, by the experiment definition's ``model``:

* ``linear`` — ``TargetStandardScaler(StandardScaler | LinearRegression)``: SGD with the step
  ``max(0.1/√(t+1), 0.002)`` for weights and intercept. Standardising the target makes the
  step size independent of the metric's scale (revenue in cents or in dollars learn alike);
  the decaying step averages SGD noise away (a constant 0.01 step loses ~13% of the variance
  reduction on a noisy revenue metric, measured), the floor keeps it adaptive.
* ``logistic`` — ``StandardScaler | LogisticRegression`` (same schedule, base step 0.5);
  :meth:`~OnlineModel.predict` returns P(y = 1), the target is ``y > 0``.
* ``tree`` — ``HoeffdingAdaptiveTreeRegressor`` (grace period 200, adaptive leaves: mean or
  linear model, whichever has predicted better). Not target-scaled: the scaler's drifting
  mean and variance make older leaf statistics inconsistent (measured: 0.91 instead of 0.97
  of the oracle's variance reduction on the nonlinear simulation).
* ``forest`` — ``ARFRegressor`` with 3 trees (adaptive random forest, Gomes et al. 2018).

Quality is measured by progressive validation (predict, then learn, on every example; Blum,
Kalai & Langford 1999): R² and MAE cumulatively and over a recent exponential window
(half-life 5,000 examples), and the log-loss for ``logistic``.

Training examples carry an ``id`` (``experiment:unit``); ingest publishes at least once, so a
window of the most recent ids (64-bit fingerprints) is kept *inside* the model, saved
atomically with it, and a repeated id is not learned twice.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any, Final, Literal, cast, get_args

import numpy as np

__all__ = ["DEFAULT_KIND", "KINDS", "ModelKind", "OnlineModel", "Progressive", "RecentIds",
           "make_pipeline"]

ModelKind = Literal["linear", "logistic", "tree", "forest"]
KINDS: Final[tuple[str, ...]] = get_args(ModelKind)
DEFAULT_KIND: Final = "linear"
RECENT_HALF_LIFE: Final = 5000.0
_EPS: Final = 1e-15


class DecayingStep:
    """SGD step ``max(base/√(t+1), floor)`` (Robbins–Monro decay with a floor for drift).

    A River learning-rate scheduler by duck typing (``get(t)``), so importing this module
    does not import River (seconds): the CLI stays fast.
    """

    def __init__(self, base: float, floor: float) -> None:
        self.base = base
        self.floor = floor

    def get(self, t: int) -> float:
        return max(self.base / math.sqrt(t + 1.0), self.floor)

    def __repr__(self) -> str:
        return f"DecayingStep(base={self.base}, floor={self.floor})"


def make_pipeline(kind: str, seed: int = 0) -> Any:
    """A fresh River pipeline for ``kind`` (one of :data:`KINDS`)."""
    from river import forest, linear_model, optim, preprocessing, tree

    if kind == "linear":
        step: Any = DecayingStep(0.1, 0.002)
        inner: Any = (preprocessing.StandardScaler()
                      | linear_model.LinearRegression(optimizer=optim.SGD(step),
                                                      intercept_lr=step))
        return preprocessing.TargetStandardScaler(inner)
    if kind == "logistic":
        lstep: Any = DecayingStep(0.5, 0.005)
        return (preprocessing.StandardScaler()
                | linear_model.LogisticRegression(optimizer=optim.SGD(lstep), intercept_lr=lstep))
    if kind == "tree":
        return tree.HoeffdingAdaptiveTreeRegressor(grace_period=200,
                                                   leaf_prediction="adaptive", seed=seed)
    if kind == "forest":
        return preprocessing.TargetStandardScaler(forest.ARFRegressor(
            n_models=3, grace_period=200, leaf_prediction="adaptive", seed=seed))
    raise ValueError(f"unknown model kind {kind!r}; one of {', '.join(KINDS)}")


class Progressive:
    """Predict-then-learn quality: R², MAE (cumulative and recent) and log-loss."""

    def __init__(self, binary: bool, half_life: float = RECENT_HALF_LIFE) -> None:
        self.binary = binary
        self.decay = 0.5 ** (1.0 / half_life)
        self.n = 0
        self.y_mean = 0.0
        self.y_m2 = 0.0  # Σ (y − ȳ)² (Welford)
        self.sse = 0.0
        self.sae = 0.0
        self.log_loss_sum = 0.0
        # exponentially weighted: weight, Σw·y, Σw·y², Σw·e², Σw·|e|
        self.w = self.wy = self.wy2 = self.wse = self.wae = 0.0

    def update(self, y: float, y_pred: float) -> None:
        self.n += 1
        delta = y - self.y_mean
        self.y_mean += delta / self.n
        self.y_m2 += delta * (y - self.y_mean)
        err = y - y_pred
        self.sse += err * err
        self.sae += abs(err)
        if self.binary:
            p = min(max(y_pred, _EPS), 1.0 - _EPS)
            self.log_loss_sum -= math.log(p) if y > 0.5 else math.log(1.0 - p)
        d = self.decay
        self.w = d * self.w + 1.0
        self.wy = d * self.wy + y
        self.wy2 = d * self.wy2 + y * y
        self.wse = d * self.wse + err * err
        self.wae = d * self.wae + abs(err)

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = {"examples": float(self.n)}
        if self.n == 0:
            return out
        out["mae"] = self.sae / self.n
        if self.y_m2 > 0:
            out["r2"] = 1.0 - self.sse / self.y_m2
        mean = self.wy / self.w
        var = self.wy2 / self.w - mean * mean
        out["mae_recent"] = self.wae / self.w
        if var > 1e-12 * max(1.0, mean * mean):
            out["r2_recent"] = 1.0 - (self.wse / self.w) / var
        if self.binary:
            out["log_loss"] = self.log_loss_sum / self.n
        return out


class RecentIds:
    """The last ``capacity`` example ids (64-bit BLAKE2b fingerprints) for duplicate checks."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._ring = np.zeros(capacity, dtype=np.uint64)
        self._pos = 0
        self._size = 0
        self._set: set[int] = set()

    @staticmethod
    def fingerprint(example_id: str) -> int:
        return int.from_bytes(hashlib.blake2b(example_id.encode(), digest_size=8).digest(),
                              "little")

    def __len__(self) -> int:
        return self._size

    def __contains__(self, example_id: object) -> bool:
        return isinstance(example_id, str) and self.fingerprint(example_id) in self._set

    def add(self, example_id: str) -> bool:
        """Remember ``example_id``; False if it was already among the recent ids."""
        if self.capacity == 0:
            return True
        fp = self.fingerprint(example_id)
        if fp in self._set:
            return False
        if self._size == self.capacity:
            self._set.discard(int(self._ring[self._pos]))
        else:
            self._size += 1
        self._ring[self._pos] = fp
        self._pos = (self._pos + 1) % self.capacity
        self._set.add(fp)
        return True

    def __getstate__(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "ring": self._ring, "pos": self._pos,
                "size": self._size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.capacity = int(state["capacity"])
        self._ring = np.asarray(state["ring"], dtype=np.uint64)
        self._pos = int(state["pos"])
        self._size = int(state["size"])
        self._set = {int(v) for v in self._ring[:self._size]}


def _clean(features: Mapping[str, float]) -> dict[str, float]:
    """Features as finite floats (others dropped); fast when they already are."""
    try:
        fast = {str(k): float(v) for k, v in features.items()}
        if math.isfinite(math.fsum(fast.values())):
            return fast
    except (TypeError, ValueError, OverflowError):
        pass
    out: dict[str, float] = {}
    for k, v in features.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[str(k)] = f
    return out


class OnlineModel:
    """One online model: ``learn(features, target)``, ``predict(features) -> float``."""

    def __init__(self, kind: str = DEFAULT_KIND, seed: int = 0,
                 dedupe_window: int = 50_000) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown model kind {kind!r}; one of {', '.join(KINDS)}")
        self.kind: ModelKind = cast(ModelKind, kind)
        self.pipeline = make_pipeline(kind, seed)
        self.quality = Progressive(binary=kind == "logistic")
        self.recent = RecentIds(dedupe_window)
        self.examples = 0  # examples learned
        self.duplicates = 0  # examples skipped because their id was seen recently
        self.invalid = 0  # examples skipped for a non-finite target

    def __repr__(self) -> str:
        return f"OnlineModel({self.kind!r}, examples={self.examples})"

    def predict(self, features: Mapping[str, float]) -> float:
        """ŷ (P(y = 1) for ``logistic``); 0.0 before the first example."""
        if self.examples == 0:
            return 0.0
        return self._predict(_clean(features))

    def _predict(self, x: dict[str, float]) -> float:
        if self.kind == "logistic":
            proba = self.pipeline.predict_proba_one(x)
            return float(proba.get(True, 0.0))
        value = self.pipeline.predict_one(x)
        return float(value) if value is not None else 0.0

    def learn(self, features: Mapping[str, float], target: float,
              example_id: str | None = None) -> bool:
        """Progressive validation on the example, then learn it; False if skipped."""
        y = float(target)
        if not math.isfinite(y):
            self.invalid += 1
            return False
        if example_id is not None and not self.recent.add(example_id):
            self.duplicates += 1
            return False
        x = _clean(features)
        if self.kind == "logistic":
            label = y > 0.0
            y_pred = self._predict(x) if self.examples else 0.5
            self.quality.update(1.0 if label else 0.0, y_pred)
            self.pipeline.learn_one(x, label)
        else:
            y_pred = self._predict(x) if self.examples else 0.0
            self.quality.update(y, y_pred)
            self.pipeline.learn_one(x, y)
        self.examples += 1
        return True

    def metrics(self) -> dict[str, float]:
        """Progressive-validation metrics plus counts (for the snapshot header)."""
        out = self.quality.as_dict()
        out["examples"] = float(self.examples)
        out["duplicates"] = float(self.duplicates)
        out["invalid"] = float(self.invalid)
        return out
