"""Unpickling of stored model snapshots across module moves.

A snapshot's payload is a pickle naming each class by module path. Issue 16 moved the online
models from ``workers.online_model`` to ``workers.learner.online_model``; snapshots stored
before the move name the old path. :func:`loads` maps old paths to new ones, so they still
load (the payload is unpickled only after its HMAC verified, :mod:`state.models`).
"""

from __future__ import annotations

import io
import pickle
from typing import Any, Final

RENAMED_MODULES: Final[dict[str, str]] = {
    "workers.online_model": "workers.learner.online_model",
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(RENAMED_MODULES.get(module, module), name)


def loads(payload: bytes) -> Any:
    """The object pickled in ``payload``, with classes of moved modules found at their new
    path."""
    return _Unpickler(io.BytesIO(payload)).load()
