"""`make demo`: the embedded default, end to end, on a fresh machine.

Creates .demo/ (Airflow on SQLite, SQLite CRM and mailing list, S3 served by moto's
server), seeds the demo data, runs `retention_sweep` as a dry run and then for real
through Airflow's own runtime, prints what each rule locked, anonymized, deleted and
kept, verifies the ledger and says how to open the Airflow UI on the result.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEMO = ROOT / ".demo"
S3_PORT = int(os.environ.get("RETENTION_DEMO_S3_PORT", "5055"))


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
    }


def write_env_file(env: dict[str, str]) -> None:
    lines = [f"export {k}={json.dumps(v) if v.startswith('{') else repr(v)}" for k, v in env.items()]
    (DEMO / "env.sh").write_text("\n".join(lines) + "\n")


def airflow(env: dict[str, str], *args: str, quiet: bool = True) -> None:
    exe = str(Path(sys.executable).parent / "airflow")
    proc = subprocess.run([exe, *args], env={**os.environ, **env}, capture_output=quiet, text=True)
    if proc.returncode != 0:
        if quiet:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"demo: `airflow {' '.join(args)}` failed ({proc.returncode})")


def seed(env: dict[str, str], now: dt.datetime) -> dict:
    from include.retention.demo import seed as sql_seed
    from include.retention.runtime import parse_conn, sqlalchemy_url
    from include.retention.stores.sql import make_engine

    crm = make_engine(sqlalchemy_url(parse_conn(env["AIRFLOW_CONN_CRM_DB"])))
    mailing = make_engine(sqlalchemy_url(parse_conn(env["AIRFLOW_CONN_MAILING_DB"])))
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
    from include.retention.runtime import parse_conn, sqlalchemy_url
    from include.retention.stores.sql import make_engine
    from include.retention.sweep import summary_table

    ledger = Ledger(make_engine(sqlalchemy_url(parse_conn(env["AIRFLOW_CONN_RETENTION_LEDGER"]))),
                    env["RETENTION_HMAC_KEY"].encode())
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


def main() -> int:
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
    finally:
        s3.stop()
    print(
        "\nWhat happened is in the audit ledger (.demo/ledger.db): `make verify` checks its chain."
        "\nOpen the Airflow UI on this demo:  make ui   (then http://localhost:8080; the login is printed"
        " by `airflow standalone` and kept in .demo/airflow/simple_auth_manager_passwords.json.generated)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
