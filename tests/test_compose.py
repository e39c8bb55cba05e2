"""docker-compose.yaml passes the compose schema (no Docker engine here) and wires what users rely on."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import IN_CI, ROOT
from tests.e2e import compose_stack
from tests.e2e.compose_stack import ComposeError, Endpoints

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


_secrets_script = compose_stack.secrets_script


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


# ---- the e2e stack runs the compose file's own services (tests/e2e/compose_stack.py) --------------

# Every host a URL of the compose file may name, as the e2e stack maps it (the values are made up here).
ENDPOINTS = {
    "postgres/airflow": "postgresql://postgres@127.0.0.1:5432/rt_af", "postgres/ledger": "postgresql://postgres@127.0.0.1:5432/rt_ledger",
    "crm-db/crm": "postgresql://postgres@127.0.0.1:5432/rt_crm", "mailing-db/mailing": "mysql://root@127.0.0.1:3306/rt_mail",
    "redis": "redis://127.0.0.1:6379/7", "minio:9000": "http://127.0.0.1:5999",
    "airflow-apiserver:8080": "http://127.0.0.1:18080", "localhost:8080": "http://127.0.0.1:18080",
    "localhost:8974": "http://127.0.0.1:18974",
}


def _plan(compose=COMPOSE, tmp_path=None, render=compose_stack.render, skip=frozenset()):
    env_file = tmp_path / ".env"
    if not env_file.exists():
        _secrets_script().write_env(env_file)
    if render is compose_stack.render:
        _compose_exe()
    spec = render(compose, env_file, {"RETENTION_HMAC_KEYS": "k0:" + "a" * 64})
    settings = {"AIRFLOW_HOME": str(tmp_path), "E2E_MARKER": "x"}
    return {p.name: p for p in compose_stack.plan(spec, Endpoints(dict(ENDPOINTS)), settings, skip=skip)}, spec


def test_the_e2e_stack_starts_every_airflow_service_of_the_compose_file(tmp_path):
    """No service silently skipped: every Airflow service runs with compose's command, environment,
    healthcheck and order; the rest are the machine's services and MinIO (moto), nothing else."""
    processes, spec = _plan(tmp_path=tmp_path)
    services = spec["services"]
    assert set(processes) == AIRFLOW_PARTS
    assert set(services) - AIRFLOW_PARTS == compose_stack.MACHINE_SERVICES | {compose_stack.MINIO}
    order = list(processes)
    assert order[0] == "airflow-init" and processes["airflow-init"].oneshot
    assert order.index("airflow-worker") > order.index("airflow-apiserver")
    for name, proc in processes.items():
        command = services[name]["command"]
        if name == "airflow-init":  # entrypoint /bin/bash, command [-c, script]
            assert proc.argv[:2] == ["bash", "-c"] and proc.health is None
            assert "airflow db migrate" in proc.argv[2] and "include.retention.demo.s3_seed" in proc.argv[2]
            assert "http://127.0.0.1:5999" in proc.argv[2] and "@127.0.0.1:5432/rt_crm" in proc.argv[2]
        else:  # the image's entrypoint: airflow <command>
            assert proc.argv == ["airflow", *command.split()]
            assert proc.health, name
        # compose's environment, every value, with only the container names mapped to the machine
        compose_env = services[name]["environment"]
        assert set(proc.env) == set(compose_env) | {"AIRFLOW_HOME", "E2E_MARKER"}
        for key, value in compose_env.items():
            mapped = proc.env[key]
            assert not compose_stack.container_references(mapped, spec), (name, key, mapped)
            if compose_stack.container_references(value, spec):
                assert mapped != value
            else:
                assert mapped == value, (name, key)
        assert proc.depends_on == {d: c["condition"] for d, c in services[name]["depends_on"].items()}
    assert processes["airflow-scheduler"].env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == \
        "postgresql+psycopg2://postgres@127.0.0.1:5432/rt_af"
    assert processes["airflow-worker"].env["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:6379/7"
    assert processes["airflow-apiserver"].health == ["curl", "--fail", "http://127.0.0.1:18080/api/v2/version"]
    assert processes["airflow-worker"].env["PYTHONPATH"] == str(ROOT)
    assert compose_stack.celery_services(spec) == {"airflow-worker"}  # what the LocalExecutor variant leaves out


def test_the_celery_worker_scaled_out_is_n_copies_of_its_service_each_its_own_host(tmp_path, monkeypatch):
    """scripts/bench_airflow.py --celery: compose's worker as N processes (``--scale``), each with its own host
    name (Celery node, healthcheck, task instances' hostname), log-server port and one task slot."""
    processes, spec = _plan(tmp_path=tmp_path)
    ports = iter(range(20001, 20010))
    scaled = compose_stack.scale_workers(list(processes.values()), compose_stack.celery_services(spec), 2, 1,
                                         lambda: next(ports))
    names = [p.name for p in scaled]
    worker = processes["airflow-worker"]
    assert "airflow-worker" not in names and {"airflow-worker-1", "airflow-worker-2"} <= set(names)
    assert names.index("airflow-worker-1") > names.index("airflow-apiserver")
    copies = [p for p in scaled if p.name.startswith("airflow-worker-")]
    for n, copy in enumerate(copies, 1):
        host = f"airflow-worker-{n}"
        assert copy.argv == [*worker.argv, "--celery-hostname", f"celery@{host}"]
        assert copy.hostname == copy.env["HOSTNAME"] == host and copy.health == worker.health
        assert copy.env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "1"
        own = {"HOSTNAME", "AIRFLOW__CELERY__WORKER_CONCURRENCY", "AIRFLOW__CORE__HOSTNAME_CALLABLE",
               "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"}
        assert {k: v for k, v in copy.env.items() if k not in own} == {k: v for k, v in worker.env.items()
                                                                         if k not in own}
    assert len({c.env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] for c in copies}) == 2
    monkeypatch.setenv("HOSTNAME", "airflow-worker-2")  # as in that worker's task processes
    module, _, func = copies[1].env["AIRFLOW__CORE__HOSTNAME_CALLABLE"].rpartition(".")
    assert getattr(importlib.import_module(module), func)() == "airflow-worker-2"
    assert [p for p in scaled if not p.name.startswith("airflow-worker")] == \
        [p for p in processes.values() if p.name != "airflow-worker"]


@pytest.mark.parametrize("old, new, check", [
    ("    command: scheduler\n", "    command: scheduler --skip-serve-logs\n",
     lambda ps: ps["airflow-scheduler"].argv == ["airflow", "scheduler", "--skip-serve-logs"]),
    ('RETENTION_PURGE_AFTER_DAYS: "7"', 'RETENTION_PURGE_AFTER_DAYS: "30"',
     lambda ps: all(p.env["RETENTION_PURGE_AFTER_DAYS"] == "30" for p in ps.values())),
    ("http://localhost:8080/api/v2/version", "http://localhost:8080/api/v2/monitor/health",
     lambda ps: ps["airflow-apiserver"].health[-1] == "http://127.0.0.1:18080/api/v2/monitor/health"),
    ("      DUMB_INIT_SETSID: \"0\"\n", "      DUMB_INIT_SETSID: \"0\"\n      EXTRA_DB: mysql://u:p@mailing-db:3306/mailing\n",
     lambda ps: ps["airflow-worker"].env.get("EXTRA_DB") == "mysql://root@127.0.0.1:3306/rt_mail"),
    ("python -m include.retention.cli validate &&", "python -m include.retention.cli validate --strict &&",
     lambda ps: "include.retention.cli validate --strict &&" in ps["airflow-init"].argv[2]),
])
def test_a_change_to_the_compose_file_is_what_the_e2e_stack_runs(tmp_path, old, new, check):
    text = COMPOSE.read_text()
    assert old in text
    before, _ = _plan(tmp_path=tmp_path)
    assert not check(before)
    changed = tmp_path / "docker-compose.yaml"
    changed.write_text(text.replace(old, new, 1))
    after, _ = _plan(changed, tmp_path)
    assert check(after)


@pytest.mark.parametrize("old, new, named", [
    ("volumes:\n  postgres-db:", "  flower:\n    image: mher/flower\n\nvolumes:\n  postgres-db:", "flower"),
    ("endpoint_url\": \"http://minio:9000", "endpoint_url\": \"http://minio:9100", "minio"),
    ("AIRFLOW__CELERY__BROKER_URL: redis://:@redis:6379/0",
     "AIRFLOW__CELERY__BROKER_URL: redis://:@valkey:6379/0\n    X: http://airflow-worker:8793", "airflow-worker"),
])
def test_a_service_or_host_the_e2e_stack_cannot_map_is_an_error(tmp_path, old, new, named):
    text = COMPOSE.read_text()
    assert old in text
    changed = tmp_path / "docker-compose.yaml"
    changed.write_text(text.replace(old, new, 1))
    with pytest.raises(ComposeError, match=named):
        _plan(changed, tmp_path)


def test_rendering_without_docker_compose_gives_what_docker_compose_gives(tmp_path):
    """The fallback for a machine without docker-compose (never under CI) resolves the same processes."""
    with_cli, _ = _plan(tmp_path=tmp_path)
    without, _ = _plan(tmp_path=tmp_path, render=compose_stack.render_natively)
    assert without == with_cli
    empty = tmp_path / "empty.env"
    empty.write_text("")
    with pytest.raises(ComposeError, match=r"AIRFLOW_DB_PASSWORD is not set - .* run make secrets"):
        compose_stack.render_natively(COMPOSE, empty)
