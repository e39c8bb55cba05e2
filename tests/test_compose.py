"""docker-compose.yaml passes the compose schema (no Docker engine here) and wires what users rely on."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import IN_CI, ROOT

COMPOSE = ROOT / "docker-compose.yaml"
AIRFLOW_PARTS = {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                 "airflow-triggerer", "airflow-worker"}


def _compose_exe() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        if IN_CI:
            pytest.fail("docker-compose (Debian package) is needed to validate docker-compose.yaml")
        pytest.skip("docker-compose not installed")
    return exe


def _compose_config(env_file) -> subprocess.CompletedProcess:
    """``docker-compose config`` with only ``env_file`` for secrets (a developer's .env or shell is ignored)."""
    env = {k: v for k, v in os.environ.items() if k not in _secrets_script().SECRETS}
    return subprocess.run([_compose_exe(), "-f", str(COMPOSE), "--env-file", str(env_file), "config", "-q"],
                          capture_output=True, text=True, env={**env, "COMPOSE_INTERACTIVE_NO_CLI": "1"})


def _secrets_script():
    spec = importlib.util.spec_from_file_location("make_secrets", ROOT / "scripts" / "make_secrets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compose_file_validates_against_the_schema(tmp_path):
    """After `make secrets` the stack has everything it needs."""
    env_file = tmp_path / ".env"
    _secrets_script().write_env(env_file)
    proc = _compose_config(env_file)
    assert proc.returncode == 0, proc.stderr


def test_without_env_compose_stops_naming_the_missing_secret(tmp_path):
    empty = tmp_path / ".env"
    empty.write_text("")
    proc = _compose_config(empty)
    assert proc.returncode != 0
    named = re.findall(r"([A-Z][A-Z0-9_]+) is not set - ", proc.stderr)
    assert named and set(named) <= set(_secrets_script().SECRETS), proc.stderr
    assert "run make secrets" in proc.stderr


# ---- no secret defaulted -------------------------------------------------------------------

SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|JWT|_KEYS?$|TOKEN", re.I)
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}")
REQUIRED = re.compile(r"^:\?\S.{10,}$")  # ${VAR:?message}, with a message that says something
URL_PASSWORD = re.compile(r"://[^/:@\s]+:([^@\s]+)@")
JSON_PASSWORD = re.compile(r'"password"\s*:\s*"([^"]*)"')


def _strings(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def _required_only(value: str) -> bool:
    """The whole value is one required interpolation."""
    m = INTERPOLATION.fullmatch(value.strip())
    return bool(m and REQUIRED.match(m.group(2)))


def defaulted_secrets(text: str) -> list[str]:
    """Every place in a compose file where a secret has a default or a literal value."""
    problems = []
    for path, value in _strings(yaml.safe_load(text)):
        for name, rest in INTERPOLATION.findall(value):
            if SECRET_NAME.search(name) and not REQUIRED.match(rest):
                problems.append(f"{path}: ${{{name}{rest}}} is not required (use ${{{name}:?what it is ...}})")
        leaf = path.rsplit(".", 1)[-1]
        if SECRET_NAME.search(leaf) and not leaf.startswith("AIRFLOW_CONN_") and not _required_only(value):
            problems.append(f"{path}: a secret with a literal or defaulted value")
        for secret in URL_PASSWORD.findall(value) + JSON_PASSWORD.findall(value):
            if not _required_only(secret):
                problems.append(f"{path}: a password in a URL or connection that is not a required variable")
    return problems


def test_no_secret_in_the_compose_file_has_a_default_or_a_literal_value():
    assert defaulted_secrets(COMPOSE.read_text()) == []


def test_required_secrets_are_exactly_what_make_secrets_writes():
    required = {name for name, rest in INTERPOLATION.findall(COMPOSE.read_text()) if rest.startswith(":?")}
    assert required == set(_secrets_script().SECRETS)


@pytest.mark.parametrize("old, new", [
    ("${AIRFLOW_FERNET_KEY:?", "${AIRFLOW_FERNET_KEY:-"),
    ("${RETENTION_HMAC_KEYS:?", "${RETENTION_HMAC_KEYS-"),
    ("MARIADB_ROOT_PASSWORD: ${MAILING_ROOT_PASSWORD:?", "MARIADB_ROOT_PASSWORD: root #"),
    ('"password": "${MINIO_ROOT_PASSWORD:?', '"password": "minio-secret", "x": "${MINIO_ROOT_PASSWORD:?'),
    ("postgres://crm:${CRM_DB_PASSWORD:?", "postgres://crm:crm@crm-db/crm?x=${CRM_DB_PASSWORD:?"),
    ("      MINIO_ROOT_USER: minio\n", "      MINIO_ROOT_USER: minio\n      REDIS_PASSWORD: ${REDIS_PASSWORD}\n"),
])
def test_a_defaulted_secret_fails_the_check(old, new):
    text = COMPOSE.read_text()
    assert old in text
    assert defaulted_secrets(text.replace(old, new, 1))


def test_the_image_installs_production_requirements_only():
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = re.findall(r"pip install[^\n]*", dockerfile)
    assert installs and all(re.search(r"-r /requirements\.txt$", line) for line in installs)
    assert "requirements-dev" not in "\n".join(x for x in dockerfile.splitlines() if not x.startswith("#"))
    prod = {re.split(r"[=\[<>]", line)[0].lower() for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")}
    tooling = {"pytest", "moto", "selenium", "ruff", "hypothesis"}
    assert prod.isdisjoint(tooling)
    dev = (ROOT / "requirements-dev.txt").read_text().splitlines()
    assert "-r requirements.txt" in dev
    assert tooling <= {re.split(r"[=\[<>]", line)[0].lower() for line in dev
                       if line and not line.startswith(("#", "-"))}


def test_compose_stack_has_every_part_with_health_checks():
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert {"postgres", "redis", "crm-db", "mailing-db", "minio"} | AIRFLOW_PARTS <= set(services)
    for name, service in services.items():
        if name != "airflow-init":
            assert "healthcheck" in service, f"{name} has no health check"
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
    for conn in ("AIRFLOW_CONN_CRM_DB", "AIRFLOW_CONN_MAILING_DB", "AIRFLOW_CONN_OBJECTS_S3",
                 "AIRFLOW_CONN_RETENTION_LEDGER"):
        assert conn in env
    mounts = {v.split(":")[1] for v in services["airflow-worker"]["volumes"]}
    assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/include"} <= mounts
    assert services["airflow-worker"]["environment"]["PYTHONPATH"] == "/opt/airflow"
