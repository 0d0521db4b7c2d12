"""The latest verified model per id, refreshed in the background so ingestion never waits.

Snapshots are loaded (and their HMAC verified) on a background thread; the hot path only
reads a dict. A snapshot whose signature fails is refused and counted, and the last good
model stays in use.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from state.models import ModelRegistry, SignatureError

log = logging.getLogger("liftstream.models")


class ModelCache:
    """``predict(model_id, features) → (ŷ, version)``; version 0 means no model yet (ŷ = 0)."""

    def __init__(self, registry: ModelRegistry, refresh_seconds: float = 2.0) -> None:
        self.registry = registry
        self.refresh_seconds = refresh_seconds
        self._models: dict[str, tuple[int, Any]] = {}
        self._wanted: set[str] = set()
        self.refused: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def want(self, model_ids: set[str]) -> None:
        self._wanted |= model_ids

    def predict(self, model_id: str, features: Mapping[str, float]) -> tuple[float, int]:
        entry = self._models.get(model_id)
        if entry is None:
            self._wanted.add(model_id)
            return 0.0, 0
        version, model = entry
        try:
            value = float(model.predict(dict(features)))
        except Exception as exc:  # a model must never break ingestion
            log.warning("model %s v%d failed to predict: %s", model_id, version, exc)
            return 0.0, 0
        return (value, version) if value == value and abs(value) < 1e300 else (0.0, 0)

    def version(self, model_id: str) -> int:
        entry = self._models.get(model_id)
        return entry[0] if entry else 0

    def refresh(self) -> None:
        """Load newer snapshots of every wanted model (synchronously)."""
        for model_id in sorted(self._wanted):
            current = self.version(model_id)
            latest = self.registry.latest_version(model_id)
            if latest <= current or self.refused.get(model_id) == latest:
                continue
            try:
                loaded = self.registry.load(model_id, latest)
            except SignatureError as exc:
                self.refused[model_id] = latest
                log.error("refused model snapshot: %s (keeping v%d)", exc, current)
                self.registry.count_refusal(model_id)  # once per refused version (/metrics)
                continue
            if loaded is not None:
                self._models = {**self._models, model_id: (latest, loaded.model)}

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="model-cache", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_seconds):
            try:
                self.refresh()
            except Exception as exc:
                log.warning("model refresh failed: %s", exc)
