"""`make demo`: the embedded default, end to end, on a fresh machine.

Creates .demo/ (Airflow on SQLite, SQLite CRM and mailing list, S3 served by moto's
server), seeds the demo data, runs `retention_sweep` as a dry run and then for real
through Airflow's own runtime, prints what each rule locked, anonymized, deleted and
kept, verifies the ledger. Then the subject-request path: `erasure_request` for one demo
person (dry run, then for real) and a restriction request for another, each printed as its
receipt (request id, systems, counts, exceptions: no identity). Ends with how to open the
Airflow UI on the result.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from include.retention.settings import settings  # noqa: E402

DEMO = ROOT / ".demo"
DEADLINES_ENV = "RETENTION_DEADLINE_ALERTS"
S3_PORT = settings().demo_s3_port


def demo_env() -> dict[str, str]:
    """The environment every demo process shares; also written to .demo/env.sh for `make ui`."""
    key_file = DEMO / "hmac.key"
    if not key_file.exists():
        key_file.write_text(secrets.token_hex(32))
    sqlite = lambda name: json.dumps({"conn_type": "sqlite", "host": str(DEMO / f"{name}.db")})  # noqa: E731
    return {
        "PYTHONPATH": str(ROOT),
        "AIRFLOW_HOME": str(DEMO / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API__EXPOSE_CONFIG": "False",
        "AIRFLOW_CONN_CRM_DB": sqlite("crm"),
        "AIRFLOW_CONN_MAILING_DB": sqlite("mailing"),
        "AIRFLOW_CONN_RETENTION_LEDGER": sqlite("ledger"),
        "AIRFLOW_CONN_OBJECTS_S3": json.dumps({
            "conn_type": "aws", "login": "demo", "password": "demo-secret",
            "extra": {"endpoint_url": f"http://127.0.0.1:{S3_PORT}", "region_name": "eu-central-1"},
        }),
        "RETENTION_HMAC_KEY": key_file.read_text().strip(),
        "RETENTION_POLICY_PATH": str(ROOT / "config" / "policy.yaml"),
        # the ledger head is anchored here after every sweep (a directory stands in for an Object Lock bucket)
        "RETENTION_LEDGER_ANCHORS": str(DEMO / "anchors"),
        "RETENTION_LEDGER_ANCHORS_DEMO": "1",  # verify: no warning that a directory cannot prove against truncation
        # unattended: no request waits for a person to confirm the requester's identity (erasure_request,
        # erasure_intake, access_request)
        "RETENTION_VERIFY_IDENTITY": "none",
        # no mail server or webhook endpoints here: a recipient's notice is recorded, not sent (in production a
        # channel without its connection leaves the recipient unconfirmed and the request open)
        "RETENTION_NOTIFY_RECORD_ONLY": "1",
    }


def write_env_file(env: dict[str, str]) -> None:
    lines = [f"export {k}={json.dumps(v) if v.startswith('{') else repr(v)}" for k, v in env.items()]
    (DEMO / "env.sh").write_text("\n".join(lines) + "\n")


def airflow(env: dict[str, str], *args: str, quiet: bool = True) -> None:
    bin_dir = str(Path(sys.executable).parent)  # the venv's bin, first on PATH for whatever Airflow spawns
    exe = str(Path(bin_dir) / "airflow")
    path = os.pathsep.join([bin_dir, os.environ.get("PATH", os.defpath)])
    # `airflow dags test` of a DAG with a deadline alert fails in Airflow 3.3.2 (include/retention/airflow/deadlines.py)
    extra = {DEADLINES_ENV: "0"} if args[:2] == ("dags", "test") else {}
    proc = subprocess.run([exe, *args], env={**os.environ, **env, **extra, "PATH": path}, capture_output=quiet,
                          text=True)
    if proc.returncode != 0:
        if quiet:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"demo: `airflow {' '.join(args)}` failed ({proc.returncode})")


def _conn_engine(env: dict[str, str], name: str):
    from include.retention.connections import make_engine, parse_conn, sqlalchemy_url

    return make_engine(sqlalchemy_url(parse_conn(env[name])))


def seed(env: dict[str, str], now: dt.datetime) -> dict:
    from include.retention.connections import parse_conn
    from include.retention.demo import seed as sql_seed

    crm, mailing = _conn_engine(env, "AIRFLOW_CONN_CRM_DB"), _conn_engine(env, "AIRFLOW_CONN_MAILING_DB")
    out = {"crm": sql_seed.seed_crm(crm, now), "mailing": sql_seed.seed_mailing(mailing, now)}
    try:
        from include.retention.demo import s3_seed
    except ImportError:
        s3_seed = None
    if s3_seed is not None:
        out["objects"] = s3_seed.seed_demo_objects(parse_conn(env["AIRFLOW_CONN_OBJECTS_S3"]), crm, now)
    crm.dispose()
    mailing.dispose()
    return out


def summary(env: dict[str, str], dry_run: bool) -> str:
    """The counts table of the latest run, read back from the ledger (no personal data in it)."""
    from include.retention.ledger import Ledger
    from include.retention.sweep import summary_table

    ledger = Ledger(_conn_engine(env, "AIRFLOW_CONN_RETENTION_LEDGER"), env["RETENTION_HMAC_KEY"].encode())
    outcome = "dry_run" if dry_run else "complete"
    latest: dict[str, dict] = {}
    last_run = None
    for row in ledger.rows(action="sweep"):
        if row["outcome"] == outcome:
            if row["run_id"] != last_run:
                latest, last_run = {}, row["run_id"]
            latest[row["rule_id"]] = {"rule_id": row["rule_id"], "dry_run": dry_run, **json.loads(row["details"])}
    verified = ledger.verify()
    ledger.engine.dispose()
    return f"{summary_table(list(latest.values()))}\n\n{verified}"


# ---- subject requests ------------------------------------------------------------------------------

PERSON_TABLES = ("inquiries", "leads", "applicants", "support_tickets")


def pick_people() -> tuple[dict, dict, dict]:
    """Three demo people (include/retention/demo/seed.py) whose data the sweep left in place.

    Chosen from what is in the stores, deterministically: contacts with rows in the most CRM
    tables and a mailing-list subscription. The one to erase also has a row under legal hold,
    so its receipt shows an exception; the one to restrict and the one queued are the next best.
    """
    crm, mailing = sqlite3.connect(DEMO / "crm.db"), sqlite3.connect(DEMO / "mailing.db")
    try:
        subscribed = {r[0] for r in mailing.execute("SELECT email FROM subscribers")}
        people = []
        for cid, email in crm.execute("SELECT id, email FROM contacts WHERE restricted_at IS NULL "
                                      "AND anonymized_at IS NULL AND legal_hold = 0 ORDER BY id"):
            rows, holds = {}, 0
            for table in PERSON_TABLES:
                n, held = crm.execute(f"SELECT COUNT(*), COALESCE(SUM(legal_hold), 0) FROM {table} "  # noqa: S608
                                      "WHERE email = ? AND restricted_at IS NULL", (email,)).fetchone()
                if n:
                    rows[table] = n
                holds += held
            if email in subscribed:
                rows["subscribers"] = 1
            people.append({"contact_id": cid, "email": email, "rows": rows, "holds": holds})
    finally:
        crm.close()
        mailing.close()
    if len(people) < 3:
        raise SystemExit("demo: fewer than three demo people left after the sweep")
    rank = lambda p: (-len(p["rows"]), -sum(p["rows"].values()), p["contact_id"])  # noqa: E731
    people.sort(key=rank)
    erase = next((p for p in people if p["holds"]), people[0])
    restrict, queued = [p for p in people if p is not erase and not p["holds"]][:2]
    return erase, restrict, queued


def describe(person: dict) -> str:
    return f"contact #{person['contact_id']}: " + ", ".join(f"{t} {n}" for t, n in person["rows"].items())


def latest_run(dag_id: str) -> tuple[str, str]:
    """run_id and state of the newest run of ``dag_id`` in the demo's Airflow metadata DB."""
    db = sqlite3.connect(DEMO / "airflow" / "airflow.db")
    try:
        row = db.execute("SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
                         (dag_id,)).fetchone()
    finally:
        db.close()
    if row is None:
        raise SystemExit(f"demo: no run of {dag_id} recorded")
    return row[0], row[1]


def subject_request(env: dict[str, str], conf: dict, label: str) -> dict:
    """One run of erasure_request (`airflow dags test`), its receipt read back from the registry and printed."""
    from include.retention.registry import Registry
    from include.retention.requests.receipts import render_markdown

    started = time.monotonic()
    airflow(env, "dags", "test", "erasure_request", "-c", json.dumps(conf))
    run_id, state = latest_run("erasure_request")
    engine = _conn_engine(env, "AIRFLOW_CONN_RETENTION_LEDGER")
    try:
        registry = Registry(engine, env["RETENTION_HMAC_KEY"].encode())
        request_id = registry.request_id_for("erasure_request", run_id)
        receipt = registry.receipt(request_id)
    finally:
        engine.dispose()
    if state != "success" or receipt is None:
        raise SystemExit(f"demo: erasure_request ({label}) ended {state}, receipt "
                         f"{'missing' if receipt is None else 'kept'} (run {run_id}; task logs in .demo/airflow/logs)")
    print(f"demo: run {run_id}: {state} in {time.monotonic() - started:.0f} s; its receipt, from the registry:\n")
    print(render_markdown(receipt))
    return receipt


def queue_request(env: dict[str, str], email: str) -> None:
    """One request queued the bulk way (`cli submit`): open on the retention page until erasure_intake runs."""
    csv_file = DEMO / "requests.csv"
    csv_file.write_text(f"email,mode\n{email},erase\n")
    try:
        proc = subprocess.run([sys.executable, "-m", "include.retention.cli", "submit", str(csv_file)],
                              env={**os.environ, **env}, capture_output=True, text=True, cwd=ROOT)
    finally:
        csv_file.unlink()  # the identity is in the registry now, encrypted
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-2000:])
        raise SystemExit("demo: `python -m include.retention.cli submit` failed")
    print(f"demo: {proc.stdout.strip()}")


def subject_requests(env: dict[str, str]) -> None:
    erase, restrict, queued = pick_people()
    print("\ndemo: identity checks are off (RETENTION_VERIFY_IDENTITY=none) so the demo runs unattended; "
          "in production access, rectify and erasure requests wait for a person to confirm the requester. "
          "Notices to recipients are recorded, not sent (RETENTION_NOTIFY_RECORD_ONLY=1: no mail server here); in "
          "production a channel without its connection keeps the request open", flush=True)
    print(f"\ndemo: erasure_request, erase a demo person ({describe(erase)}), dry run ...", flush=True)
    subject_request(env, {"email": erase["email"], "mode": "erase", "dry_run": True,
                          "request_ref": "DEMO-1-DRY", "note": "make demo: dry run"}, "erase, dry run")
    print("demo: erasure_request, the same person, for real ...", flush=True)
    subject_request(env, {"email": erase["email"], "mode": "erase", "dry_run": False,
                          "request_ref": "DEMO-1", "note": "make demo"}, "erase")
    print(f"demo: erasure_request, restrict another demo person ({describe(restrict)}) ...", flush=True)
    subject_request(env, {"email": restrict["email"], "mode": "restrict", "dry_run": False,
                          "request_ref": "DEMO-2", "note": "make demo: restriction"}, "restrict")
    print(f"demo: and one erasure request queued for erasure_intake ({describe(queued)}), the bulk path"
          " (`python -m include.retention.cli submit requests.csv`) ...", flush=True)
    queue_request(env, queued["email"])
    print("demo: it stays open on the data-retention page (days left to its due date) until erasure_intake runs:"
          " unpause erasure_intake in the UI (DAGs start paused) to process it.")


def discovery(env: dict[str, str]) -> None:
    """data_map_drift without the review (`review: false`): what the data map misses, names and numbers only."""
    from include.retention.findings import FindingStore, place

    print("\ndemo: data_map_drift, personal data the data map does not declare (the seed has one such column) ...",
          flush=True)
    airflow(env, "dags", "test", "data_map_drift", "-c", json.dumps({"review": False}))
    run_id, state = latest_run("data_map_drift")
    engine = _conn_engine(env, "AIRFLOW_CONN_RETENTION_LEDGER")
    try:
        found = FindingStore(engine).open_findings()
    finally:
        engine.dispose()
    if state != "success":
        raise SystemExit(f"demo: data_map_drift ended {state} (run {run_id}; task logs in .demo/airflow/logs)")
    print(f"demo: run {run_id}: {state}; {len(found)} open finding(s), each waiting for a decision (map / ignore / "
          "not personal) under Required actions when the DAG runs with its review:")
    for row in found:
        print(f"  {place(row)}: {row['kind'].replace('_', ' ')}, {row['classifier']}, hit rate {row['hit_rate']:.2f} "
              f"of {row['sample_size']} sampled values")
    print("demo: receipts written while a finding is open say so (\"n unmapped candidate columns/prefixes were known "
          "at the time\"); `python -m include.retention.cli validate --live` exits 1 on it.")


def main() -> int:
    started = time.monotonic()
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    if DEMO.exists():
        shutil.rmtree(DEMO)
    (DEMO / "airflow").mkdir(parents=True)
    env = demo_env()
    write_env_file(env)
    os.environ.update(env)

    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log

    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    s3.start()
    try:
        print("demo: migrating Airflow's metadata DB (SQLite) in .demo/airflow ...", flush=True)
        airflow(env, "db", "migrate")
        now = dt.datetime.now(dt.UTC)
        print("demo: seeding the CRM, the mailing list and S3 ...", flush=True)
        seeded = seed(env, now)
        print("demo: seeded " + ", ".join(f"{system}: {sum(v.values()) if isinstance(v, dict) else v} items"
                                          for system, v in seeded.items()), flush=True)
        from include.retention.policy import load_policy

        policy = load_policy(env["RETENTION_POLICY_PATH"])
        print(f"demo: policy {policy.source} valid, {len(policy.rule_ids())} rules, digest {policy.digest[:12]}")

        print("\ndemo: retention_sweep, dry run (counts only, nothing changes) ...", flush=True)
        airflow(env, "dags", "test", "retention_sweep", "-c", json.dumps({"dry_run": True}))
        print(summary(env, dry_run=True))

        print("\ndemo: retention_sweep, for real ...", flush=True)
        airflow(env, "dags", "test", "retention_sweep", "-c", json.dumps({"dry_run": False}))
        print(summary(env, dry_run=False))

        subject_requests(env)
        discovery(env)
    finally:
        s3.stop()
    print(
        f"\ndemo: done in {time.monotonic() - started:.0f} s."
        "\nWhat happened is in the audit ledger (.demo/ledger.db): `make verify` checks its chain."
        "\nOpen the Airflow UI on this demo:  make ui   (it prints the address and the login; the data-retention"
        " page is /retention/, the runs above are under DAGs -> retention_sweep / erasure_request)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
