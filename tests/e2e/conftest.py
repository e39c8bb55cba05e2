"""Real Airflow components as processes: api-server, scheduler, dag-processor, triggerer (and a Celery worker).

Each stack gets a fresh AIRFLOW_HOME, a fresh metadata database on the machine's PostgreSQL, and
fresh stores for the data map (CRM on PostgreSQL, mailing list on MariaDB, ledger/registry on
PostgreSQL, objects in moto's S3 server over HTTP), seeded with the demo data plus two people
of our own: the subject to erase and a control person who must stay untouched.

Only one stack runs at a time (two sets of Airflow components do not fit a 2-core CI machine):
asking for the other executor stops the running stack first. Every process runs in its own
process group and is stopped (SIGTERM, then SIGKILL for the group) at teardown, even when a test
or the start-up failed. Process output goes to ``artifacts/e2e/<executor>/*.log``; the task logs
are copied to ``artifacts/e2e/<executor>/task-logs`` at teardown.

DAGs are paused at creation here (unlike the compose stack): the tests unpause ``erasure_request``
before triggering it and ``retention_sweep`` only after the erasure has been checked, so a sweep
that legitimately changes the seeded data cannot blur the "everybody else untouched" comparison.
``RETENTION_SWEEP_SCHEDULE`` is every minute, so the scheduler starts a sweep by itself as soon as
the DAG is unpaused. ``erasure_metadata_purge`` is unpaused and triggered by its own test;
``erasure_intake`` stays paused (the browser test's open requests must stay open).

Auth: the FAB auth manager (``apache-airflow-providers-fab``) with ``[fab] update_fab_perms`` off;
after ``airflow db migrate`` and before any component starts, ``python -m
include.retention.airflow.roles`` strips the default roles' all-DAG permissions, creates the
``Privacy`` role and the users ``USERS`` (role per user, random passwords): the subject-request DAGs
are then visible and triggerable only by ``privacy`` and ``admin`` (tests/e2e/test_roles.py).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import IN_CI, ROOT, _fresh_database, airflow_uri

ARTIFACTS = ROOT / "artifacts" / "e2e"
AIRFLOW = str(Path(sys.executable).parent / "airflow")
REDIS_URL = os.environ.get("RETENTION_TEST_REDIS", "redis://127.0.0.1:6379/7")
ADMIN = "admin"
# user -> FAB role; ``dpo`` is a Viewer (reads the retention page, not the erasure runs)
USERS = {ADMIN: "Admin", "dpo": "Viewer", "user": "User", "op": "Op", "privacy": "Privacy"}
FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}
SWEEP_SCHEDULE = "* * * * *"
START_TIMEOUT = float(os.environ.get("RETENTION_E2E_START_TIMEOUT", "300"))
STOP_GRACE = 15.0
PARSED_DAGS = ("erasure_request", "retention_sweep")

logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _drop_database(kind: str, url: str) -> None:
    from tests.conftest import MY_ADMIN, PG_ADMIN

    name = sa.engine.make_url(url).database
    admin = sa.create_engine(PG_ADMIN if kind == "postgresql" else MY_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if kind == "postgresql":
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            else:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
    finally:
        admin.dispose()


def _redis_reachable() -> None:
    u = httpx.URL(REDIS_URL.replace("redis://", "http://", 1))
    try:
        socket.create_connection((u.host, u.port or 6379), timeout=3).close()
    except OSError as exc:
        msg = f"redis at {REDIS_URL} is not reachable ({type(exc).__name__}); start it or run `make services`"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


# ---------------------------------------------------------------------------------------------------
# The stores of the data map
# ---------------------------------------------------------------------------------------------------

CONTROL = "Keep.Me@Example.org"


@dataclass
class World:
    """The data map's stores as the tests see them (same databases Airflow's tasks use)."""

    crm_url: str
    mailing_url: str
    ledger_url: str
    moto_url: str
    crm: sa.Engine
    mailing: sa.Engine
    ledger_engine: sa.Engine
    s3: Any
    ids: dict[str, int]  # the subject's row ids (contact, inquiry, applicant, subscriber)
    control_ids: dict[str, int]
    seeded_at: dt.datetime

    def as_dict(self) -> dict[str, Any]:
        """The shape tests/airflow/test_erasure_request_dag.py's helpers (subject_rows) expect."""
        return {"crm": self.crm, "mailing": self.mailing, "s3": self.s3, "ids": self.ids}

    def dispose(self) -> None:
        for engine in (self.crm, self.mailing, self.ledger_engine):
            engine.dispose()


def reset_moto(moto_url: str) -> None:
    """moto's state is shared by every test of the session: each stack starts from, and leaves, an empty S3."""
    httpx.post(f"{moto_url}/moto-api/reset", timeout=30).raise_for_status()


def make_world(suffix: str, moto_url: str) -> World:
    import boto3

    from include.retention.demo.s3_seed import seed_demo_objects
    from include.retention.demo.seed import seed_crm, seed_mailing
    from include.retention.runtime import ConnInfo
    from include.retention.stores.sql import make_engine
    from tests.airflow.test_erasure_request_dag import SUBJECT, add_subject

    crm_url = _fresh_database("postgresql", f"rt_e2e_crm_{suffix}")
    mailing_url = _fresh_database("mariadb", f"rt_e2e_mail_{suffix}")
    ledger_url = _fresh_database("postgresql", f"rt_e2e_ledger_{suffix}")
    crm, mailing = make_engine(crm_url), make_engine(mailing_url)
    now = dt.datetime.now(dt.UTC)
    seed_crm(crm, now)
    seed_mailing(mailing, now)
    ids = add_subject(crm, mailing, SUBJECT)
    control_ids = add_subject(crm, mailing, CONTROL)
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="eu-central-1", aws_access_key_id="t",
                      aws_secret_access_key="t")
    reset_moto(moto_url)
    # Every object the CRM rows reference (the subject's and the control person's included),
    # two versions of each CV, and 14 months of server access logs.
    seed_demo_objects(ConnInfo("aws", login="t", password="t",
                               extra={"endpoint_url": moto_url, "region_name": "eu-central-1"}), crm, now)
    return World(crm_url, mailing_url, ledger_url, moto_url, crm, mailing, make_engine(ledger_url), s3, ids,
                 control_ids, now)


def airflow_uri(url: str) -> str:
    """A SQLAlchemy URL as an Airflow connection URI (AIRFLOW_CONN_*)."""
    u = sa.engine.make_url(url)
    scheme = "postgres" if u.drivername.startswith("postgresql") else "mysql"
    return u.set(drivername=scheme, query={}).render_as_string(hide_password=False)


# ---------------------------------------------------------------------------------------------------
# The Airflow stack
# ---------------------------------------------------------------------------------------------------

@dataclass
class Stack:
    executor: str  # "local" | "celery"
    home: Path
    logs: Path  # artifacts/e2e/<executor>
    port: int
    env: dict[str, str]
    world: World
    metadata_url: str
    password: str = ""
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    _token: str | None = None
    passwords: dict[str, str] = field(default_factory=dict)  # user -> password (USERS)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- processes -----------------------------------------------------------------------------
    def run(self, *args: str, timeout: float = 300) -> None:
        name = "-".join(args[:2])
        with open(self.logs / f"{name}.log", "ab") as out:
            proc = subprocess.run([AIRFLOW, *args], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout, cwd=self.home)
        if proc.returncode != 0:
            raise RuntimeError(f"`airflow {' '.join(args)}` failed ({proc.returncode}):\n"
                               f"{_tail(self.logs / f'{name}.log')}")

    def spawn(self, name: str, *args: str) -> None:
        out = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen([AIRFLOW, *args], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            cwd=self.home, start_new_session=True)
        out.close()  # the child holds its own descriptor

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with {proc.returncode}:\n"
                                   f"{_tail(self.logs / f'{name}.log')}")

    def stop(self) -> None:
        """SIGTERM to every process group, wait, then SIGKILL what is left; also strays that carry our marker."""
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STOP_GRACE
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the group: task processes, gunicorn/uvicorn workers
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for pid in _pids_of_stack(self.env["RETENTION_E2E_STACK"], self.home):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # ---- REST API ------------------------------------------------------------------------------
    def token(self, fresh: bool = False) -> str:
        if self._token is None or fresh:
            r = httpx.post(f"{self.base_url}/auth/token", json={"username": ADMIN, "password": self.password},
                           timeout=30)
            assert r.status_code in (200, 201), r.text
            self._token = r.json()["access_token"]
        return self._token

    def token_for(self, username: str) -> str:
        """A fresh JWT for one of ``USERS`` from ``POST /auth/token``."""
        r = httpx.post(f"{self.base_url}/auth/token",
                       json={"username": username, "password": self.passwords[username]}, timeout=30)
        assert r.status_code in (200, 201), r.text
        return r.json()["access_token"]

    def api_as(self, username: str, method: str, path: str, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token_for(username)}"}
        return httpx.request(method, f"{self.base_url}{path}", headers=headers, timeout=120, **kwargs)

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token()}"}
        r = httpx.request(method, f"{self.base_url}{path}", headers=headers, timeout=60, **kwargs)
        if r.status_code == 401:  # token expired on a slow machine: one fresh login
            headers["Authorization"] = f"Bearer {self.token(fresh=True)}"
            r = httpx.request(method, f"{self.base_url}{path}", headers=headers, timeout=60, **kwargs)
        return r

    def unpause(self, dag_id: str) -> None:
        r = self.api("GET", f"/api/v2/dags/{dag_id}")
        assert r.status_code == 200, r.text
        if r.json()["is_paused"]:
            r = self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
            assert r.status_code == 200 and r.json()["is_paused"] is False, r.text

    def pause(self, dag_id: str, settle: float | None = 300) -> None:
        """Pause the DAG and wait (unless ``settle`` is None) until none of its runs is queued or running."""
        r = self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": True})
        assert r.status_code == 200, r.text
        if settle is None:
            return
        deadline = time.monotonic() + settle
        while True:
            r = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns", params={"state": ["queued", "running"]})
            assert r.status_code == 200, r.text
            if not r.json()["total_entries"]:
                return
            assert time.monotonic() < deadline, f"{dag_id} still has active runs: {r.text}"
            time.sleep(2)

    def trigger(self, dag_id: str, conf: dict) -> str:
        r = self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
        assert r.status_code in (200, 201), r.text
        return r.json()["dag_run_id"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 300) -> dict:
        """Poll the run until it finishes; a failed run is an assertion error with its task states."""
        deadline = time.monotonic() + timeout
        quoted = httpx.URL(f"/{run_id}").raw_path.decode()[1:]
        while True:
            r = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}")
            assert r.status_code == 200, r.text
            run = r.json()
            if run["state"] in ("success", "failed"):
                break
            self.check_alive()
            assert time.monotonic() < deadline, f"{dag_id} run {run_id} still {run['state']} after {timeout:.0f}s"
            time.sleep(2)
        assert run["state"] == "success", f"{dag_id} run {run_id} {run['state']}: {self.task_states(dag_id, run_id)}"
        return run

    def task_states(self, dag_id: str, run_id: str) -> dict[str, list[str]]:
        quoted = httpx.URL(f"/{run_id}").raw_path.decode()[1:]
        r = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances", params={"limit": 100})
        out: dict[str, list[str]] = {}
        for ti in sorted(r.json().get("task_instances", []), key=lambda t: (t["task_id"], t["map_index"])):
            out.setdefault(ti["task_id"], []).append(str(ti["state"]))
        return out

    def task_log_files(self) -> list[Path]:
        return [p for p in (self.home / "logs").rglob("*") if p.is_file()]


def _pids_of_stack(marker: str, home: Path) -> list[int]:
    """Processes started by this stack that outlived their process group: found by the marker in their
    environment or, for those that rewrote it (setproctitle), by their working directory (AIRFLOW_HOME)."""
    needle = f"RETENTION_E2E_STACK={marker}".encode()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0") or \
                    Path(os.readlink(entry / "cwd")).is_relative_to(home):
                out.append(int(entry.name))
        except OSError:
            pass
    return out


def _wait_ready(stack: Stack) -> None:
    """Health of every component, then the DAGs parsed and visible through the REST API."""
    deadline = time.monotonic() + START_TIMEOUT
    last = ""
    while True:
        stack.check_alive()
        try:
            r = httpx.get(f"{stack.base_url}/api/v2/monitor/health", timeout=10)
            health = r.json() if r.status_code == 200 else {}
            parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
            last = json.dumps({p: (health.get(p) or {}).get("status") for p in parts})
            if all((health.get(p) or {}).get("status") == "healthy" for p in parts):
                break
        except (httpx.HTTPError, ValueError) as exc:
            last = repr(exc)
        if time.monotonic() > deadline:
            raise RuntimeError(f"Airflow ({stack.executor}) not healthy after {START_TIMEOUT:.0f}s: {last}")
        time.sleep(1)
    while True:
        stack.check_alive()
        missing = [d for d in PARSED_DAGS if stack.api("GET", f"/api/v2/dags/{d}").status_code != 200]
        if not missing:
            break
        if time.monotonic() > deadline:
            errors = stack.api("GET", "/api/v2/importErrors").text
            raise RuntimeError(f"DAGs {missing} not parsed after {START_TIMEOUT:.0f}s; import errors: {errors}\n"
                               f"{_tail(stack.logs / 'dag-processor.log')}")
        time.sleep(1)


def start_stack(executor: str, moto_url: str, tmp_root: Path) -> Stack:
    if executor == "celery":
        _redis_reachable()
    suffix = uuid.uuid4().hex[:8]
    logs = ARTIFACTS / executor
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    home = tmp_root / f"airflow-{executor}-{suffix}"
    home.mkdir(parents=True)
    metadata_url = _fresh_database("postgresql", f"rt_e2e_af_{suffix}")
    try:
        world = make_world(suffix, moto_url)
    except BaseException:
        _drop_database("postgresql", metadata_url)
        raise
    port = free_port()
    passwords = {user: secrets.token_urlsafe(12) for user in USERS}
    from cryptography.fernet import Fernet

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RETENTION_"))}
    env.update({
        "PYTHONPATH": str(ROOT),
        # As with an activated venv: `python` in a BashOperator (erasure_metadata_purge) is this one.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "RETENTION_E2E_STACK": suffix,  # marker: lets teardown find every process of this stack
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
        "AIRFLOW__CORE__EXECUTOR": EXECUTORS[executor],
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__AUTH_MANAGER": FAB_AUTH_MANAGER,
        # FAB would re-add the default roles' all-DAG permissions at every api-server start (roles.py)
        "AIRFLOW__FAB__UPDATE_FAB_PERMS": "False",
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__EXPOSE_CONFIG": "False",
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "60",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW_CONN_CRM_DB": airflow_uri(world.crm_url),
        "AIRFLOW_CONN_MAILING_DB": airflow_uri(world.mailing_url),
        "AIRFLOW_CONN_RETENTION_LEDGER": airflow_uri(world.ledger_url),
        "AIRFLOW_CONN_OBJECTS_S3": json.dumps({
            "conn_type": "aws", "login": "t", "password": "t",
            "extra": {"endpoint_url": moto_url, "region_name": "eu-central-1"}}),
        "RETENTION_HMAC_KEY": os.environ["RETENTION_HMAC_KEY"],
        "RETENTION_POLICY_PATH": str(ROOT / "config" / "policy.yaml"),
        "RETENTION_RETRY_DELAY_SECONDS": "1",
        "RETENTION_SWEEP_SCHEDULE": SWEEP_SCHEDULE,
        "RETENTION_METADATA_DB_CONN": metadata_url,
    })
    if executor == "celery":
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed: name the driver.
        backend = sa.engine.make_url(metadata_url).set(drivername="postgresql+psycopg2")
        env.update({
            "AIRFLOW__CELERY__BROKER_URL": REDIS_URL,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + backend.render_as_string(hide_password=False),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "4",
            # Our own queue: another test session on the same Redis cannot take our tasks.
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": f"e2e-{suffix}",
        })
    stack = Stack(executor, home, logs, port, env, world, metadata_url, passwords[ADMIN], passwords=passwords)
    try:
        t0 = time.monotonic()
        stack.run("db", "migrate")
        (logs / "timings.txt").write_text(f"db migrate: {time.monotonic() - t0:.1f}s\n")
        setup_roles(stack)
        with open(logs / "timings.txt", "a") as f:
            f.write(f"db migrate + roles and users: {time.monotonic() - t0:.1f}s\n")
        stack.spawn("api-server", "api-server", "--port", str(port))
        stack.spawn("scheduler", "scheduler")
        stack.spawn("dag-processor", "dag-processor")
        stack.spawn("triggerer", "triggerer")
        if executor == "celery":
            stack.spawn("celery-worker", "celery", "worker", "--queues", f"e2e-{suffix}", "--concurrency", "4",
                        "--celery-hostname", f"e2e-{suffix}@%h", "--without-gossip", "--without-mingle")
        _wait_ready(stack)
        with open(logs / "timings.txt", "a") as f:
            f.write(f"ready (migrate + start + parse): {time.monotonic() - t0:.1f}s\n")
    except BaseException:
        teardown_stack(stack)
        raise
    return stack


def setup_roles(stack: Stack) -> None:
    """The Privacy role, the default roles without all-DAG permissions, and one user per role (roles.py)."""
    users = stack.home / "users.json"
    users.write_text(json.dumps([{"username": u, "role": r, "password": stack.passwords[u]}
                                 for u, r in USERS.items()]))
    users.chmod(0o600)
    try:
        with open(stack.logs / "roles.log", "ab") as out:
            proc = subprocess.run([sys.executable, "-m", "include.retention.airflow.roles", "--users-file",
                                   str(users)], env=stack.env, stdout=out, stderr=subprocess.STDOUT, timeout=300,
                                  cwd=stack.home)
    finally:
        users.unlink()
    if proc.returncode != 0:
        raise RuntimeError(f"roles setup failed ({proc.returncode}):\n{_tail(stack.logs / 'roles.log')}")


def teardown_stack(stack: Stack) -> None:
    try:
        stack.stop()
    finally:
        if (stack.home / "logs").exists():
            shutil.copytree(stack.home / "logs", stack.logs / "task-logs", dirs_exist_ok=True)
        stack.world.dispose()
        try:
            reset_moto(stack.world.moto_url)
        except httpx.HTTPError:
            pass
        for kind, url in (("postgresql", stack.metadata_url), ("postgresql", stack.world.crm_url),
                          ("mariadb", stack.world.mailing_url), ("postgresql", stack.world.ledger_url)):
            try:
                _drop_database(kind, url)
            except Exception:  # noqa: BLE001 - cleanup must not hide the test's own failure
                pass


class Stacks:
    """At most one running stack; asking for another executor stops the current one first."""

    def __init__(self, moto_url: str, tmp_root: Path):
        self.moto_url, self.tmp_root = moto_url, tmp_root
        self.current: Stack | None = None
        self.failed: dict[str, BaseException] = {}

    def get(self, executor: str) -> Stack:
        if self.current is not None and self.current.executor == executor:
            return self.current
        if executor in self.failed:  # do not spend another five minutes on a stack that did not start
            raise RuntimeError(f"the {executor} stack failed to start earlier: {self.failed[executor]}")
        self.close()
        try:
            self.current = start_stack(executor, self.moto_url, self.tmp_root)
        except Exception as exc:
            self.failed[executor] = exc
            raise
        return self.current

    def close(self) -> None:
        if self.current is not None:
            stack, self.current = self.current, None
            teardown_stack(stack)


@pytest.fixture(scope="session")
def stacks(moto_url, tmp_path_factory) -> Iterator[Stacks]:
    manager = Stacks(moto_url, tmp_path_factory.mktemp("e2e"))
    try:
        yield manager
    finally:
        manager.close()


@pytest.fixture(scope="session", params=list(EXECUTORS))
def executor(request) -> str:
    """Session-scoped parameter: pytest groups the tests by executor, so each stack starts once."""
    return request.param


@pytest.fixture
def airflow_stack(executor, stacks) -> Stack:
    """The running stack of this executor (started, or restarted, on demand)."""
    return stacks.get(executor)


@pytest.fixture
def local_stack(stacks) -> Stack:
    return stacks.get("local")
