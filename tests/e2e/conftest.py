"""docker-compose.yaml's Airflow services as processes: airflow-init, api-server, scheduler, dag-processor,
triggerer (and the Celery worker), each started with the ``command``, ``environment`` and healthcheck
the compose file itself defines (tests/e2e/compose_stack.py), so a change to the compose file is
what these tests run.

Each stack gets a fresh AIRFLOW_HOME, a fresh metadata database on the machine's PostgreSQL, and
fresh stores for the data map (CRM on PostgreSQL, mailing list on MariaDB, ledger/registry on
PostgreSQL, objects in moto's S3 server over HTTP standing in for MinIO): compose's host names
(``postgres``, ``crm-db``, ``mailing-db``, ``redis``, ``minio``, ``airflow-apiserver``) point at them.
airflow-init migrates, makes the roles and users and seeds the demo data as in compose; then the
test adds two people of its own (the subject to erase and a control person who must stay untouched)
and known passwords for its users (tests/e2e/set_users.py). The LocalExecutor variant is the same
stack with ``AIRFLOW__CORE__EXECUTOR=LocalExecutor`` and without the Celery worker; the Celery
variant is compose's own executor.

Only one stack runs at a time (two sets of Airflow components do not fit a 2-core CI machine):
asking for the other executor stops the running stack first. Every process runs in its own
process group and is stopped (SIGTERM, then SIGKILL for the group) at teardown, even when a test
or the start-up failed. Process output goes to ``artifacts/e2e/<executor>/<service>.log`` (and
``<service>.health.log``); the task logs are copied to ``artifacts/e2e/<executor>/task-logs`` at teardown.

DAGs are paused at creation (as in the compose stack): the tests unpause ``erasure_request``
before triggering it and ``retention_sweep`` only after the erasure has been checked, so a sweep
that legitimately changes the seeded data cannot blur the "everybody else untouched" comparison.
``RETENTION_SWEEP_SCHEDULE`` is every minute, so the scheduler starts a sweep by itself as soon as
the DAG is unpaused. ``erasure_metadata_purge`` is unpaused and triggered by its own test;
``erasure_intake`` stays paused (the browser test's open requests must stay open).

Auth: the FAB auth manager with ``[fab] update_fab_perms`` off, as in compose; airflow-init's
``python -m include.retention.airflow.roles`` strips the default roles' all-DAG permissions and
creates the ``Privacy`` role: the subject-request DAGs are then visible and triggerable only by
``privacy`` and ``admin`` (tests/e2e/test_roles.py).
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

from tests.conftest import IN_CI, ROOT, _fresh_database
from tests.e2e import compose_stack
from tests.e2e.compose_stack import COMPOSE, Endpoints, Process

ARTIFACTS = ROOT / "artifacts" / "e2e"
REDIS_URL = os.environ.get("RETENTION_TEST_REDIS", "redis://127.0.0.1:6379/7")
ADMIN = "admin"
# user -> FAB role; ``dpo`` is a Viewer (reads the retention page, not the erasure runs)
USERS = {ADMIN: "Admin", "dpo": "Viewer", "user": "User", "op": "Op", "privacy": "Privacy"}
EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}
SWEEP_SCHEDULE = "* * * * *"
START_TIMEOUT = float(os.environ.get("RETENTION_E2E_START_TIMEOUT", "300"))
STOP_GRACE = 15.0
# compose checks every 30 s with a 10 s limit; here every 2 s until it passes, with room for a slow CLI start
HEALTH_INTERVAL = 2.0
HEALTH_TIMEOUT = 120.0
# The test's own settings over docker-compose.yaml's (and the executor: LocalExecutor or compose's Celery).
TEST_SETTINGS = {
    "AIRFLOW__CORE__PARALLELISM": "8",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "60",
    "RETENTION_RETRY_DELAY_SECONDS": "1",
    "RETENTION_SWEEP_SCHEDULE": SWEEP_SCHEDULE,
    # unattended, like the demo (ADR 0014): no identity check; recipients without a connection recorded, not sent
    "RETENTION_VERIFY_IDENTITY": "none",
    "RETENTION_NOTIFY_RECORD_ONLY": "1",
    # compose's DAG folder, and the tests' own DAGs (tests/e2e/dags: a downstream DAG of the sweep's assets)
    "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps([
        {"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}},
        {"name": "e2e-tests", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
         "kwargs": {"path": str(ROOT / "tests" / "e2e" / "dags")}}]),
}
PARSED_DAGS = ("erasure_request", "retention_sweep", "e2e_swept_consumer")

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
    """Fresh, empty stores: airflow-init (docker-compose.yaml) creates and seeds them, ``add_people`` adds ours."""
    from include.retention.stores.sql import make_engine

    crm_url = _fresh_database("postgresql", f"rt_e2e_crm_{suffix}")
    mailing_url = _fresh_database("mariadb", f"rt_e2e_mail_{suffix}")
    ledger_url = _fresh_database("postgresql", f"rt_e2e_ledger_{suffix}")
    reset_moto(moto_url)
    s3 = boto3_client(moto_url)
    return World(crm_url, mailing_url, ledger_url, moto_url, make_engine(crm_url), make_engine(mailing_url),
                 make_engine(ledger_url), s3, {}, {}, dt.datetime.now(dt.UTC))


def boto3_client(moto_url: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=moto_url, region_name="eu-central-1", aws_access_key_id="t",
                        aws_secret_access_key="t")


def add_people(world: World) -> None:
    """The subject to erase and the control person, with their objects (a CV in two versions, an attachment)."""
    from include.retention.demo.s3_seed import seed_objects
    from tests.airflow.test_erasure_request_dag import SUBJECT, add_subject

    world.ids = add_subject(world.crm, world.mailing, SUBJECT)
    world.control_ids = add_subject(world.crm, world.mailing, CONTROL)
    ids = (world.ids, world.control_ids)
    seed_objects(world.s3, world.seeded_at, cv_keys=[f"cvs/{i['applicant']}/cv.pdf" for i in ids],
                 attachment_keys=[f"inquiries/{i['inquiry']}/file.pdf" for i in ids], log_days=0)


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
    processes: list[Process] = field(default_factory=list)  # docker-compose.yaml's services, as started
    started: float = field(default_factory=time.monotonic)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- processes (docker-compose.yaml's services) ----------------------------------------------
    def _output(self, name: str):
        return open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child

    def run_to_end(self, proc: Process, timeout: float = 900) -> None:
        """A service others wait for with ``service_completed_successfully`` (airflow-init)."""
        with self._output(proc.name) as out:
            done = subprocess.run(proc.argv, env=proc.env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                                  cwd=self.home)
        if done.returncode != 0:
            raise RuntimeError(f"{proc.name} (`{' '.join(proc.argv[:3])} ...`) exited with {done.returncode}:\n"
                               f"{_tail(self.logs / f'{proc.name}.log')}")

    def spawn(self, proc: Process) -> None:
        out = self._output(proc.name)
        self.procs[proc.name] = subprocess.Popen(proc.argv, env=proc.env, stdout=out, stderr=subprocess.STDOUT,
                                                 cwd=self.home, start_new_session=True)
        out.close()  # the child holds its own descriptor

    def wait_healthy(self, proc: Process, deadline: float) -> None:
        """The service's compose healthcheck, retried until it passes (compose: every ``interval``)."""
        env = {**proc.env, "HOSTNAME": proc.hostname or socket.gethostname()}
        if shutil.which(proc.health[0], path=env["PATH"]) is None:
            raise RuntimeError(f"{proc.name}'s healthcheck runs {proc.health[0]!r}, which is not on PATH: install it")
        while True:
            self.check_alive()
            with open(self.logs / f"{proc.name}.health.log", "ab") as out:
                try:
                    ok = subprocess.run(proc.health, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.home,
                                        timeout=HEALTH_TIMEOUT).returncode == 0
                except subprocess.TimeoutExpired:
                    ok = False
            if ok:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} not healthy after {START_TIMEOUT:.0f}s ({' '.join(proc.health)}):\n"
                                   f"{_tail(self.logs / f'{proc.name}.health.log')}\n"
                                   f"{_tail(self.logs / f'{proc.name}.log')}")
            time.sleep(HEALTH_INTERVAL)

    def start(self, processes: list[Process], after_oneshots) -> None:
        """compose's order: one-shot services to the end, then each service once its dependencies are healthy."""
        deadline = time.monotonic() + START_TIMEOUT
        by_name = {p.name: p for p in processes}
        for proc in processes:
            if proc.oneshot:
                assert all(by_name[d].oneshot for d in proc.depends_on if d in by_name), proc.depends_on
                self.run_to_end(proc)
                self.timing(f"{proc.name} done")
        after_oneshots()
        healthy: set[str] = set()
        for proc in processes:
            if proc.oneshot:
                continue
            for dep, condition in proc.depends_on.items():
                if dep in by_name and condition == "service_healthy" and dep not in healthy:
                    self.wait_healthy(by_name[dep], deadline)
                    healthy.add(dep)
            self.spawn(proc)
        for proc in processes:
            if not proc.oneshot and proc.name not in healthy and proc.health:
                self.wait_healthy(proc, deadline)
        self.timing("every service healthy")

    def timing(self, what: str) -> None:
        with open(self.logs / "timings.txt", "a") as f:
            f.write(f"{what}: {time.monotonic() - self.started:.1f}s\n")

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n"
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


def _wait_parsed(stack: Stack) -> None:
    """The DAGs parsed and visible through the REST API."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        stack.check_alive()
        missing = [d for d in PARSED_DAGS if stack.api("GET", f"/api/v2/dags/{d}").status_code != 200]
        if not missing:
            return
        if time.monotonic() > deadline:
            errors = stack.api("GET", "/api/v2/importErrors").text
            raise RuntimeError(f"DAGs {missing} not parsed after {START_TIMEOUT:.0f}s; import errors: {errors}\n"
                               f"{_tail(stack.logs / 'airflow-dag-processor.log')}")
        time.sleep(1)


def compose_processes(executor: str, *, home: Path, world: World, metadata_url: str, api_port: int,
                      marker: str, workers: int | None = None, concurrency: int = 1) -> list[Process]:
    """docker-compose.yaml's Airflow services, rendered with fresh ``make secrets`` values, pointed at this
    machine (tests/e2e/compose_stack.py); the LocalExecutor variant runs them without the Celery worker.
    ``workers``: the Celery variant with that many worker processes of ``concurrency`` slots each
    (``compose_stack.scale_workers``; scripts/bench_airflow.py --celery); None: compose's one worker."""
    env_file = home / ".env"
    compose_stack.secrets_script().write_env(env_file)
    # The HMAC key is the session's (tests read the ledger and registry with it), as k0: the id of a lone key.
    spec = compose_stack.render(COMPOSE, env_file, {"RETENTION_HMAC_KEYS": f"k0:{os.environ['RETENTION_HMAC_KEY']}"})
    api = f"http://127.0.0.1:{api_port}"
    health_port = free_port()
    endpoints = Endpoints({
        "postgres/airflow": metadata_url, "postgres/ledger": world.ledger_url, "crm-db/crm": world.crm_url,
        "mailing-db/mailing": world.mailing_url, "redis": REDIS_URL, "minio:9000": world.moto_url,
        "airflow-apiserver:8080": api, "localhost:8080": api, "localhost:8974": f"http://127.0.0.1:{health_port}",
    })
    mounts = compose_stack.bind_mounts(spec["services"]["airflow-scheduler"])
    settings = compose_stack.machine_settings(
        home=home, bin_dir=Path(sys.executable).parent, api_port=api_port, health_port=health_port,
        log_ports=(free_port(), free_port()), queue=f"e2e-{marker}", mounts=mounts)
    settings.update(TEST_SETTINGS)
    settings.update({"RETENTION_E2E_STACK": marker,  # lets teardown find every process of this stack
                     "AIRFLOW__CORE__EXECUTOR": EXECUTORS[executor]})
    skip = frozenset() if executor == "celery" else compose_stack.celery_services(spec)
    # the machine's environment without its own Airflow/retention settings (a container starts clean too)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RETENTION_"))}
    processes = compose_stack.plan(spec, endpoints, settings, skip=skip, base=base)
    if workers is not None and executor == "celery":
        processes = compose_stack.scale_workers(processes, compose_stack.celery_services(spec), workers,
                                                concurrency, free_port)
    return processes


def start_stack(executor: str, moto_url: str, tmp_root: Path, *, workers: int | None = None,
                concurrency: int = 1) -> Stack:
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
    stack = Stack(executor, home, logs, port, {}, world, metadata_url, passwords[ADMIN], passwords=passwords)
    try:
        stack.processes = compose_processes(executor, home=home, world=world, metadata_url=metadata_url,
                                            api_port=port, marker=suffix, workers=workers, concurrency=concurrency)
        stack.env = next(p.env for p in stack.processes if p.name == "airflow-apiserver")
        stack.start(stack.processes, after_oneshots=lambda: (add_people(world), set_users(stack)))
        _wait_parsed(stack)
        stack.timing("ready (init + start + parse)")
    except BaseException:
        teardown_stack(stack)
        raise
    return stack


def set_users(stack: Stack) -> None:
    """Known passwords for the users airflow-init made with random ones, plus ``user`` and ``op`` (USERS)."""
    users = stack.home / "users.json"
    users.write_text(json.dumps([{"username": u, "role": r, "password": stack.passwords[u]}
                                 for u, r in USERS.items()]))
    users.chmod(0o600)
    try:
        with open(stack.logs / "users.log", "ab") as out:
            proc = subprocess.run([sys.executable, "-m", "tests.e2e.set_users", str(users)], env=stack.env,
                                  stdout=out, stderr=subprocess.STDOUT, timeout=300, cwd=ROOT)
    finally:
        users.unlink()
    if proc.returncode != 0:
        raise RuntimeError(f"setting the users failed ({proc.returncode}):\n{_tail(stack.logs / 'users.log')}")
    stack.timing("users set")


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


def _stack_of(item: pytest.Item) -> str | None:
    if "local_stack" in item.fixturenames:
        return "local"
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("executor") if callspec and "airflow_stack" in item.fixturenames else None


def pytest_collection_modifyitems(session, config, items):
    """Every test on the local stack before any on the Celery one, so each stack starts once (a stack start
    is the slowest part of these tests); other tests keep their places."""
    places = [i for i, item in enumerate(items) if _stack_of(item)]
    ordered = sorted((items[i] for i in places), key=lambda item: _stack_of(item) != "local")
    for i, item in zip(places, ordered, strict=True):
        items[i] = item


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
