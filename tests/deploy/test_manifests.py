"""Static checks of the deployment files: Dockerfile, compose, Kubernetes, operations docs.

No Docker engine, cluster or network is needed: the files are parsed and cross-checked against
the code they deploy (``workers.settings.Settings``, ``workers.cli.build_parser``). Where
``check-jsonschema`` (bundles the Compose Specification schema) and ``kubernetes-validate``
(bundles the Kubernetes OpenAPI schemas) are installed, the files are also validated against
those schemas offline; otherwise those two tests are skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from workers.cli import build_parser
from workers.settings import Settings, env_name, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
OPERATIONS = ROOT / "docs" / "operations.md"
ENV_EXAMPLE = DEPLOY / "liftstream.env.example"
IMAGE = "liftstream"
K8S_VERSION = "1.30"

SETTINGS_VARS = frozenset(env_name(f.name) for f in dataclasses.fields(Settings))
VAR_RE = re.compile(r"\bLIFTSTREAM_[A-Z0-9_]+")
PLACEHOLDER = "CHANGE_ME"


def _subcommands() -> frozenset[str]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return frozenset(action.choices)
    raise AssertionError("workers.cli.build_parser() has no sub-commands")


SUBCOMMANDS = _subcommands()


# --------------------------------------------------------------------------- loading


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def _load_all(path: Path) -> list[dict[str, Any]]:
    """The documents of a YAML file (parsed once per session: treat as read-only)."""
    text = path.read_text(encoding="utf-8")
    return [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]


def _compose() -> dict[str, Any]:
    (doc,) = _load_all(COMPOSE)
    return doc


def _k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@functools.cache
def _k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in _k8s_files() for d in _load_all(p)]


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in _k8s_docs() if d.get("kind") == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _of_kind(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def _workloads() -> list[dict[str, Any]]:
    return [d for _, d in _k8s_docs() if d.get("kind") in ("Deployment", "StatefulSet", "Job")]


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = _pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def _deployment(component: str) -> dict[str, Any]:
    return _one("Deployment", f"liftstream-{component}")


def _config_data() -> dict[str, str]:
    data: dict[str, str] = _one("ConfigMap", "liftstream-config")["data"]
    return data


def _secret_data() -> dict[str, str]:
    secret = _one("Secret", "liftstream-secrets")
    return {**secret.get("stringData", {}), **secret.get("data", {})}


def _partitions_k8s() -> int:
    return int(_config_data()["LIFTSTREAM_PARTITIONS"])


def _settings_anchor() -> dict[str, str]:
    env = _compose()["x-liftstream-settings"]
    return {k: str(v) for k, v in env.items()}


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _liftstream_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in _compose()["services"].items()
            if str(s.get("image", "")).split(":")[0] == IMAGE}


def _image_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


# --------------------------------------------------------------------------- every file


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    docs = _load_all(path)
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(d, dict) for d in docs)


def test_json_parses() -> None:
    for path in DEPLOY.rglob("*.json"):
        json.loads(path.read_text(encoding="utf-8"))


def _files_naming_variables() -> Iterator[Path]:
    yield DOCKERFILE
    yield OPERATIONS
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.suffix != ".pyc":
            yield path


def test_every_liftstream_variable_is_a_setting() -> None:
    """``load_settings`` refuses unknown ``LIFTSTREAM_*`` names: every name in deploy/,
    the Dockerfile and the operations doc must be a ``Settings`` field."""
    unknown = {}
    for path in _files_naming_variables():
        if not path.exists():
            continue
        for name in VAR_RE.findall(path.read_text(errors="replace")):
            if name not in SETTINGS_VARS:
                unknown.setdefault(name, str(path.relative_to(ROOT)))
    assert not unknown, f"not Settings fields: {unknown}"


def test_compose_settings_load() -> None:
    """The compose settings plus the example secrets are a valid configuration."""
    env = _settings_anchor()
    env.update({k: v for k, v in _env_file(ENV_EXAMPLE).items() if k.startswith("LIFTSTREAM_")})
    settings = load_settings(env)
    assert settings.api_host == "0.0.0.0"
    assert settings.redis_url.startswith("redis://") and not settings.redis_cluster


def test_k8s_settings_load() -> None:
    """The ConfigMap plus the Secret template's LIFTSTREAM_* keys are a valid configuration."""
    env = dict(_config_data())
    env.update({k: v for k, v in _secret_data().items() if k.startswith("LIFTSTREAM_")})
    settings = load_settings(env)
    assert settings.redis_cluster and settings.api_host == "0.0.0.0"


def test_secret_templates_hold_only_placeholders() -> None:
    secret_words = ("PASSWORD", "TOKEN", "KEY", "SECRET", "REDIS_URL", "WEBHOOK")
    example = _env_file(ENV_EXAMPLE)
    for key, value in example.items():
        if any(w in key for w in secret_words) and value:
            assert PLACEHOLDER in value, f"{ENV_EXAMPLE.name}: {key} is not a placeholder"
    for key, value in _secret_data().items():
        assert value == "" or PLACEHOLDER in value, f"Secret key {key} is not a placeholder"


# --------------------------------------------------------------------------- Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    ins = _dockerfile_instructions()
    last = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    return ins[last:]


def _instruction(name: str) -> str:
    found = [rest for w, rest in _final_stage() if w == name]
    assert found, f"Dockerfile: no {name} in the final stage"
    return found[-1]


def test_dockerfile_entrypoint_and_cmd() -> None:
    assert json.loads(_instruction("ENTRYPOINT")) == ["liftstream"]
    cmd = json.loads(_instruction("CMD"))
    assert cmd and cmd[0] in SUBCOMMANDS


def test_dockerfile_base_user_install_healthcheck() -> None:
    args = dict(rest.split("=", 1) for w, rest in _dockerfile_instructions() if w == "ARG"
                and "=" in rest)
    bases = {rest.split()[0] for w, rest in _dockerfile_instructions() if w == "FROM"}
    resolved = {args.get(b.strip("${}"), b) for b in bases}
    assert resolved == {"python:3.11-slim"}
    user = _instruction("USER").split(":")[0]
    assert user not in ("root", "0")
    assert any(w == "RUN" and re.search(r"pip install \.(\s|$)", rest)
               for w, rest in _dockerfile_instructions())
    healthcheck = _instruction("HEALTHCHECK")
    assert "liftstream-healthcheck" in healthcheck
    assert "/healthz" in (DEPLOY / "docker" / "healthcheck.py").read_text(encoding="utf-8")
    assert "8000" in _instruction("EXPOSE")


def test_dockerfile_bakes_in_no_secret() -> None:
    for word, rest in _dockerfile_instructions():
        if word in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"(PASSWORD|TOKEN|SECRET|HMAC|_KEY)\b", rest.upper()), rest
            assert "REDIS_URL" not in rest.upper(), rest


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    out = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line.lstrip("!").strip("/")
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**/", i):
                rx += "(?:.*/)?"
                i += 3
            elif pat.startswith("**", i):
                rx += ".*"
                i += 2
            elif pat[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pat[i] == "?":
                rx += "[^/]"
                i += 1
            elif pat[i] == "[":
                end = pat.index("]", i)
                rx += pat[i:end + 1]
                i = end + 1
            else:
                rx += re.escape(pat[i])
                i += 1
        out.append((negate, re.compile(rx + r"\Z")))
    return out


def _docker_ignored(path: str) -> bool:
    """Docker's rule, closely enough: the last pattern matching the path or a parent wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for negate, rx in _dockerignore_patterns():
        if any(rx.match(c) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerfile_copies_exist_and_are_in_the_context() -> None:
    for word, rest in _dockerfile_instructions():
        if word != "COPY" or "--from=" in rest:
            continue
        sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: missing"
            assert not _docker_ignored(src), f"COPY {src}: excluded by .dockerignore"
            if (ROOT / src).is_dir():
                inside = next(p for p in (ROOT / src).rglob("*.py"))
                assert not _docker_ignored(str(inside.relative_to(ROOT))), inside


def test_dockerignore_keeps_secrets_and_junk_out() -> None:
    for path in ("deploy/liftstream.env", ".env", ".git/config", ".venv/bin/python",
                 "tests/deploy/test_manifests.py", "workers/__pycache__/cli.cpython-311.pyc",
                 "liftstream.egg-info/PKG-INFO"):
        assert _docker_ignored(path), path
    for path in ("pyproject.toml", "README.md", "workers/cli.py", "state/apply_batch.lua",
                 "deploy/docker/healthcheck.py"):
        assert not _docker_ignored(path), path


def _healthcheck_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("liftstream_healthcheck",
                                                  DEPLOY / "docker" / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_reads_the_subcommand_of_pid1(tmp_path: Path) -> None:
    hc = _healthcheck_module()
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(b"/opt/liftstream/bin/python\0/opt/liftstream/bin/liftstream\0api\0"
                        b"--port\0009000\0")
    assert hc.pid1_command(str(cmdline)) == ["api", "--port", "9000"]
    assert hc.api_port(["--port", "9000"]) == 9000
    assert hc.api_port(["--port=9001"]) == 9001
    assert hc.pid1_command(str(tmp_path / "missing")) == []
    commands = hc.REDIS_COMMANDS
    assert commands == frozenset({"worker", "learner", "alerter"})


# --------------------------------------------------------------------------- sub-commands


def _used_subcommands() -> list[tuple[str, str]]:
    used = [("Dockerfile CMD", json.loads(_instruction("CMD"))[0])]
    for name, service in _liftstream_services().items():
        command = service.get("command")
        if command:
            first = command[0] if isinstance(command, list) else str(command).split()[0]
            used.append((f"compose {name}", first))
    for workload in _workloads():
        for c in _containers(workload):
            if c["image"].split(":")[0] == IMAGE:
                assert "command" not in c, "override args, not the liftstream ENTRYPOINT"
                used.append((f"k8s {workload['metadata']['name']}", c["args"][0]))
    hc = _healthcheck_module()
    used += [("healthcheck", sub) for sub in sorted(hc.REDIS_COMMANDS)]
    return used


def _subcommand_params() -> list[Any]:
    params = []
    for where, sub in _used_subcommands():
        marks = []
        if sub not in SUBCOMMANDS:
            marks.append(pytest.mark.xfail(
                reason=f"sub-command {sub!r} is not in workers.cli.build_parser() yet",
                strict=True))
        params.append(pytest.param(sub, id=f"{where}:{sub}", marks=marks))
    return params


@pytest.mark.parametrize("sub", _subcommand_params())
def test_subcommand_exists_in_cli(sub: str) -> None:
    assert sub in SUBCOMMANDS


# --------------------------------------------------------------------------- compose


def test_compose_services_present() -> None:
    services = set(_compose()["services"])
    assert {"kafka", "kafka-init", "redis", "worker", "learner", "alerter", "api",
            "prometheus", "grafana"} <= services


def test_compose_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("check_jsonschema")
    from importlib import resources

    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(_compose())]
    assert not errors, errors


def test_compose_images_pinned() -> None:
    for name, service in _compose()["services"].items():
        image = service.get("image")
        assert image, f"{name}: no image"
        assert _image_pinned(str(image)), f"{name}: image {image!r} is not pinned to a tag"


def test_compose_kafka_kraft_and_topics() -> None:
    services = _compose()["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "broker" in env["KAFKA_PROCESS_ROLES"]
    assert not any("ZOOKEEPER" in k for k in env)
    init = services["kafka-init"]
    assert init["environment"] == _compose()["x-liftstream-settings"]
    script = "\n".join(init["command"])
    assert "kafka-topics.sh" in script
    # Both co-partitioned topics are created in one loop with the one partition count.
    loop = re.search(r'for t in "\$\$LIFTSTREAM_TOPIC_EXPOSURES" "\$\$LIFTSTREAM_TOPIC_EVENTS";'
                     r'.*?--partitions "\$\$LIFTSTREAM_PARTITIONS"', script, re.S)
    assert loop, "kafka-init must create exposures and events with LIFTSTREAM_PARTITIONS"


def test_compose_workers_bounded_by_partitions() -> None:
    partitions = int(_settings_anchor()["LIFTSTREAM_PARTITIONS"])
    worker = _compose()["services"]["worker"]
    replicas = int(worker["deploy"]["replicas"])
    assert 1 <= replicas <= partitions
    assert replicas == 3


def test_compose_depends_on() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        deps = service.get("depends_on", {})
        items = deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps)
        for target, cond in items:
            assert target in services, f"{name} depends on missing service {target!r}"
            condition = (cond or {}).get("condition", "service_started")
            if condition == "service_healthy":
                assert _has_healthcheck(services[target]), f"{target} has no health check"
            if condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", target


def _has_healthcheck(service: dict[str, Any]) -> bool:
    if "healthcheck" in service:
        return not service["healthcheck"].get("disable", False)
    return str(service.get("image", "")).split(":")[0] == IMAGE and bool(
        _instruction("HEALTHCHECK"))


def test_compose_health_checks() -> None:
    for name, service in _compose()["services"].items():
        if service.get("restart", "no") != "no":
            assert _has_healthcheck(service), f"{name}: long-running service without health check"


def test_compose_liftstream_services() -> None:
    services = _liftstream_services()
    assert {"worker", "learner", "alerter", "api"} <= set(services)
    for name, service in services.items():
        assert service["env_file"] == ["liftstream.env"], name
        assert service["environment"] == _compose()["x-liftstream-settings"], name
        build = service["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert "8000:8000" in services["api"]["ports"]
    assert _settings_anchor()["LIFTSTREAM_API_PORT"] == "8000"
    assert services["learner"].get("deploy", {}).get("replicas", 1) == 1
    assert services["alerter"].get("deploy", {}).get("replicas", 1) == 1


def test_compose_mounted_files_exist() -> None:
    doc = _compose()
    named = set(doc.get("volumes", {}))
    for name, service in doc["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: mounts missing {source}"
            else:
                assert source in named, f"{name}: undeclared volume {source}"
        for env_file in service.get("env_file", []):
            path = DEPLOY / (env_file if isinstance(env_file, str) else env_file["path"])
            assert path.exists() or path.with_name(path.name + ".example").exists(), path


def test_compose_redis_persistence() -> None:
    redis = _compose()["services"]["redis"]
    assert any("redis.conf" in v for v in redis["volumes"])
    conf = _redis_conf((DEPLOY / "redis" / "redis.conf").read_text(encoding="utf-8"))
    assert conf["appendonly"] == "yes"
    assert conf["hash-max-listpack-entries"] == "512"
    assert conf["maxmemory-policy"] == "noeviction"


def _redis_conf(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out[key] = value.strip()
    return out


def _prometheus_config() -> dict[str, Any]:
    path = DEPLOY / "prometheus.yml"
    assert path.exists(), "deploy/prometheus.yml is missing"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def test_prometheus_scrapes_the_api_with_a_token() -> None:
    """``/metrics`` needs a read token: the scrape job of ``api:8000`` must send the token
    file that the compose prometheus service writes."""
    jobs = _prometheus_config()["scrape_configs"]
    api_jobs = [j for j in jobs if any("api:8000" in t for sc in j.get("static_configs", [])
                                       for t in sc.get("targets", []))]
    assert api_jobs, "no scrape job targets api:8000"
    compose_prom = "\n".join(_compose()["services"]["prometheus"]["command"])
    for job in api_jobs:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        token_file = job.get("authorization", {}).get("credentials_file")
        assert token_file, f"job {job.get('job_name')}: no authorization.credentials_file"
        assert token_file in compose_prom, f"compose does not write {token_file}"


def test_grafana_provisioning() -> None:
    grafana = _compose()["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    (datasources,) = _load_all(DEPLOY / "grafana/provisioning/datasources/prometheus.yaml")
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    (dashboards,) = _load_all(DEPLOY / "grafana/provisioning/dashboards/liftstream.yaml")
    providers = dashboards["providers"]
    for provider in providers:
        path = provider["options"]["path"]
        assert path in mounts, f"dashboard path {path} is not mounted"
        assert (DEPLOY / mounts[path]).is_dir()
    assert mounts["/etc/grafana/provisioning/datasources"] == "./grafana/provisioning/datasources"
    assert mounts["/etc/grafana/provisioning/dashboards"] == "./grafana/provisioning/dashboards"


def test_grafana_dashboard_uses_the_provisioned_datasource() -> None:
    path = DEPLOY / "grafana" / "liftstream.json"
    assert path.exists(), "deploy/grafana/liftstream.json is missing"
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    uid = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml")
                         .read_text(encoding="utf-8"))["datasources"][0]["uid"]

    def refs(node: Any) -> Iterator[Any]:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "datasource":
                    yield v
                yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    for ref in refs(dashboard):
        if isinstance(ref, dict) and ref.get("type") == "prometheus":
            assert ref.get("uid") in (uid, "${datasource}", "${DS_PROMETHEUS}", "$datasource"), ref


# --------------------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize("path", _k8s_files(), ids=lambda p: p.name)
def test_k8s_documents_have_identity(path: Path) -> None:
    for doc in _load_all(path):
        assert doc.get("apiVersion"), path
        assert doc.get("kind"), path
        assert doc.get("metadata", {}).get("name"), path
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "liftstream", (path, doc["kind"])


def test_k8s_schema() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    errors = []
    for path, doc in _k8s_docs():
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
        except kv.ValidationError as exc:
            errors.append(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {exc}")
    assert not errors, "\n".join(errors)


def test_kustomization_lists_every_file() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = kustomization["resources"]
    assert sorted(listed) == sorted(p.name for p in _k8s_files())
    assert len(set(listed)) == len(listed)
    assert kustomization["namespace"] == "liftstream"


def test_kustomize_builds() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout) if d]
    assert len(kinds) == len(_k8s_docs())


def test_k8s_images_pinned() -> None:
    for workload in _workloads():
        for c in _containers(workload):
            assert _image_pinned(c["image"]), (workload["metadata"]["name"], c["image"])
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    for image in kustomization.get("images", []):
        assert image.get("newTag") not in (None, "", "latest") or image.get("digest")


def test_k8s_selectors_match_template_labels() -> None:
    for workload in _workloads():
        if workload["kind"] == "Job":
            continue
        selector = workload["spec"]["selector"]["matchLabels"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), workload["metadata"]["name"]
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in _workloads()]
    for kind in ("Service", "PodDisruptionBudget"):
        for doc in _of_kind(kind):
            selector = doc["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            matched = [lab for lab in pod_labels if selector.items() <= lab.items()]
            assert matched, f"{kind} {doc['metadata']['name']} selects no pod template"
            names = {tuple(sorted(m.items())) for m in matched}
            assert len(names) == 1, f"{kind} {doc['metadata']['name']} selects several workloads"


def test_k8s_probes_and_resources() -> None:
    for workload in _workloads():
        name = workload["metadata"]["name"]
        for c in _pod_spec(workload)["containers"]:
            resources = c.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(part, {})), (name, part)
            if workload["kind"] != "Job":
                assert "readinessProbe" in c, f"{name}: no readiness probe"
            assert c.get("securityContext", {}).get("allowPrivilegeEscalation") is False, name
        if workload["kind"] != "Job":
            assert _pod_spec(workload)["securityContext"].get("runAsNonRoot") is True, name
    api = _pod_spec(_deployment("api"))["containers"][0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port = api["ports"][0]["containerPort"]
    assert port == int(_config_data()["LIFTSTREAM_API_PORT"])
    for component in ("worker", "learner", "alerter"):
        c = _pod_spec(_deployment(component))["containers"][0]
        assert c["readinessProbe"]["exec"]["command"] == ["liftstream-healthcheck"]


def test_k8s_replicas() -> None:
    partitions = _partitions_k8s()
    hpa = _one("HorizontalPodAutoscaler", "liftstream-worker")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "liftstream-worker")
    assert hpa["spec"]["minReplicas"] == 1
    assert hpa["spec"]["maxReplicas"] <= partitions
    assert hpa["spec"]["maxReplicas"] == 12
    worker = _deployment("worker")
    assert worker["spec"].get("replicas", 1) <= partitions
    for component in ("learner", "alerter"):
        d = _deployment(component)
        assert d["spec"]["replicas"] == 1, component
        assert d["spec"]["strategy"]["type"] == "Recreate", component
    assert _deployment("api")["spec"]["replicas"] >= 2
    pdb = _one("PodDisruptionBudget", "liftstream-worker")
    assert pdb["spec"]["selector"]["matchLabels"] == worker["spec"]["selector"]["matchLabels"]


def test_k8s_references_exist() -> None:
    """Every configMapKeyRef / secretKeyRef / envFrom / volume item names a key that exists
    in the ConfigMap or the Secret template."""
    keys = {("ConfigMap", d["metadata"]["name"]): set(d.get("data", {}))
            for d in _of_kind("ConfigMap")}
    keys.update({("Secret", d["metadata"]["name"]): {*d.get("stringData", {}), *d.get("data", {})}
                 for d in _of_kind("Secret")})

    def check(kind: str, ref: dict[str, Any], key: str | None, where: str) -> None:
        found = keys.get((kind, ref["name"]))
        assert found is not None, f"{where}: no {kind} {ref['name']!r}"
        if key is not None:
            assert key in found, f"{where}: {kind} {ref['name']!r} has no key {key!r}"

    for workload in _workloads():
        where = workload["metadata"]["name"]
        for c in _containers(workload):
            for env in c.get("env", []):
                source = env.get("valueFrom", {})
                if "configMapKeyRef" in source:
                    check("ConfigMap", source["configMapKeyRef"],
                          source["configMapKeyRef"]["key"], where)
                if "secretKeyRef" in source:
                    check("Secret", source["secretKeyRef"], source["secretKeyRef"]["key"], where)
            for env_from in c.get("envFrom", []):
                if "configMapRef" in env_from:
                    check("ConfigMap", env_from["configMapRef"], None, where)
                if "secretRef" in env_from:
                    check("Secret", env_from["secretRef"], None, where)
        for volume in _pod_spec(workload).get("volumes", []):
            if "configMap" in volume:
                ref = volume["configMap"]
                for item in ref.get("items", []) or [{"key": None}]:
                    check("ConfigMap", ref, item["key"], where)
            if "secret" in volume:
                ref = {"name": volume["secret"]["secretName"]}
                for item in volume["secret"].get("items", []) or [{"key": None}]:
                    check("Secret", ref, item["key"], where)


def test_k8s_secrets_only_through_the_secret() -> None:
    """Secret settings never sit in the ConfigMap or a literal env value."""
    secret_fields = {env_name(n) for n in ("redis_url", "api_read_tokens", "api_admin_tokens",
                                           "model_hmac_key", "kafka_sasl_password",
                                           "kafka_sasl_username", "alert_webhooks")}
    assert not secret_fields & set(_config_data())
    assert secret_fields <= set(_secret_data())
    for workload in _workloads():
        for c in _containers(workload):
            for env in c.get("env", []):
                if env["name"] in secret_fields:
                    assert "secretKeyRef" in env.get("valueFrom", {}), env["name"]


def test_k8s_kafka_is_external() -> None:
    assert not any("kafka" in d["metadata"]["name"] for d in _workloads())
    assert _config_data()["LIFTSTREAM_KAFKA_BOOTSTRAP"]


def test_k8s_redis_cluster() -> None:
    sts = _one("StatefulSet", "redis-cluster")
    assert sts["spec"]["replicas"] == 6
    headless = _one("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    conf = _redis_conf(_one("ConfigMap", "redis-cluster-config")["data"]["redis.conf"])
    assert conf["cluster-enabled"] == "yes"
    assert conf["appendonly"] == "yes"
    assert conf["hash-max-listpack-entries"] == "512"
    assert conf["maxmemory-policy"] == "noeviction"
    assert sts["spec"]["volumeClaimTemplates"], "Redis data must be on persistent volumes"
    job = _one("Job", "redis-cluster-create")
    script = "\n".join(_containers(job)[0]["args"])
    assert "--cluster create" in script and "--cluster-replicas 1" in script
    env = {e["name"]: e.get("value") for e in _containers(job)[0]["env"]}
    assert env["NODES"] == str(sts["spec"]["replicas"])
    assert "redis-cluster" in _secret_data()["LIFTSTREAM_REDIS_URL"]


# --------------------------------------------------------------------------- docs


def _format_default(value: Any) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, tuple):
        return ",".join(value) if value else "(empty)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _doc_table() -> dict[str, str]:
    rows = {}
    for line in OPERATIONS.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*`(LIFTSTREAM_[A-Z0-9_]+)`\s*\|\s*`?([^|`]*)`?\s*\|", line)
        if m:
            rows[m.group(1)] = m.group(2).strip()
    return rows


def test_operations_doc_lists_every_setting_with_its_default() -> None:
    rows = _doc_table()
    missing = sorted(SETTINGS_VARS - set(rows))
    assert not missing, f"docs/operations.md lacks {missing}"
    assert set(rows) <= SETTINGS_VARS
    for f in dataclasses.fields(Settings):
        assert rows[env_name(f.name)] == _format_default(f.default), env_name(f.name)


def test_operations_doc_commands() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    assert "docker compose -f deploy/compose.yaml up" in text
    assert "kubectl apply -k deploy/k8s" in text
    assert "cp deploy/liftstream.env.example deploy/liftstream.env" in text
