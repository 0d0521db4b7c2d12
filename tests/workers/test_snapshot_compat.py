"""Model snapshots pickled before issue 16's move (``workers.online_model``) still load."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

from state import snapshot_pickle
from workers.learner import online_model
from workers.learner.online_model import OnlineModel

OLD = "workers.online_model"


def _pickled_under_old_path(model: OnlineModel) -> bytes:
    """``model`` pickled as the code before the move pickled it: classes named by ``OLD``."""
    moved = [c for c in vars(online_model).values()
             if isinstance(c, type) and c.__module__ == online_model.__name__]
    sys.modules[OLD] = online_model
    try:
        for c in moved:
            c.__module__ = OLD
        return pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        for c in moved:
            c.__module__ = online_model.__name__
        del sys.modules[OLD]


def test_snapshot_pickled_under_the_old_module_path_loads() -> None:
    rng = np.random.default_rng(16)
    model = OnlineModel("linear", seed=3)
    for i in range(200):
        x = float(rng.normal())
        model.learn({"x": x}, 2.0 * x + 1.0, f"u{i}")
    payload = _pickled_under_old_path(model)
    assert OLD.encode() in payload and OLD not in sys.modules
    sys.modules[OLD] = None  # type: ignore[assignment]  # the old module is gone (even if
    try:  # an editable install of an older checkout could still find it)
        with pytest.raises(ModuleNotFoundError):  # plain pickle fails
            pickle.loads(payload)
    finally:
        del sys.modules[OLD]
    loaded = snapshot_pickle.loads(payload)
    assert type(loaded) is OnlineModel
    assert loaded.examples == model.examples == 200
    assert loaded.predict({"x": 0.5}) == model.predict({"x": 0.5})
