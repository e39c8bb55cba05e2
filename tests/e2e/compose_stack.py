"""docker-compose.yaml's Airflow services as native processes: one stack definition for compose and the e2e tests.

There is no Docker engine on the test machine, so the e2e stack (tests/e2e/conftest.py) runs each
Airflow service of ``docker-compose.yaml`` as a process on the machine, with what compose itself
resolves for it: ``docker-compose config`` (the Debian package; scripts/system_packages.sh) renders
the file with the secrets of a ``make secrets``-style env file interpolated, and this module turns
every Airflow service into a ``Process``:

- ``argv``: the service's ``command`` run the way the image's entrypoint runs it (``airflow
  <command>``; ``bash``/``python`` commands, or an ``entrypoint``, as they are);
- ``env``: the service's ``environment``, where every URL naming another compose service (or
  ``localhost`` inside a container) points at the machine instead (``Endpoints``: the test's fresh
  PostgreSQL and MariaDB databases, the machine's Redis, the free port the api-server listens on)
  and every container path under a bind mount (``/opt/airflow/dags`` ...) is the checkout's path;
  then the few settings a shared host needs (``machine_settings``: AIRFLOW_HOME, ports, the Celery
  queue) and the test's own (``overrides``);
- ``health``: the service's healthcheck ``test``, with the same mapping (``curl --fail
  http://127.0.0.1:<port>/api/v2/version``, ``airflow jobs check ...``, ``celery ... inspect ping``);
- ``depends_on``: started in that order (``service_completed_successfully``: run to the end first;
  ``service_healthy``: its healthcheck passed first).

The services of the machine (PostgreSQL, Redis, MariaDB: ``MACHINE_SERVICES``) are the test's
databases; MinIO is the one service the machine cannot run: moto's S3 server stands in at the same
endpoint settings (``http://minio:9000`` becomes moto's URL, the same login and region). A compose
service that is none of these, or a URL naming a host without a native endpoint, is an error, so a
new service cannot be skipped silently.

Without ``docker-compose`` (outside CI) the file is parsed and interpolated here (``${VAR:?msg}``,
``${VAR:-default}``, ``${VAR}``, ``$$``): tests/test_compose.py checks both give the same result.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import socket
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"
IN_CI = os.environ.get("CI", "").lower() == "true"
# Services the machine runs itself: the test's databases stand in for them (Endpoints).
MACHINE_SERVICES = frozenset({"postgres", "redis", "crm-db", "mailing-db"})
# The one service the machine cannot run: moto's S3 server stands in at MinIO's endpoint settings.
MINIO = "minio"
# The apache/airflow image's AIRFLOW_HOME, where compose mounts the checkout's dags, plugins, include, config
# (the Dockerfile's PYTHONPATH): natively that is the checkout itself.
IMAGE_HOME = "/opt/airflow"
# The image's ENTRYPOINT runs these commands as they are and any other as ``airflow <command>``.
DIRECT_COMMANDS = ("bash", "python")


class ComposeError(RuntimeError):
    """docker-compose.yaml does not render, or names something the native stack cannot map."""


def secrets_script() -> ModuleType:
    """scripts/make_secrets.py (``make secrets``), loaded as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("make_secrets", ROOT / "scripts" / "make_secrets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose_exe() -> str | None:
    return shutil.which("docker-compose")


# ---------------------------------------------------------------------------------------------------
# Rendering the compose file
# ---------------------------------------------------------------------------------------------------

def render(compose: Path, env_file: Path, given: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as compose resolves it: variables from ``given`` (like the shell) over ``env_file``.

    A developer's own secrets in the environment never leak in: only ``env_file`` and ``given`` count.
    """
    exe = compose_exe()
    if exe is None:
        if IN_CI:
            raise ComposeError("docker-compose (Debian package, scripts/system_packages.sh) is needed to render "
                               "docker-compose.yaml for the e2e stack")
        return render_natively(compose, env_file, given)
    secrets = set(secrets_script().SECRETS)
    env = {k: v for k, v in os.environ.items() if k not in secrets}
    env.update(given or {})
    proc = subprocess.run([exe, "-f", str(compose), "--env-file", str(env_file), "config"], capture_output=True,
                          text=True, env={**env, "COMPOSE_INTERACTIVE_NO_CLI": "1"}, timeout=120)
    if proc.returncode != 0:
        raise ComposeError(f"docker-compose config failed: {proc.stderr.strip()}")
    return _unescape(yaml.safe_load(proc.stdout))


VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[?-])(?P<arg>[^}]*))?\})")


def render_natively(compose: Path, env_file: Path, given: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What ``docker-compose config`` gives, for this repository's compose file, without docker-compose."""
    values = _read_env_file(env_file) | dict(given or {})

    def substitute(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$$"  # unescaped after parsing, as compose does
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        value = values.get(name)
        unset = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":?", "?") and unset:
            raise ComposeError(f"Missing mandatory value for variable {name}: {arg}")
        if op in (":-", "-") and unset:
            return arg
        return value or ""

    spec = yaml.safe_load(VARIABLE.sub(substitute, compose.read_text()))
    for service in spec["services"].values():
        service.pop("<<", None)
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        service["environment"] = {k: str(v) for k, v in env.items()}
        volumes = []
        for volume in service.get("volumes", []):
            source, _, rest = volume.partition(":")
            if source.startswith("."):
                source = str((compose.parent / source).resolve())
            volumes.append(f"{source}:{rest}" + ("" if ":" in rest else ":rw"))  # compose's default mode, spelt out
        service["volumes"] = volumes
        if isinstance(service.get("depends_on"), list):
            service["depends_on"] = {name: {"condition": "service_started"} for name in service["depends_on"]}
    return _unescape(spec)


def _read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def _unescape(node: Any) -> Any:
    """``$$`` is compose's escape for a literal ``$`` (``config`` prints it escaped)."""
    if isinstance(node, dict):
        return {k: _unescape(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_unescape(v) for v in node]
    if isinstance(node, str):
        return node.replace("$$", "$")
    return node


# ---------------------------------------------------------------------------------------------------
# Mapping container names to the machine
# ---------------------------------------------------------------------------------------------------

URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?:(?P<auth>[^@/\s\"']*)@)?(?P<host>[A-Za-z0-9_.-]+)"
                 r"(?::(?P<port>\d+))?(?P<path>/[^\s\"'?]*)?")


@dataclass
class Endpoints:
    """Where a URL of the compose file points natively.

    Keys, most specific first: ``host/database`` (a database on a server service), ``host:port``,
    ``host``. A value is a URL: its ``user:password@host:port`` replaces the compose URL's, its path
    (when it has one) replaces the compose URL's path; the compose URL's scheme (driver) and query stay.
    """

    targets: dict[str, str]
    # every host that names a container: a URL with one of them and no target is an error
    container_hosts: set[str] = field(default_factory=set)

    def target(self, host: str, port: str | None, path: str | None) -> str | None:
        database = (path or "").strip("/").split("/")[0]
        for key in (f"{host}/{database}" if database else None, f"{host}:{port}" if port else None, host):
            if key and key in self.targets:
                return self.targets[key]
        return None

    def rewrite(self, text: str) -> str:
        def sub(m: re.Match) -> str:
            host = m.group("host")
            target = self.target(host, m.group("port"), m.group("path"))
            if target is None:
                if host in self.container_hosts:
                    raise ComposeError(f"{m.group(0)!r}: no native endpoint for the compose host {host!r}")
                return m.group(0)
            t = urlsplit(target)
            path = t.path if t.path not in ("", "/") else (m.group("path") or "")
            return f"{m.group('scheme')}://{t.netloc}{path}"

        return URL.sub(sub, text)


def container_references(text: str, spec: dict[str, Any]) -> list[str]:
    """URLs naming a compose service (or a container's ``localhost``) and paths inside the image, in ``text``."""
    hosts = set(spec["services"]) | {"localhost"}
    urls = [m.group(0) for m in URL.finditer(text) if m.group("host") in hosts]
    return urls + re.findall(rf"(?<![\w/.-]){re.escape(IMAGE_HOME)}(?![\w.-])\S*", text)


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of the service's bind mounts (named volumes are the AIRFLOW_HOME's)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("/"):
            mounts[target] = source
    return mounts


def map_paths(text: str, mounts: Mapping[str, str]) -> str:
    """Container paths under a bind mount (or the image's home, the checkout) as the host's paths."""
    for container, host in sorted({**mounts, IMAGE_HOME: str(ROOT)}.items(), key=lambda kv: -len(kv[0])):
        text = re.sub(rf"(?<![\w/.-]){re.escape(container)}(?=/|$|[\s\"':,])", host, text)
    return text


# ---------------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------------

@dataclass
class Process:
    """One compose service as a native process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    health: list[str] | None  # argv of the healthcheck; None: the service runs to completion (airflow-init)
    depends_on: dict[str, str]  # compose service -> condition
    oneshot: bool = False  # another service waits for it with service_completed_successfully
    hostname: str | None = None  # a container's own host name ($HOSTNAME); None: the machine's


def airflow_services(spec: dict[str, Any]) -> list[str]:
    """Services built from this repository's Dockerfile; any other must be the machine's or MinIO."""
    services = spec["services"]
    others = sorted(set(services) - {n for n, s in services.items() if "build" in s} - MACHINE_SERVICES - {MINIO})
    if others:
        raise ComposeError(f"compose services {others} are neither Airflow services (build: .) nor ones the e2e "
                           f"stack maps to the machine ({sorted(MACHINE_SERVICES)}) or to moto ({MINIO})")
    return [n for n, s in services.items() if "build" in s]


def celery_services(spec: dict[str, Any]) -> frozenset[str]:
    """The Celery workers (``command: celery worker``): the LocalExecutor variant has no use for them."""
    return frozenset(n for n in airflow_services(spec) if _split(spec["services"][n].get("command"))[:1] == ["celery"])


def _split(value: Any) -> list[str]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else shlex.split(value)


def service_argv(service: dict[str, Any]) -> list[str]:
    entrypoint, command = _split(service.get("entrypoint")), _split(service.get("command"))
    if entrypoint:
        return [Path(entrypoint[0]).name, *entrypoint[1:], *command]  # /bin/bash -> bash on PATH
    if command and command[0] in DIRECT_COMMANDS:
        return command
    return ["airflow", *command]


def health_argv(service: dict[str, Any]) -> list[str] | None:
    test = (service.get("healthcheck") or {}).get("test")
    if not test or test == ["NONE"] or (service.get("healthcheck") or {}).get("disable"):
        return None
    if isinstance(test, str):
        return ["sh", "-c", test]
    kind, *rest = test
    if kind == "CMD":
        return rest
    if kind == "CMD-SHELL":
        return ["sh", "-c", rest[0]]
    raise ComposeError(f"healthcheck test {test!r} is neither CMD nor CMD-SHELL")


def plan(spec: dict[str, Any], endpoints: Endpoints, settings: Mapping[str, str],
         skip: frozenset[str] = frozenset(), base: Mapping[str, str] | None = None) -> list[Process]:
    """Every Airflow service of the rendered compose file (minus ``skip``) as a ``Process``, in start order.

    A process's environment: ``base`` (the machine's, like an image's), the service's ``environment``
    mapped to the machine, then ``settings`` (the machine's and the test's), which win.
    """
    services = spec["services"]
    names = [n for n in airflow_services(spec) if n not in skip]
    endpoints.container_hosts |= set(services) | {"localhost"}
    oneshots = {dep for n in names for dep, cond in (services[n].get("depends_on") or {}).items()
                if (cond or {}).get("condition") == "service_completed_successfully"}
    processes = {}
    for name in names:
        service, mounts = services[name], bind_mounts(services[name])

        def native(text: str, mounts=mounts) -> str:
            return map_paths(endpoints.rewrite(text), mounts)

        env = dict(base or {})
        env.update({k: native(str(v)) for k, v in (service.get("environment") or {}).items()})
        env.update(settings)
        health = health_argv(service)
        depends = {dep: (cond or {}).get("condition", "service_started")
                   for dep, cond in (service.get("depends_on") or {}).items()}
        processes[name] = Process(name, [native(a) for a in service_argv(service)], env,
                                  [native(a) for a in health] if health else None, depends, name in oneshots)
    return _start_order(processes)


def scale_workers(processes: list[Process], workers: frozenset[str], replicas: int, concurrency: int,
                  free_port: Callable[[], int]) -> list[Process]:
    """Each Celery worker service as ``replicas`` processes, as ``docker compose up --scale airflow-worker=N``
    makes containers: each its own host name (``$HOSTNAME``, Celery's node name ``celery@<host>`` that the
    healthcheck pings, the hostname its task instances record) and log-server port, and ``concurrency`` task
    slots each. The copies are named ``<service>-1`` ... ``<service>-N``."""
    out: list[Process] = []
    for proc in processes:
        if proc.name not in workers:
            out.append(proc)
            continue
        for n in range(1, replicas + 1):
            host = f"{proc.name}-{n}"
            env = {**proc.env, "HOSTNAME": host, "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(concurrency),
                   "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.container_hostname",
                   "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}
            out.append(Process(host, [*proc.argv, "--celery-hostname", f"celery@{host}"], env, proc.health,
                               proc.depends_on, proc.oneshot, hostname=host))
    return out


def container_hostname() -> str:
    """``[core] hostname_callable`` of a scaled worker (and its task processes): ``$HOSTNAME``, as in a container."""
    return os.environ.get("HOSTNAME") or socket.gethostname()


def _start_order(processes: dict[str, Process]) -> list[Process]:
    ordered: list[Process] = []
    while len(ordered) < len(processes):
        ready = [p for p in processes.values() if p not in ordered
                 and all(d in {o.name for o in ordered} for d in p.depends_on if d in processes)]
        if not ready:
            raise ComposeError(f"depends_on has a cycle among {sorted(set(processes) - {o.name for o in ordered})}")
        ordered += ready
    return ordered


def image_defaults(mounts: Mapping[str, str]) -> dict[str, str]:
    """What the image gets from its AIRFLOW_HOME=/opt/airflow, named explicitly for a native AIRFLOW_HOME."""
    return {
        "AIRFLOW__CORE__DAGS_FOLDER": map_paths(f"{IMAGE_HOME}/dags", mounts),
        "AIRFLOW__CORE__PLUGINS_FOLDER": map_paths(f"{IMAGE_HOME}/plugins", mounts),
    }


def machine_settings(*, home: Path, bin_dir: Path, api_port: int, health_port: int, log_ports: tuple[int, int],
                     queue: str, mounts: Mapping[str, str]) -> dict[str, str]:
    """What differs from a container because every service shares one host (and 2 cores) with other test runs."""
    return {
        "AIRFLOW_HOME": str(home),  # the image's /opt/airflow; logs/ and airflow.cfg land here
        **image_defaults(mounts),
        # the image's PATH: airflow, python, celery of the virtualenv first
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        # ports each container has to itself (8080, 8974, 8793, 8794): free ones on the shared host
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(health_port),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_ports[0]),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(log_ports[1]),
        # In a container getfqdn() and gethostname() are the container's name; here getfqdn() is 'localhost'.
        # The healthchecks' $HOSTNAME, the jobs' hostname and Celery's node name (celery@%h) agree again.
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "socket.gethostname",
        # 2 shared cores: one api-server worker (default 4), four Celery task slots (default 16)
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "4",
        # the machine's Redis is shared by test runs: our own queue, so no other run takes our tasks
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
    }
