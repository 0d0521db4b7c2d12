"""Signed, versioned snapshots of online models in Redis (the model registry).

A snapshot is a pickled model plus a header (examples seen, quality metrics, training-topic
offsets), signed with HMAC-SHA256 under a key from settings. :meth:`ModelRegistry.load`
verifies the signature *before* unpickling, so a tampered snapshot is refused, never executed;
refusals are counted per model id in Redis (:func:`refusal_counts`, shown in ``/metrics``).
The key must have at least :data:`MIN_KEY_BYTES` bytes (HMAC-SHA256's output size).

Model ids are ``<experiment>/<metric>`` (:mod:`state.naming`). A model with no snapshot of
its own falls back to the snapshots of its legacy id ``<experiment>.<metric>``, so snapshots
stored before the id format changed still load (until the learner adopts them under the new
id, :meth:`ModelRegistry.adopt`, numbering on from the legacy versions).
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from state import keys, snapshot_pickle
from state.naming import legacy_model_id, parse_model_id
from state.store import Client

KEEP_VERSIONS = 5
MIN_KEY_BYTES = 32


class SignatureError(ValueError):
    """A snapshot whose HMAC does not verify."""


class SnapshotHeader(msgspec.Struct, frozen=True):
    model_id: str
    version: int
    examples: int
    created: float
    metrics: dict[str, float] = msgspec.field(default_factory=dict)
    offsets: dict[str, int] = msgspec.field(default_factory=dict)
    kind: str = ""


class _Envelope(msgspec.Struct, frozen=True):
    header: SnapshotHeader
    payload: bytes
    signature: str


@dataclass(frozen=True)
class LoadedModel:
    header: SnapshotHeader
    model: Any = field(repr=False)


def _sign(key: bytes, header: bytes, payload: bytes) -> str:
    return hmac.new(key, header + b"\x00" + payload, hashlib.sha256).hexdigest()


_HEADER = msgspec.msgpack.Encoder()


class ModelRegistry:
    """Publish and load model snapshots; ``hmac_key`` must be the same for both sides."""

    def __init__(self, client: Client, hmac_key: str | bytes) -> None:
        key = hmac_key.encode() if isinstance(hmac_key, str) else hmac_key
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"LIFTSTREAM_MODEL_HMAC_KEY: at least {MIN_KEY_BYTES} bytes are "
                             f"required, got {len(key)}")
        self.client = client
        self.key = key

    def publish(self, model_id: str, model: Any, examples: int, kind: str = "",
                metrics: dict[str, float] | None = None,
                offsets: dict[str, int] | None = None) -> int:
        """Store a new version and make it the latest; old versions beyond 5 are dropped.
        The first version of an id numbers on from its legacy id's (see :meth:`stored_id`)."""
        k = keys.model(model_id)
        fallback = self.stored_id(model_id)
        if fallback != model_id:
            self.client.hsetnx(k, keys.MODEL_NEXT_VERSION, self.own_latest_version(fallback))
        version = int(self.client.hincrby(k, keys.MODEL_NEXT_VERSION, 1))
        header = SnapshotHeader(model_id, version, examples, time.time(), dict(metrics or {}),
                                dict(offsets or {}), kind)
        payload = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
        signature = _sign(self.key, _HEADER.encode(header), payload)
        blob = msgspec.msgpack.encode(_Envelope(header, payload, signature))
        self.client.hset(k, mapping={keys.model_version(version): blob, keys.MODEL_LATEST: version})
        self.client.hdel(k, keys.model_version(version - KEEP_VERSIONS))
        self.client.sadd(keys.MODEL_INDEX, model_id)
        return version

    def own_latest_version(self, stored_id: str) -> int:
        """The latest version stored under exactly this id (no legacy fallback)."""
        raw = self.client.hget(keys.model(stored_id), keys.MODEL_LATEST)
        return int(raw) if raw is not None else 0

    def stored_id(self, model_id: str) -> str:
        """The id whose snapshots serve ``model_id``: itself, or — while it has none — its
        legacy id (``<experiment>.<metric>``) if that has snapshots."""
        if self.own_latest_version(model_id) > 0:
            return model_id
        parsed = parse_model_id(model_id)
        if parsed is not None:
            legacy = legacy_model_id(*parsed)
            if self.own_latest_version(legacy) > 0:
                return legacy
        return model_id

    def latest_version(self, model_id: str) -> int:
        return self.own_latest_version(self.stored_id(model_id))

    def adopt(self, legacy_id: str, model_id: str, loaded: LoadedModel) -> int:
        """Publish a verified legacy snapshot under the new ``model_id``; its version numbers
        go on from the legacy ones (:meth:`publish`), so a reader of the fallback sees a newer
        version."""
        if self.own_latest_version(model_id) > 0:
            raise ValueError(f"model {model_id!r} already has snapshots")
        h = loaded.header
        return self.publish(model_id, loaded.model, h.examples, h.kind, dict(h.metrics),
                            dict(h.offsets))

    def count_refusal(self, model_id: str) -> None:
        """Count a refused snapshot of ``model_id`` (``/metrics``)."""
        self.client.hincrby(keys.MODEL_REFUSALS, model_id, 1)

    def load(self, model_id: str, version: int | None = None) -> LoadedModel | None:
        """The (latest) snapshot, verified; ``None`` if absent; :class:`SignatureError` if
        tampered. Versions are those of :meth:`stored_id` (the legacy id's, until adopted)."""
        model_id = self.stored_id(model_id)
        v = version if version is not None else self.own_latest_version(model_id)
        if v <= 0:
            return None
        blob: Any = self.client.hget(keys.model(model_id), keys.model_version(v))
        if blob is None:
            return None
        try:
            env = msgspec.msgpack.decode(blob, type=_Envelope)
        except msgspec.DecodeError as exc:
            raise SignatureError(f"model {model_id!r} v{v}: unreadable snapshot ({exc})") from None
        expected = _sign(self.key, _HEADER.encode(env.header), env.payload)
        if not hmac.compare_digest(expected, env.signature) or env.header.version != v \
                or env.header.model_id != model_id:
            raise SignatureError(f"model {model_id!r} v{v}: signature does not verify")
        return LoadedModel(env.header, snapshot_pickle.loads(env.payload))  # verified above

    def headers(self) -> list[SnapshotHeader]:
        """The latest header of every model (for ``liftstream models``)."""
        out = []
        ids: Any = self.client.smembers(keys.MODEL_INDEX)
        for raw in sorted(ids):
            model_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            v = self.latest_version(model_id)
            blob: Any = self.client.hget(keys.model(model_id), keys.model_version(v))
            if blob is not None:
                out.append(msgspec.msgpack.decode(blob, type=_Envelope).header)
        return out


def refusal_counts(client: Client) -> dict[str, int]:
    """Refused snapshots per model id (HMAC or format failures seen by workers and learner)."""
    raw: Any = client.hgetall(keys.MODEL_REFUSALS)
    return {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in raw.items()}
