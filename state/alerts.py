"""Alert state in Redis: which conditions already fired, so a restarted alerter does not re-fire.

Per experiment one hash (:func:`state.keys.alert_state`) maps a condition name (for example
``significance:revenue:t1``) to a small JSON object the alerter owns. A lease
(:func:`state.keys.alerter_lease`) lets only one of several alerter replicas evaluate at a time.
All commands touch a single key, so this works on Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from state import keys
from state.store import Client

_LEASE = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


class AlertStateStore:
    """Read and write the per-experiment alert condition states; hold the alerter lease."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._lease = client.register_script(_LEASE)

    def load(self, experiment: str) -> dict[str, dict[str, Any]]:
        """Every condition's stored state of ``experiment``."""
        raw: Any = self.client.hgetall(keys.alert_state(experiment))
        out = {}
        for k, v in raw.items():
            name = k.decode() if isinstance(k, bytes) else str(k)
            out[name] = msgspec.json.decode(v)
        return out

    def save(self, experiment: str, states: Mapping[str, Mapping[str, Any]]) -> None:
        """Store the given conditions' states (others are left as they are)."""
        if states:
            self.client.hset(keys.alert_state(experiment),
                             mapping={k: msgspec.json.encode(dict(v)) for k, v in states.items()})

    def clear(self, experiment: str) -> None:
        """Forget every condition of ``experiment`` (alerts may fire again)."""
        self.client.delete(keys.alert_state(experiment))

    def hold_lease(self, owner: str, ttl_seconds: float) -> bool:
        """Take or renew the alerter lease for ``ttl_seconds``; False if another owner holds it."""
        ms = max(1, int(ttl_seconds * 1000))
        return bool(self._lease(keys=[keys.alerter_lease()], args=[owner, ms]))

    def release_lease(self, owner: str) -> None:
        """Give the lease up if ``owner`` holds it."""
        key = keys.alerter_lease()
        cur = self.client.get(key)
        if cur is not None and (cur.decode() if isinstance(cur, bytes) else cur) == owner:
            self.client.delete(key)
