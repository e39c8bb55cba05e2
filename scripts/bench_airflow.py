"""`make bench`, target 5: Airflow overhead, DAG file parse time against an empty DAG with the same imports.

    scripts/bench_airflow.py [--repeat N] [--cold N]

For every file in dags/ a twin is generated in a temporary folder: the file's own top-level imports,
then one empty DAG (``with DAG("empty_<name>", schedule=None): pass``). Each file and its twin are
parsed alternately with Airflow's ``DagBag`` on that one file, two ways:

- cold (the dag-processor's case, the target): each parse in a fresh Python process that has
  imported Airflow and ``DagBag`` before the clock starts, as the dag-processor's parser processes
  are forked from a manager that has them; everything else the file imports is imported inside the
  measured parse. ``--cold`` parses each (default 5).
- warm: ``--repeat`` parses each (default 15) in this process, the project's modules (``include.*``)
  dropped from ``sys.modules`` before each, every other module already imported: the cost of the
  file's own body, DAG construction included, with little import time around it.

Medians are compared: ratio = DAG file / empty twin, target < 1.5 (cold). ``--files a.py,b.py``: only
these files of dags/. ``--results FILE`` (also with ``--tax`` and ``--celery``, whose ratios have no
target: reported): the ratios as JSON for scripts/bench_summary.py.

``--tax``: the orchestration tax. The e2e launcher (tests/e2e/conftest.py: api-server, scheduler,
dag-processor, triggerer with LocalExecutor, metadata DB on PostgreSQL, the demo data in PostgreSQL,
MariaDB and moto's S3 server) runs one scheduled ``retention_sweep`` (all rules of config/policy.yaml);
its wall time (the run's start to end) is compared with the sum of the same rules' ``run_rule`` times
measured in one plain process on a second, identically seeded copy of the data. Takes several minutes
(start-up, migration), so ``make bench`` leaves it out.

``--phases [rule ...]``: a mapped ``apply_rule`` task's body (``sweep_tasks.apply_rule``) phase by
phase, each rule in a fresh process that has imported ``airflow.sdk`` first, on freshly seeded demo
data; wall seconds per phase and the body's own CPU seconds.

``--celery [N ...]`` (default 1 2): target 6, scaling out. The same launcher starts compose's Celery
variant with N copies of the ``airflow-worker`` service (each its own host name and one task slot,
``compose_stack.scale_workers``), one scheduled ``retention_sweep`` runs, and its wall time and the
worker each task instance ran on (its ``hostname`` from the REST API) are printed; with two counts,
the ratio of their wall times. Several minutes per stack; not in ``make bench``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.5


def twin_source(path: Path) -> str:
    """The file's top-level imports and one empty DAG."""
    tree = ast.parse(path.read_text())
    imports = [ast.get_source_segment(path.read_text(), node) for node in tree.body
               if isinstance(node, (ast.Import, ast.ImportFrom))]
    return "\n".join([*imports, "from airflow.sdk import DAG", "",
                      f'with DAG(dag_id="empty_{path.stem}", schedule=None):', "    pass", ""])


def parse_once(path: Path) -> tuple[float, int]:
    from airflow.dag_processing.dagbag import DagBag

    for name in [m for m in sys.modules if m == "include" or m.startswith("include.")]:
        del sys.modules[name]
    t0 = time.perf_counter()
    bag = DagBag(dag_folder=str(path), safe_mode=False)
    seconds = time.perf_counter() - t0
    if bag.import_errors:
        raise SystemExit(f"{path.name}: import errors: {bag.import_errors}")
    return seconds, len(bag.dags)


def parse_cold(path: Path) -> float:
    """One parse in a fresh process that imported Airflow first (what a forked parser process starts with)."""
    out = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"}, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def child(path: str) -> None:
    sys.path.insert(0, str(ROOT))
    import airflow  # noqa: F401
    from airflow.dag_processing.dagbag import DagBag

    t0 = time.perf_counter()
    bag = DagBag(dag_folder=path, safe_mode=False)
    seconds = time.perf_counter() - t0
    if bag.import_errors:
        raise SystemExit(f"{path}: import errors: {bag.import_errors}")
    print(json.dumps({"seconds": seconds, "dags": len(bag.dags)}))


def sweep_on_stack(executor: str, moto_url: str, **stack_options: int) -> tuple[dict, list[dict]]:
    """Start the e2e stack (``stack_options``: ``start_stack``'s ``workers``, ``concurrency``), let the
    scheduler start one ``retention_sweep`` run, wait for its end and return it with its task instances."""
    sys.path.insert(0, str(ROOT))
    from tests.e2e.conftest import start_stack, teardown_stack

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        stack = start_stack(executor, moto_url, Path(tmp), **stack_options)
        print(f"stack ({executor}{' ' + str(stack_options) if stack_options else ''}) ready in "
              f"{time.monotonic() - t0:.0f}s", flush=True)
        try:
            stack.unpause("retention_sweep")  # schedule "* * * * *": the scheduler starts a run itself
            run = None
            while run is None:
                r = stack.api("GET", "/api/v2/dags/retention_sweep/dagRuns",
                              params={"run_type": "scheduled", "order_by": "run_after", "limit": 1})
                run = (r.json()["dag_runs"] or [None])[0]
                stack.check_alive()
                time.sleep(2)
            try:
                run = stack.wait_run("retention_sweep", run["dag_run_id"], timeout=900)
            finally:
                stack.pause("retention_sweep", settle=None)
            quoted = run["dag_run_id"].replace("+", "%2B").replace(":", "%3A")
            tis = stack.api("GET", f"/api/v2/dags/retention_sweep/dagRuns/{quoted}/taskInstances",
                            params={"limit": 100}).json()["task_instances"]
        finally:
            teardown_stack(stack)
    return run, tis


def run_wall(run: dict) -> float:
    import datetime as dt

    started, ended = (dt.datetime.fromisoformat(run[k]) for k in ("start_date", "end_date"))
    return (ended - started).total_seconds()


def scale_out(counts: list[int]) -> dict[int, float]:
    """``--celery``: one scheduled retention_sweep on compose's Celery variant with N workers of one slot each."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    results = {}
    try:
        for n in counts:
            run, tis = sweep_on_stack("celery", f"http://{host}:{port}", workers=n, concurrency=1)
            results[n] = (run, tis)
    finally:
        server.stop()
    for n, (run, tis) in results.items():
        mapped = sorted((ti for ti in tis if ti["task_id"] == "apply_rule"), key=lambda ti: ti["start_date"] or "")
        per_host: dict[str, list[str]] = {}
        for ti in tis:
            per_host.setdefault(ti["hostname"] or f"(no worker: {ti['state']})", []).append(
                ti["rendered_map_index"] if ti["task_id"] == "apply_rule" else ti["task_id"])
        states = sorted({ti["state"] for ti in mapped})
        print(f"{n} worker(s) x 1 slot: run {run['state']}, wall {run_wall(run):.1f}s, {len(mapped)} mapped "
              f"apply_rule ({', '.join(states)}), their durations sum "
              f"{sum(ti['duration'] or 0 for ti in mapped):.1f}s")
        for hostname, ran in sorted(per_host.items()):
            print(f"    {hostname}: {len(ran)} task(s): {', '.join(ran)}")
    if len(results) == 2:
        (a, (run_a, _)), (b, (run_b, _)) = results.items()
        print(f"scale-out ratio: wall with {a} worker(s) / wall with {b} = "
              f"{run_wall(run_a):.1f}s / {run_wall(run_b):.1f}s = {run_wall(run_a) / run_wall(run_b):.2f}")
    return {n: run_wall(run) for n, (run, _) in results.items()}


def tax(executor: str = "local") -> tuple[float, float]:
    """One scheduled retention_sweep under the real scheduler vs the sum of its rules run in one process."""
    from moto.server import ThreadedMotoServer

    sys.path.insert(0, str(ROOT))
    from include.retention.connections import parse_conn
    from include.retention.ledger import RunRef
    from include.retention.policy import load_policy
    from include.retention.runtime import Runtime
    from include.retention.sweep import run_rule

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    moto_url = f"http://{host}:{port}"
    try:
        run, tis = sweep_on_stack(executor, moto_url)
        wall = run_wall(run)
        applied = [ti for ti in tis if ti["task_id"] == "apply_rule"]
        in_tasks = sum(ti["duration"] or 0 for ti in applied)
        others = {ti["task_id"]: ti["duration"] or 0 for ti in tis if ti["task_id"] != "apply_rule"}

        # the same rules, one after the other in this process, on a copy of the data seeded as airflow-init does
        with seeded_copy(moto_url) as conns:
            policy = load_policy(str(ROOT / "config" / "policy.yaml"))
            runtime = Runtime(policy, lambda conn_id: parse_conn(conns[conn_id]))
            times = {}
            try:
                for rule_id in policy.rule_ids():
                    t = time.perf_counter()
                    run_rule(policy, rule_id, runtime.store(rule_id.split(".")[0]), runtime.ledger(),
                             RunRef("bench", "bench"))
                    times[rule_id] = time.perf_counter() - t
            finally:
                runtime.close()
    finally:
        server.stop()
    rules = sum(times.values())
    print(f"retention_sweep under the scheduler ({executor}): {len(applied)} rules, run wall {wall:.1f}s; "
          f"apply_rule task durations sum {in_tasks:.1f}s; other tasks "
          + ", ".join(f"{k} {v:.1f}s" for k, v in sorted(others.items())))
    print(f"the same {len(times)} rules in one process: sum {rules:.2f}s (slowest "
          + ", ".join(f"{k} {v:.2f}s" for k, v in sorted(times.items(), key=lambda kv: -kv[1])[:3]) + ")")
    print(f"orchestration tax: run wall - rules = {wall - rules:.1f}s ({wall / rules:.1f}x the rules' own time); "
          f"per mapped task {(in_tasks - rules) / max(len(applied), 1):.2f}s over its rule")
    return wall, rules


@contextlib.contextmanager
def seeded_copy(moto_url: str) -> Iterator[dict[str, str]]:
    """Fresh CRM, mailing and ledger databases and moto's S3, seeded as airflow-init does; yields the
    ``AIRFLOW_CONN_*`` values of the data map's connections (dropped again afterwards)."""
    import uuid

    from tests.conftest import airflow_uri
    from tests.e2e.conftest import _drop_database, make_world

    world = make_world(uuid.uuid4().hex[:8], moto_url)
    try:
        subprocess.run([sys.executable, "-m", "include.retention.demo.seed", "--crm-url", world.crm_url,
                        "--mailing-url", world.mailing_url], cwd=ROOT, check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "include.retention.demo.s3_seed", "--endpoint-url", moto_url,
                        "--region", "eu-central-1", "--access-key", "t", "--secret-key", "t",
                        "--crm-url", world.crm_url], cwd=ROOT, check=True, capture_output=True)
        yield {"crm_db": airflow_uri(world.crm_url), "mailing_db": airflow_uri(world.mailing_url),
               "retention_ledger": airflow_uri(world.ledger_url),
               "objects_s3": json.dumps({"conn_type": "aws", "login": "t", "password": "t",
                                         "extra": {"endpoint_url": moto_url, "region_name": "eu-central-1"}})}
    finally:
        world.dispose()
        for kind, url in (("postgresql", world.crm_url), ("mariadb", world.mailing_url),
                          ("postgresql", world.ledger_url)):
            _drop_database(kind, url)


PHASES = ("import", "load_policy", "Runtime()", "store()", "ledger()", "run_rule", "run_rule again")


def phases(rule_ids: list[str]) -> None:
    """A mapped ``apply_rule`` task's body, phase by phase, each rule in a fresh process (``--phases``).

    The process imports ``airflow.sdk`` before the clock starts (a task process has it, and with it
    SQLAlchemy, pydantic and PyYAML); connections come from ``AIRFLOW_CONN_*`` as in a task, the data
    from a fresh copy seeded as airflow-init does (each rule's first run does the real work).
    """
    from moto.server import ThreadedMotoServer

    sys.path.insert(0, str(ROOT))
    import tests.conftest  # noqa: F401  (the session's HMAC key, as the stack's)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        with seeded_copy(f"http://{host}:{port}") as conns:
            if not rule_ids:
                from include.retention.policy import load_policy

                rule_ids = load_policy(str(ROOT / "config" / "policy.yaml")).rule_ids()
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")},
                   **{f"AIRFLOW_CONN_{k.upper()}": v for k, v in conns.items()}, "PYTHONWARNINGS": "ignore",
                   "RETENTION_POLICY_PATH": str(ROOT / "config" / "policy.yaml")}
            rows = {}
            for rule_id in rule_ids:
                out = subprocess.run([sys.executable, __file__, "--phase-child", rule_id], env=env, cwd=ROOT,
                                     capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"{rule_id}: {out.stderr[-3000:]}")
                rows[rule_id] = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        server.stop()
    print(f"{'rule':<48} " + " ".join(f"{p:>14}" for p in PHASES) + f" {'set-up':>7} {'cpu':>6}  modules")
    for rule_id, row in rows.items():
        setup = sum(row[p] for p in PHASES[:5])
        print(f"{rule_id:<48} " + " ".join(f"{row[p]:>14.3f}" for p in PHASES) + f" {setup:>7.3f} "
              f"{row['cpu']:>6.3f}  " + ", ".join(row["modules"]))
    print(f"{'median':<48} " + " ".join(f"{statistics.median(r[p] for r in rows.values()):>14.3f}" for p in PHASES)
          + f" {statistics.median(sum(r[p] for p in PHASES[:5]) for r in rows.values()):>7.3f} "
          f"{statistics.median(r['cpu'] for r in rows.values()):>6.3f}")
    cpu = sum(r["cpu"] for r in rows.values())
    print(f"cpu: the body's own CPU seconds (all phases and the first run_rule), sum {cpu:.2f}s "
          f"over {len(rows)} rules; wall of the body up to the first run_rule's end, sum "
          f"{sum(sum(r[p] for p in PHASES[:6]) for r in rows.values()):.2f}s")


def phase_child(rule_id: str) -> None:
    sys.path.insert(0, str(ROOT))
    import airflow.sdk  # noqa: F401  (a task process has it before our code runs)

    heavy = ("boto3", "botocore", "pandas", "numpy")
    t = {}
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    from include.retention.airflow import sweep_tasks
    from include.retention.connections import env_resolver, policy_path
    from include.retention.ledger import RunRef
    from include.retention.policy import load_policy
    from include.retention.runtime import Runtime
    from include.retention.sweep import run_rule

    assert sweep_tasks
    t["import"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    policy = load_policy(policy_path())
    t["load_policy"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    runtime = Runtime(policy, env_resolver)
    t["Runtime()"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    store = runtime.store(rule_id.split(".")[0])
    t["store()"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ledger = runtime.ledger()
    t["ledger()"] = time.perf_counter() - t0
    for phase in ("run_rule", "run_rule again"):
        t0 = time.perf_counter()
        run_rule(policy, rule_id, store, ledger, RunRef("bench", f"phases-{phase}"))
        t[phase] = time.perf_counter() - t0
        if phase == "run_rule":
            t["cpu"] = time.process_time() - cpu0  # this process's CPU for the whole body (a task's share)
    runtime.close()
    print(json.dumps({**t, "modules": [m for m in heavy if m in sys.modules]}))


def bench_summary():
    """scripts/bench_summary.py, loaded by its path (sys.path is left as the parses find it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_summary", Path(__file__).with_name("bench_summary.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reported(results: str | None, option: str, what: str, ratio: float, started: float) -> None:
    """``--tax`` / ``--celery``: a ratio the issue asks to report (no target), for scripts/bench_summary.py."""
    write_results = bench_summary().write_results
    print(f"{what}: ratio {ratio:.2f} (reported, no target)")
    write_results(results, f"bench_airflow.py {option}", [{"what": what, "ratio": round(ratio, 4), "op": None,
                                                 "target": None, "met": None}], started)


def main() -> int:
    started = time.time()
    results = None
    if "--results" in sys.argv:  # --results FILE, with any of the forms below
        i = sys.argv.index("--results")
        results = sys.argv[i + 1]
        del sys.argv[i:i + 2]
    if len(sys.argv) > 1 and sys.argv[1] == "--tax":
        wall, rules = tax(sys.argv[2] if len(sys.argv) > 2 else "local")
        reported(results, "--tax", "orchestration tax: retention_sweep run wall / sum of its rules", wall / rules,
                 started)
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--celery":
        walls = scale_out([int(n) for n in sys.argv[2:]] or [1, 2])
        if len(walls) == 2:
            (a, wall_a), (b, wall_b) = walls.items()
            reported(results, "--celery", f"Celery scale-out: run wall with {a} worker(s) / with {b}", wall_a / wall_b,
                     started)
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--phases":
        phases(sys.argv[2:])
        return 0
    if len(sys.argv) > 2 and sys.argv[1] == "--phase-child":
        phase_child(sys.argv[2])
        return 0
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=15, help="warm parses of each file")
    ap.add_argument("--results", default=results, help="write the ratios and their targets to this file")
    ap.add_argument("--cold", type=int, default=5, help="cold parses (fresh processes) of each file")
    ap.add_argument("--files", help="comma-separated DAG file names (default: every file in dags/)")
    args = ap.parse_args()
    summary_module = bench_summary()
    summary, result, write_results = [], summary_module.result, summary_module.write_results
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("AIRFLOW_HOME", tmp)
        os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")
        sys.path.insert(0, str(ROOT))
        import warnings

        warnings.simplefilter("ignore")
        import airflow  # noqa: F401  (imported once, as in the dag-processor)

        files = sorted(p for p in (ROOT / "dags").glob("*.py") if not p.name.startswith("_"))
        if args.files:
            files = [ROOT / "dags" / name for name in args.files.split(",")]
        print(f"{'DAG file':<22} {'dags':>4} {'cold ms':>8} {'empty ms':>8} {'ratio':>5} {'target':>6}  "
              f"{'warm ms':>8} {'empty ms':>8} {'ratio':>5}", flush=True)
        worst = 0.0
        for path in files:
            twin = Path(tmp) / f"empty_{path.name}"
            twin.write_text(twin_source(path))
            cold_mine, cold_empty = [], []
            for _ in range(args.cold):
                cold_mine.append(parse_cold(path))
                cold_empty.append(parse_cold(twin))
            parse_once(path)  # warm-up: Airflow's own lazy imports, the file system cache
            parse_once(twin)
            mine, empty = [], []
            n_dags = 0
            for _ in range(args.repeat):
                seconds, n_dags = parse_once(path)
                mine.append(seconds)
                empty.append(parse_once(twin)[0])
            cm, ce = statistics.median(cold_mine), statistics.median(cold_empty)
            m, e = statistics.median(mine), statistics.median(empty)
            ratio = cm / ce
            worst = max(worst, ratio)
            print(f"{path.name:<22} {n_dags:>4} {cm * 1000:>8.1f} {ce * 1000:>8.1f} "
                  f"{summary_module.shown(ratio, '<', TARGET):>5} "
                  f"{'<' + str(TARGET):>6}  {m * 1000:>8.1f} {e * 1000:>8.1f} {m / e:>5.2f}"
                  f"  {'met' if ratio < TARGET else 'MISSED'}", flush=True)
            summary.append(result(f"parse {path.name} / empty DAG, same imports (cold)", ratio, "<", TARGET))
        print(f"ratio = median DagBag parse of the file / of an empty DAG with the same imports; cold: {args.cold} "
              f"fresh processes each (the target), warm: {args.repeat} parses each in one process; worst cold "
              f"{worst:.2f}")
    write_results(args.results, "bench_airflow.py", summary, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
