"""Signed, versioned snapshots of online models in Redis (the model registry).

A snapshot is a pickled model plus a header (examples seen, quality metrics, training-topic
offsets), signed with HMAC-SHA256 under a key from settings. :meth:`ModelRegistry.load`
verifies the signature *before* unpickling, so a tampered snapshot is refused, never executed.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from state import keys
from state.store import Client

KEEP_VERSIONS = 5


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
        if not hmac_key:
            raise ValueError("a model HMAC key is required (LIFTSTREAM_MODEL_HMAC_KEY)")
        self.client = client
        self.key = hmac_key.encode() if isinstance(hmac_key, str) else hmac_key

    def publish(self, model_id: str, model: Any, examples: int, kind: str = "",
                metrics: dict[str, float] | None = None,
                offsets: dict[str, int] | None = None) -> int:
        """Store a new version and make it the latest; old versions beyond 5 are dropped."""
        k = keys.model(model_id)
        version = int(self.client.hincrby(k, "next_version", 1))
        header = SnapshotHeader(model_id, version, examples, time.time(), dict(metrics or {}),
                                dict(offsets or {}), kind)
        payload = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
        signature = _sign(self.key, _HEADER.encode(header), payload)
        blob = msgspec.msgpack.encode(_Envelope(header, payload, signature))
        self.client.hset(k, mapping={f"v{version}": blob, "latest": version})
        self.client.hdel(k, f"v{version - KEEP_VERSIONS}")
        self.client.sadd(keys.MODEL_INDEX, model_id)
        return version

    def latest_version(self, model_id: str) -> int:
        raw = self.client.hget(keys.model(model_id), "latest")
        return int(raw) if raw is not None else 0

    def load(self, model_id: str, version: int | None = None) -> LoadedModel | None:
        """The (latest) snapshot, verified; ``None`` if absent; :class:`SignatureError` if
        tampered."""
        v = version if version is not None else self.latest_version(model_id)
        if v <= 0:
            return None
        blob: Any = self.client.hget(keys.model(model_id), f"v{v}")
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
        return LoadedModel(env.header, pickle.loads(env.payload))  # signature verified above

    def headers(self) -> list[SnapshotHeader]:
        """The latest header of every model (for ``liftstream models``)."""
        out = []
        ids: Any = self.client.smembers(keys.MODEL_INDEX)
        for raw in sorted(ids):
            model_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            v = self.latest_version(model_id)
            blob: Any = self.client.hget(keys.model(model_id), f"v{v}")
            if blob is not None:
                out.append(msgspec.msgpack.decode(blob, type=_Envelope).header)
        return out
