"""Settings from LIFTSTREAM_* variables: parsing, errors naming the variable, redaction."""

from __future__ import annotations

import dataclasses

import pytest

from workers.settings import Settings, SettingsError, env_name, load_settings


def test_defaults_from_empty_env() -> None:
    assert load_settings({}) == Settings()
    s = Settings()
    assert s.partitions == 12 and s.redis_url == "redis://localhost:6379/0"
    assert s.kafka_options() == {"security_protocol": "PLAINTEXT"}


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFTSTREAM_PARTITIONS", "3")
    assert load_settings().partitions == 3


def test_every_field_has_a_variable() -> None:
    for f in dataclasses.fields(Settings):
        assert env_name(f.name) == "LIFTSTREAM_" + f.name.upper()


def test_parses_every_type() -> None:
    s = load_settings({
        "LIFTSTREAM_KAFKA_BOOTSTRAP": " k1:9092,k2:9092 ",
        "LIFTSTREAM_REDIS_URL": "rediss://user:pw@r:6380/2",
        "LIFTSTREAM_REDIS_CLUSTER": "Yes",
        "LIFTSTREAM_PARTITIONS": "24",
        "LIFTSTREAM_BATCH_SIZE": "1_000",
        "LIFTSTREAM_GRACE_SECONDS": "0",
        "LIFTSTREAM_RESULTS_CACHE_SECONDS": "0.5",
        "LIFTSTREAM_API_PORT": "9000",
        "LIFTSTREAM_API_READ_TOKENS": "a, b,,c ",
        "LIFTSTREAM_API_ADMIN_TOKENS": "",
        "LIFTSTREAM_ALERT_WEBHOOKS": "https://hooks.example.com/x?token=s,http://localhost:9/y",
        "LIFTSTREAM_MODEL_HMAC_KEY": "",
        "LIFTSTREAM_TOPIC_EVENTS": "my.events",
    })
    assert s.kafka_bootstrap == "k1:9092,k2:9092"
    assert s.redis_cluster is True
    assert (s.partitions, s.batch_size, s.api_port) == (24, 1000, 9000)
    assert (s.grace_seconds, s.results_cache_seconds) == (0.0, 0.5)
    assert s.api_read_tokens == ("a", "b", "c") and s.api_admin_tokens == ()
    assert s.alert_webhooks == ("https://hooks.example.com/x?token=s", "http://localhost:9/y")
    assert s.model_hmac_key is None
    assert s.topic_events == "my.events"


@pytest.mark.parametrize("text", ["true", "1", "yes", "on", "TRUE", " Yes "])
def test_true(text: str) -> None:
    assert load_settings({"LIFTSTREAM_REDIS_CLUSTER": text}).redis_cluster is True


@pytest.mark.parametrize("text", ["false", "0", "no", "off", "False"])
def test_false(text: str) -> None:
    assert load_settings({"LIFTSTREAM_REDIS_CLUSTER": text}).redis_cluster is False


@pytest.mark.parametrize(("var", "value", "message"), [
    ("BATCH_SIZE", "abc", "LIFTSTREAM_BATCH_SIZE: expected a positive integer, got 'abc'"),
    ("BATCH_SIZE", "0", "LIFTSTREAM_BATCH_SIZE: expected a positive integer, got '0'"),
    ("BATCH_SIZE", "-5", "LIFTSTREAM_BATCH_SIZE: expected a positive integer, got '-5'"),
    ("BATCH_SIZE", "1.5", "LIFTSTREAM_BATCH_SIZE: expected a positive integer, got '1.5'"),
    ("PARTITIONS", "", "LIFTSTREAM_PARTITIONS: expected a positive integer, got ''"),
    ("UNIT_BUCKETS", "x", "LIFTSTREAM_UNIT_BUCKETS: expected a positive integer"),
    ("MAX_PENDING_EVENTS", "0", "LIFTSTREAM_MAX_PENDING_EVENTS: expected a positive integer"),
    ("BATCH_TIMEOUT_MS", "0", "LIFTSTREAM_BATCH_TIMEOUT_MS: expected a positive integer"),
    ("API_PORT", "70000", "LIFTSTREAM_API_PORT: expected a TCP port (1-65535), got '70000'"),
    ("API_PORT", "http", "LIFTSTREAM_API_PORT: expected a TCP port"),
    ("GRACE_SECONDS", "-1", "LIFTSTREAM_GRACE_SECONDS: expected a number >= 0"),
    ("GRACE_SECONDS", "nan", "LIFTSTREAM_GRACE_SECONDS: expected a number >= 0"),
    ("GRACE_SECONDS", "1e999", "LIFTSTREAM_GRACE_SECONDS: expected a number >= 0"),
    ("ALERT_INTERVAL_SECONDS", "0", "LIFTSTREAM_ALERT_INTERVAL_SECONDS: expected a positive"),
    ("STALE_AFTER_SECONDS", "soon", "LIFTSTREAM_STALE_AFTER_SECONDS: expected a positive"),
    ("REDIS_CLUSTER", "maybe", "LIFTSTREAM_REDIS_CLUSTER: expected true or false"),
    ("REDIS_URL", "localhost:6379", "LIFTSTREAM_REDIS_URL: expected a redis://"),
    ("REDIS_URL", "", "LIFTSTREAM_REDIS_URL: expected a non-empty string"),
    ("KAFKA_BOOTSTRAP", " ", "LIFTSTREAM_KAFKA_BOOTSTRAP: expected a non-empty string"),
    ("TOPIC_EVENTS", "", "LIFTSTREAM_TOPIC_EVENTS: expected a non-empty string"),
    ("KAFKA_SECURITY_PROTOCOL", "TLS", "LIFTSTREAM_KAFKA_SECURITY_PROTOCOL: expected one of"),
    ("ALERT_WEBHOOKS", "ftp://x/y", "LIFTSTREAM_ALERT_WEBHOOKS: expected http(s) URLs"),
    ("ALERT_WEBHOOKS", "hooks.example.com", "LIFTSTREAM_ALERT_WEBHOOKS: expected http(s)"),
])
def test_bad_values_name_the_variable(var: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({f"LIFTSTREAM_{var}": value})
    assert str(info.value).startswith(message)


def test_unknown_variables_are_refused_by_name() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"LIFTSTREAM_BATCH_SIZ": "5", "PATH": "/bin", "OTHER_BATCH_SIZE": "1"})
    msg = str(info.value)
    assert msg.startswith("LIFTSTREAM_BATCH_SIZ (did you mean LIFTSTREAM_BATCH_SIZE?)")
    assert "unknown" in msg and "PATH" not in msg
    with pytest.raises(SettingsError, match=r"LIFTSTREAM_ZZZ: unknown setting.*known:"):
        load_settings({"LIFTSTREAM_ZZZ": "1"})


def test_kafka_security() -> None:
    s = load_settings({
        "LIFTSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "LIFTSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "LIFTSTREAM_KAFKA_SASL_USERNAME": "svc",
        "LIFTSTREAM_KAFKA_SASL_PASSWORD": "hunter2",
        "LIFTSTREAM_KAFKA_SSL_CAFILE": "/etc/ca.pem",
    })
    assert s.kafka_options() == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "hunter2",
        "ssl_cafile": "/etc/ca.pem",
    }
    ssl = load_settings({"LIFTSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
                         "LIFTSTREAM_KAFKA_SSL_CAFILE": "/ca.pem"})
    assert ssl.kafka_options() == {"security_protocol": "SSL", "ssl_cafile": "/ca.pem"}


@pytest.mark.parametrize(("env", "message"), [
    ({"LIFTSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
     "LIFTSTREAM_KAFKA_SASL_MECHANISM: required when"),
    ({"LIFTSTREAM_KAFKA_SASL_MECHANISM": "PLAIN"},
     "LIFTSTREAM_KAFKA_SASL_MECHANISM: set, but LIFTSTREAM_KAFKA_SECURITY_PROTOCOL is PLAINTEXT"),
    ({"LIFTSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
      "LIFTSTREAM_KAFKA_SASL_MECHANISM": "PLAIN", "LIFTSTREAM_KAFKA_SASL_USERNAME": "u"},
     "LIFTSTREAM_KAFKA_SASL_PASSWORD: required with SASL mechanism PLAIN"),
    ({"LIFTSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
      "LIFTSTREAM_KAFKA_SASL_MECHANISM": "MD5"},
     "LIFTSTREAM_KAFKA_SASL_MECHANISM: expected one of"),
    ({"LIFTSTREAM_KAFKA_SSL_CAFILE": "/ca.pem"},
     "LIFTSTREAM_KAFKA_SSL_CAFILE: set, but"),
    ({"LIFTSTREAM_REDIS_CLUSTER": "1", "LIFTSTREAM_REDIS_URL": "unix:///tmp/r.sock"},
     "LIFTSTREAM_REDIS_URL: Redis Cluster needs"),
])
def test_inconsistent_settings(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    assert str(info.value).startswith(message)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(SettingsError, match=r"^LIFTSTREAM_BATCH_SIZE: .* got 0$"):
        Settings(batch_size=0)
    with pytest.raises(SettingsError, match=r"^LIFTSTREAM_API_PORT"):
        Settings(api_port=True)


def test_redacted_hides_secrets() -> None:
    s = load_settings({
        "LIFTSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "LIFTSTREAM_KAFKA_SASL_MECHANISM": "PLAIN",
        "LIFTSTREAM_KAFKA_SASL_USERNAME": "svc",
        "LIFTSTREAM_KAFKA_SASL_PASSWORD": "hunter2",
        "LIFTSTREAM_REDIS_URL": "redis://default:s3cret@redis:6379/0",
        "LIFTSTREAM_API_READ_TOKENS": "read-token-1,read-token-2",
        "LIFTSTREAM_API_ADMIN_TOKENS": "admin-token",
        "LIFTSTREAM_MODEL_HMAC_KEY": "hmac-key-of-at-least-32-bytes-0123456789",
        "LIFTSTREAM_ALERT_WEBHOOKS": "https://hooks.slack.com/services/T0/B0/XYZ",
    })
    r = s.redacted()
    text = repr(r)
    for secret in ("hunter2", "s3cret", "read-token", "admin-token", "hmac-key", "XYZ"):
        assert secret not in text
    assert r["kafka_sasl_password"] == "***" and r["model_hmac_key"] == "***"
    assert r["api_read_tokens"] == ["***", "***"] and r["api_admin_tokens"] == ["***"]
    assert r["redis_url"] == "redis://default:***@redis:6379/0"
    assert r["alert_webhooks"] == ["https://hooks.slack.com/***"]
    assert r["kafka_sasl_username"] == "svc" and r["batch_size"] == 5000
    assert set(r) == {f.name for f in dataclasses.fields(Settings)}
    plain = Settings().redacted()
    assert plain["kafka_sasl_password"] is None and plain["redis_url"] == Settings().redis_url


def test_short_model_hmac_key_refused_naming_the_variable() -> None:
    for key in ("k", "x" * 31, "é" * 15):  # 15 two-byte characters: 30 bytes
        with pytest.raises(SettingsError) as info:
            load_settings({"LIFTSTREAM_MODEL_HMAC_KEY": key})
        message = str(info.value)
        assert message.startswith("LIFTSTREAM_MODEL_HMAC_KEY: expected at least 32 bytes")
        assert key not in message  # the (weak) secret is not echoed
        with pytest.raises(SettingsError, match="LIFTSTREAM_MODEL_HMAC_KEY"):
            Settings(model_hmac_key=key)
    assert load_settings({"LIFTSTREAM_MODEL_HMAC_KEY": "k" * 32}).model_hmac_key == "k" * 32


def test_definition_limits_from_settings() -> None:
    from state.limits import DEFAULT_LIMITS, LIMIT_FIELDS, DefinitionLimits

    assert Settings().definition_limits() == DEFAULT_LIMITS  # defaults in one place
    assert {f.name for f in dataclasses.fields(DefinitionLimits)} == set(LIMIT_FIELDS)
    s = load_settings({"LIFTSTREAM_MAX_VARIATIONS": "8", "LIFTSTREAM_MAX_METRICS": "20",
                       "LIFTSTREAM_MAX_DEFINITION_BYTES": "4096"})
    limits = s.definition_limits()
    assert (limits.max_variations, limits.max_metrics, limits.max_definition_bytes) == \
        (8, 20, 4096)
    assert limits.max_columns == 255
    for var, bad, fragment in (("LIFTSTREAM_MAX_COLUMNS", "1025", "at most 1024"),
                               ("LIFTSTREAM_MAX_VARIATIONS", "1000", "at most 255"),
                               ("LIFTSTREAM_MAX_METRICS", "0", "a positive integer"),
                               ("LIFTSTREAM_MAX_COVARIATES", "many", "a positive integer")):
        with pytest.raises(SettingsError, match=f"^{var}: expected {fragment}"):
            load_settings({var: bad})


@pytest.mark.parametrize("command", ["worker", "learner"])
def test_processes_refuse_a_short_hmac_key_at_start_up(command: str) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFTSTREAM_")}
    env.update(PYTHONPATH=str(root), LIFTSTREAM_MODEL_HMAC_KEY="weak-key-1")
    done = subprocess.run([sys.executable, "-m", "workers.cli", command], env=env,
                          capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"liftstream {command}: error: LIFTSTREAM_MODEL_HMAC_KEY: "
                                   f"expected at least 32 bytes (e.g. `openssl rand -hex 32`), "
                                   f"got 10")
    assert "weak-key-1" not in done.stderr + done.stdout
