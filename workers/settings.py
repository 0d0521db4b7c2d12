"""The one settings object of every liftstream process, read from ``LIFTSTREAM_*`` variables.

Each field ``name`` is set by the variable ``LIFTSTREAM_`` + ``NAME`` (upper case): tuples
are comma-separated, booleans accept true/false/1/0/yes/no/on/off, an empty value for an
optional field means "not set". A bad value raises :class:`SettingsError` naming the
variable; an unknown ``LIFTSTREAM_*`` variable is refused too, so typos do not go unnoticed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from state.limits import CEILINGS, DEFAULT_LIMITS, LIMIT_FIELDS, DefinitionLimits
from state.models import MIN_KEY_BYTES

__all__ = ["ENV_PREFIX", "Settings", "SettingsError", "env_name", "load_settings", "to_env"]

ENV_PREFIX: Final = "LIFTSTREAM_"
SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
OFFSET_RESET_CHOICES: Final = ("refuse", "earliest")
SASL_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")
_REDIS_SCHEMES: Final = ("redis", "rediss", "unix")
_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})
_SECRET = "***"


class SettingsError(ValueError):
    """A settings value is invalid; the message starts with the environment variable."""


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return ENV_PREFIX + field.upper()


@dataclass(frozen=True)
class Settings:
    """Connection, topic, worker, API and alerting settings (defaults suit a local demo)."""

    kafka_bootstrap: str = "localhost:9092"
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: str | None = None
    redis_url: str = "redis://localhost:6379/0"
    redis_cluster: bool = False
    topic_exposures: str = "liftstream.exposures"
    topic_events: str = "liftstream.events"
    topic_training: str = "liftstream.training"
    topic_dead_letters: str = "liftstream.dead-letters"
    topic_alerts: str = "liftstream.alerts"
    partitions: int = 12
    group_id: str = "liftstream-ingest"
    batch_size: int = 5000
    batch_timeout_ms: int = 200
    grace_seconds: float = 600.0
    max_pending_events: int = 100_000
    offset_reset: str = "refuse"
    unit_buckets: int = 4096
    event_ids_per_unit: int = 1000
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_read_tokens: tuple[str, ...] = ()
    api_admin_tokens: tuple[str, ...] = ()
    results_cache_seconds: float = 1.0
    results_cache_entries: int = 256
    results_cache_bytes: int = 64 * 1024 * 1024
    api_max_body_bytes: int = 1024 * 1024
    api_compute_threads: int = 1
    api_compute_queue: int = 8
    model_hmac_key: str | None = None
    alert_interval_seconds: float = 10.0
    alert_webhooks: tuple[str, ...] = ()
    stale_after_seconds: float = 300.0
    learner_snapshot_examples: int = 5000
    learner_snapshot_seconds: float = 10.0
    learner_dedupe_window: int = 50_000
    # definition limits (state/limits.py holds the defaults; docs/operations.md explains them)
    max_variations: int = DEFAULT_LIMITS.max_variations
    max_metrics: int = DEFAULT_LIMITS.max_metrics
    max_ratios: int = DEFAULT_LIMITS.max_ratios
    max_covariates: int = DEFAULT_LIMITS.max_covariates
    max_candidates: int = DEFAULT_LIMITS.max_candidates
    max_columns: int = DEFAULT_LIMITS.max_columns
    max_definition_bytes: int = DEFAULT_LIMITS.max_definition_bytes

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check(f.name, getattr(self, f.name), repr(getattr(self, f.name)))
        _cross_check(self)

    def definition_limits(self) -> DefinitionLimits:
        """The bounds every new definition is held to (API and ``experiments create``)."""
        return DefinitionLimits(**{name: getattr(self, name) for name in LIMIT_FIELDS})

    def kafka_options(self) -> dict[str, Any]:
        """Security keyword arguments for kafka-python (only those that are set)."""
        options: dict[str, Any] = {
            "security_protocol": self.kafka_security_protocol,
            "sasl_mechanism": self.kafka_sasl_mechanism,
            "sasl_plain_username": self.kafka_sasl_username,
            "sasl_plain_password": self.kafka_sasl_password,
            "ssl_cafile": self.kafka_ssl_cafile,
        }
        return {k: v for k, v in options.items() if v is not None}

    def redacted(self) -> dict[str, Any]:
        """All settings for logs, with secrets replaced by ``"***"``."""
        out = dataclasses.asdict(self)
        for name in ("kafka_sasl_password", "model_hmac_key"):
            if out[name] is not None:
                out[name] = _SECRET
        for name in ("api_read_tokens", "api_admin_tokens"):
            out[name] = [_SECRET for _ in out[name]]
        out["alert_webhooks"] = [_redact_url_path(u) for u in self.alert_webhooks]
        out["redis_url"] = _redact_url_password(self.redis_url)
        return out


def _redact_url_password(url: str) -> str:
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        netloc = f"{user}:{_SECRET}@{host}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:
        return _SECRET


def _redact_url_path(url: str) -> str:
    """Webhook URLs often carry their secret in the path or query: keep scheme and host."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        tail = "/" + _SECRET if (parts.path.strip("/") or parts.query) else ""
        return f"{parts.scheme}://{host}{tail}" if parts.scheme else _SECRET
    except ValueError:
        return _SECRET


# --------------------------------------------------------------------------- field rules

_FIELDS: Final = {f.name: f for f in dataclasses.fields(Settings)}
_POSITIVE_INT: Final = ("partitions", "batch_size", "batch_timeout_ms", "max_pending_events",
                        "unit_buckets", "learner_snapshot_examples", "learner_dedupe_window",
                        "results_cache_entries", "results_cache_bytes", "api_max_body_bytes",
                        "api_compute_threads", "api_compute_queue", "event_ids_per_unit",
                        *LIMIT_FIELDS)
_NONNEGATIVE_FLOAT: Final = ("grace_seconds", "results_cache_seconds")
_POSITIVE_FLOAT: Final = ("alert_interval_seconds", "stale_after_seconds",
                          "learner_snapshot_seconds")
_BOOL: Final = ("redis_cluster",)
_TUPLE: Final = ("api_read_tokens", "api_admin_tokens", "alert_webhooks")
_OPTIONAL: Final = ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password",
                    "kafka_ssl_cafile", "model_hmac_key")


def _fail(name: str, expected: str, shown: str) -> SettingsError:
    return SettingsError(f"{env_name(name)}: expected {expected}, got {shown}")


def _check(name: str, value: Any, shown: str) -> None:
    """Validate one already-typed field value; ``shown`` is how to quote the bad input."""
    if name in _POSITIVE_INT:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise _fail(name, "a positive integer", shown)
        if name in LIMIT_FIELDS and value > getattr(CEILINGS, name):
            raise _fail(name, f"at most {getattr(CEILINGS, name)} (what the stored unit state "
                        f"can hold)", shown)
    elif name == "api_port":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise _fail(name, "a TCP port (1-65535)", shown)
    elif name in _NONNEGATIVE_FLOAT or name in _POSITIVE_FLOAT:
        ok = not isinstance(value, bool) and isinstance(value, int | float)
        ok = ok and math.isfinite(value) and (value > 0 or (value == 0
                                                            and name in _NONNEGATIVE_FLOAT))
        if not ok:
            what = "a number >= 0" if name in _NONNEGATIVE_FLOAT else "a positive number"
            raise _fail(name, what + " (seconds)", shown)
    elif name in _BOOL:
        if not isinstance(value, bool):
            raise _fail(name, "true or false", shown)
    elif name in _TUPLE:
        if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
            raise _fail(name, "a comma-separated list", shown)
        if name == "alert_webhooks":
            for url in value:
                if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
                    raise _fail(name, "http(s) URLs", repr(url))
    elif name in _OPTIONAL:
        if value is not None and (not isinstance(value, str) or not value):
            raise _fail(name, "a non-empty string or nothing", shown)
        if name == "model_hmac_key" and value is not None \
                and len(value.encode()) < MIN_KEY_BYTES:
            raise SettingsError(f"{env_name(name)}: expected at least {MIN_KEY_BYTES} bytes "
                                f"(e.g. `openssl rand -hex 32`), got {len(value.encode())}")
    elif not isinstance(value, str) or not value.strip():
        raise _fail(name, "a non-empty string", shown)
    elif name == "kafka_security_protocol" and value not in SECURITY_PROTOCOLS:
        raise _fail(name, "one of " + ", ".join(SECURITY_PROTOCOLS), shown)
    elif name == "offset_reset" and value not in OFFSET_RESET_CHOICES:
        raise _fail(name, "one of " + ", ".join(OFFSET_RESET_CHOICES), shown)
    elif name == "redis_url" and urlsplit(value).scheme not in _REDIS_SCHEMES:
        raise _fail(name, "a redis://, rediss:// or unix:// URL", shown)
    if name == "kafka_sasl_mechanism" and value is not None and value not in SASL_MECHANISMS:
        raise _fail(name, "one of " + ", ".join(SASL_MECHANISMS), shown)


def _cross_check(s: Settings) -> None:
    sasl = s.kafka_security_protocol.startswith("SASL_")
    if sasl and s.kafka_sasl_mechanism is None:
        raise SettingsError(f"{env_name('kafka_sasl_mechanism')}: required when "
                            f"{env_name('kafka_security_protocol')} is "
                            f"{s.kafka_security_protocol}")
    if not sasl and s.kafka_sasl_mechanism is not None:
        raise SettingsError(f"{env_name('kafka_sasl_mechanism')}: set, but "
                            f"{env_name('kafka_security_protocol')} is "
                            f"{s.kafka_security_protocol} (use SASL_SSL or SASL_PLAINTEXT)")
    if s.kafka_sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        for name in ("kafka_sasl_username", "kafka_sasl_password"):
            if getattr(s, name) is None:
                raise SettingsError(f"{env_name(name)}: required with SASL mechanism "
                                    f"{s.kafka_sasl_mechanism}")
    if s.kafka_ssl_cafile is not None and s.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        raise SettingsError(f"{env_name('kafka_ssl_cafile')}: set, but "
                            f"{env_name('kafka_security_protocol')} is "
                            f"{s.kafka_security_protocol} (use SSL or SASL_SSL)")
    if s.redis_cluster and s.redis_url.startswith("unix:"):
        raise SettingsError(f"{env_name('redis_url')}: Redis Cluster needs a redis:// or "
                            f"rediss:// URL, got a unix socket")


# --------------------------------------------------------------------------- conversion


def _to_int(raw: str) -> int:
    return int(raw.strip())


def _to_float(raw: str) -> float:
    return float(raw.strip())


def _to_bool(raw: str) -> bool:
    v = raw.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(raw)


def _to_tuple(raw: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def _to_optional(raw: str) -> str | None:
    return raw.strip() or None


def _converter(name: str) -> Callable[[str], Any]:
    if name in _POSITIVE_INT or name == "api_port":
        return _to_int
    if name in _NONNEGATIVE_FLOAT or name in _POSITIVE_FLOAT:
        return _to_float
    if name in _BOOL:
        return _to_bool
    if name in _TUPLE:
        return _to_tuple
    if name in _OPTIONAL:
        return _to_optional
    return str.strip


_EXPECTED: Final = {
    **dict.fromkeys(_POSITIVE_INT, "a positive integer"),
    "api_port": "a TCP port (1-65535)",
    **dict.fromkeys(_NONNEGATIVE_FLOAT, "a number >= 0 (seconds)"),
    **dict.fromkeys(_POSITIVE_FLOAT, "a positive number (seconds)"),
    **dict.fromkeys(_BOOL, "true or false (also 1/0, yes/no, on/off)"),
}


def to_env(settings: Settings) -> dict[str, str]:
    """``LIFTSTREAM_*`` variables that :func:`load_settings` turns back into ``settings``
    (for child processes)."""
    out = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if value is None:
            continue
        if isinstance(value, tuple):
            text = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        out[env_name(f.name)] = text
    return out


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``env`` (default: ``os.environ``); SettingsError names a bad variable."""
    source = os.environ if env is None else env
    by_var = {env_name(name): name for name in _FIELDS}
    unknown = sorted(k for k in source if k.startswith(ENV_PREFIX) and k not in by_var)
    if unknown:
        hints, guessed = [], True
        for k in unknown:
            close = difflib.get_close_matches(k[len(ENV_PREFIX):].lower(), _FIELDS, n=1)
            hints.append(f"{k} (did you mean {env_name(close[0])}?)" if close else k)
            guessed = guessed and bool(close)
        known = "" if guessed else f"; known: {', '.join(sorted(by_var))}"
        raise SettingsError(f"{', '.join(hints)}: unknown setting(s){known}")
    values: dict[str, Any] = {}
    for var, name in by_var.items():
        if var not in source:
            continue
        raw = source[var]
        try:
            value = _converter(name)(raw)
        except (ValueError, OverflowError):
            raise _fail(name, _EXPECTED.get(name, "a valid value"), repr(raw)) from None
        _check(name, value, repr(raw))
        values[name] = value
    return Settings(**values)
