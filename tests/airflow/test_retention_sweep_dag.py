"""retention_sweep through Airflow's own runtime (dag.test) on PostgreSQL + MariaDB."""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid

import pytest
import sqlalchemy as sa

from include.retention.ledger import Ledger
from include.retention.stores.sql import make_engine
from tests.airflow.conftest import answer_approval, run_dag, task_states
from tests.conftest import airflow_uri
from tests.integration import test_sql_sweep as fixture_data
from tests.policy_text import crm_policy

pytestmark = [pytest.mark.airflow, pytest.mark.integration]
DAG_ID = "retention_sweep"

POLICY = crm_policy("""\
      people:
        table: t_people
        primary_key: id
        columns: [id, email, created_at, is_minor, legal_hold, restricted_at, restriction_reason]
        legal_hold: [{column: legal_hold, equals: true}]
        rules:
          - {name: minors, start: created_at, when: [{column: is_minor, equals: true}], action: delete, period: P0D}
      notes:
        table: t_notes
        primary_key: id
        columns: [id, person_id, body, written_at, legal_hold]
        references: [{column: person_id, to: crm.people, on_delete: delete}]
        legal_hold: [{column: legal_hold, equals: true}]
      tags:
        table: t_tags
        primary_key: id
        columns: [id, person_id, label]
        references: [{column: person_id, to: crm.people, on_delete: nullify}]
      leads:
        table: t_leads
        primary_key: id
        columns: [id, email, last_activity_at, legal_hold, restricted_at, restriction_reason]
        lock: {at: restricted_at, reason: restriction_reason}
        legal_hold: [{column: legal_hold, equals: true}]
        rules:
          - name: lifecycle
            start: last_activity_at
            max_fraction: __LEADS_FRACTION__
            stages: [{action: lock, after: P24M}, {action: delete, after: P36M}]
""", defaults="{max_fraction: 0.9, batch_size: 2}", mailing="""\
      visits:
        table: t_visits
        primary_key: id
        columns: [id, ip, email, seen_at, anonymized_at]
        anonymized_marker: anonymized_at
        rules:
          - name: mask_visitors
            start: seen_at
            action: anonymize
            period: P30D
            mask: {ip: {strategy: "null"}, email: {strategy: hmac}}
""")



@pytest.fixture
def stores(airflow_db, fresh_database, tmp_path, monkeypatch):
    suffix = uuid.uuid4().hex[:8]
    crm_url = fresh_database("postgresql", f"rt_crm_{suffix}")
    mailing_url = fresh_database("mariadb", f"rt_mail_{suffix}")
    ledger_url = fresh_database("postgresql", f"rt_ledger_{suffix}")
    crm, mailing = make_engine(crm_url), make_engine(mailing_url)
    # The fixture rows are dated relative to a fixed NOW; shift them to the real clock.
    monkeypatch.setattr(fixture_data, "NOW", dt.datetime.now(dt.UTC))
    fixture_data.seed(crm)
    fixture_data.seed(mailing)
    monkeypatch.setenv("AIRFLOW_CONN_CRM_DB", airflow_uri(crm_url))
    monkeypatch.setenv("AIRFLOW_CONN_MAILING_DB", airflow_uri(mailing_url))
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_LEDGER", airflow_uri(ledger_url))

    def use_policy(leads_fraction: float) -> None:
        path = tmp_path / f"policy-{leads_fraction}.yaml"
        path.write_text(POLICY.replace("__LEADS_FRACTION__", str(leads_fraction)))
        monkeypatch.setenv("RETENTION_POLICY_PATH", str(path))

    use_policy(0.9)
    # the ledger is keyed: verify with the key the DAG's tasks write with
    yield crm, mailing, Ledger(make_engine(ledger_url), os.environ["RETENTION_HMAC_KEY"].encode()), use_policy
    for engine in (crm, mailing):
        engine.dispose()


def swept_events(run_id: str) -> list[dict]:
    """The run's asset events, through Airflow's REST API (``GET /api/v2/assets/events``) as an admin."""
    from airflow.api_fastapi.app import create_app, get_auth_manager, purge_cached_app
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    try:
        client = TestClient(create_app())
        token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="test", role="admin"))
        resp = client.get("/api/v2/assets/events", params={"source_dag_id": DAG_ID, "source_run_id": run_id},
                          headers={"Authorization": f"Bearer {token}"})
    finally:
        purge_cached_app()
    assert resp.status_code == 200, resp.text
    return resp.json()["asset_events"]


def ids(engine, table, where=None):
    query = sa.select(table.c.id) if where is None else sa.select(table.c.id).where(where)
    with engine.connect() as conn:
        return set(conn.execute(query).scalars())


def test_sweep_dry_run_then_real_then_idempotent(stores):
    crm, mailing, ledger, _ = stores
    before = fixture_data.snapshot(crm), fixture_data.snapshot(mailing)

    dry = run_dag(DAG_ID, {"dry_run": True})
    assert dry.state == "success"
    assert (fixture_data.snapshot(crm), fixture_data.snapshot(mailing)) == before

    real = run_dag(DAG_ID, {"dry_run": False})
    assert real.state == "success", task_states(real)
    assert task_states(real)["apply_rule"] == ["success"] * 3
    assert ids(crm, fixture_data.people) == {1, 3, 4, 5, 6}
    assert ids(crm, fixture_data.leads) == {31, 32, 33, 34, 35}
    assert ids(crm, fixture_data.leads, fixture_data.leads.c.restricted_at.is_not(None)) == {31, 35}
    assert ids(mailing, fixture_data.visits, fixture_data.visits.c.anonymized_at.is_not(None)) == set(range(50, 55))
    # the other database's same-named tables were not touched by the other system's rules
    assert ids(mailing, fixture_data.people) == {1, 2, 3, 4, 5, 6}

    after = fixture_data.snapshot(crm), fixture_data.snapshot(mailing)
    again = run_dag(DAG_ID, {"dry_run": False})
    assert again.state == "success"
    assert (fixture_data.snapshot(crm), fixture_data.snapshot(mailing)) == after

    # asset events (read back through Airflow's REST API): one per changed system of the real run, counts only;
    # the dry run and the run that changed nothing emit none
    assert swept_events(dry.run_id) == [] and swept_events(again.run_id) == []
    events = {e["uri"]: e for e in swept_events(real.run_id)}
    assert set(events) == {"retention://crm/swept", "retention://mailing/swept"}
    crm_extra, mailing_extra = events["retention://crm/swept"]["extra"], events["retention://mailing/swept"]["extra"]
    assert (crm_extra["deleted"], crm_extra["locked"], crm_extra["anonymized"]) == (3, 1, 0)  # 2 leads + 1 minor
    assert crm_extra["rules"] == ["crm.leads.lifecycle", "crm.people.minors"] and crm_extra["run_id"] == real.run_id
    assert crm_extra["deleted"] + crm_extra["locked"] == sum(
        r["count"] for r in ledger.rows(run_id=real.run_id, action="sweep", outcome="complete") if r["system"] == "crm")
    assert mailing_extra["anonymized"] == 5 and mailing_extra["deleted"] == 0
    assert "@example.org" not in json.dumps(list(events.values()))

    rows = list(ledger.rows())
    assert ledger.verify().ok
    completes = [r for r in rows if r["action"] == "sweep" and r["outcome"] == "complete"]
    assert len(completes) == 6 and {r["run_id"] for r in completes} == {real.run_id, again.run_id}
    assert len([r for r in rows if r["outcome"] == "dry_run"]) == 3
    assert "@example.org" not in repr(rows)


@pytest.mark.parametrize("answer", ["Reject", "Approve"])
def test_safety_brake_waits_for_a_person(stores, answer):
    """A tripped brake changes nothing; rejected, the run fails; approved, the rule runs once."""
    crm, mailing, ledger, use_policy = stores
    use_policy(0.1)
    before = fixture_data.snapshot(crm)
    responder = answer_approval(DAG_ID, "approve_brake", answer)
    run = run_dag(DAG_ID, {"dry_run": False, "systems": ["crm"]})
    assert responder.wait(timeout=30) == 0
    states = task_states(run)
    assert sorted(states["apply_rule"]) == ["failed", "success"]  # leads tripped; minors ran
    assert ids(crm, fixture_data.people) == {1, 3, 4, 5, 6}
    assert ids(mailing, fixture_data.visits, fixture_data.visits.c.anonymized_at.is_not(None)) == set()
    outcomes = [(r["rule_id"], r["outcome"]) for r in ledger.rows() if r["action"] == "sweep"]
    assert ("crm.leads.lifecycle", "brake_tripped") in outcomes
    if answer == "Reject":
        assert run.state == "failed" and states["summarize"] == ["failed"]
        assert fixture_data.snapshot(crm)["t_leads"] == before["t_leads"]  # the tripped rule changed nothing
        assert ("crm.leads.lifecycle", "complete") not in outcomes
    else:
        assert run.state == "success", states
        assert states["apply_approved"] == ["success"]
        assert ids(crm, fixture_data.leads) == {31, 32, 33, 34, 35}
        assert ("crm.leads.lifecycle", "complete") in outcomes
    assert ledger.verify().ok


def test_bad_policy_file_fails_first_task_and_touches_nothing(stores, tmp_path, monkeypatch):
    crm, mailing, ledger, _ = stores
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY.replace("__LEADS_FRACTION__", "0.9").replace("period: P30D", "period: -P30D"))
    monkeypatch.setenv("RETENTION_POLICY_PATH", str(bad))
    before = fixture_data.snapshot(crm), fixture_data.snapshot(mailing)
    run = run_dag(DAG_ID, {"dry_run": False})
    states = task_states(run)
    assert run.state == "failed" and states["plan_rules"] == ["failed"]
    assert (fixture_data.snapshot(crm), fixture_data.snapshot(mailing)) == before
    assert list(ledger.rows()) == []


CONTACTS = """\
      contacts:
        table: t_contacts
        primary_key: id
        columns: [id, email, note]
        identities: {email: {column: email, lookup: indexed}}
"""


def test_an_erased_person_found_again_reopens_the_request_and_fails_the_check(stores, tmp_path, monkeypatch):
    """An erased person's row loaded with the index's triggers off: the sweep's independent check finds it,
    reopens the request and records it, and the run fails (``erasures_intact``, alerting the DPO); a dry run
    reopens nothing; nobody is named in the ledger or the XComs."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from include.retention.registry import Identities, NewRequest, Registry
    from include.retention.stores import sql_index

    crm, _mailing, ledger, _ = stores
    policy = tmp_path / "policy-contacts.yaml"
    policy.write_text(crm_policy(CONTACTS))
    monkeypatch.setenv("RETENTION_POLICY_PATH", str(policy))
    with crm.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t_contacts (id INTEGER PRIMARY KEY, email VARCHAR(200), note TEXT)")
        for statement in sql_index.ddl("postgresql", "t_contacts", "email", ["id"]):
            conn.exec_driver_sql(statement)
        conn.exec_driver_sql("INSERT INTO t_contacts VALUES (1, 'other@example.org', 'n')")
    registry = Registry(ledger.engine, os.environ["RETENTION_HMAC_KEY"].encode())
    rid = registry.register(NewRequest(Identities(email="zoe@example.org")))
    registry.suppression.add_many([rid])  # her erasure completed: her rows went, her digest stays
    registry.finish(rid, "complete")

    clean = run_dag(DAG_ID, {"dry_run": False})
    assert clean.state == "success" and task_states(clean)["erasures_intact"] == ["success"]

    with crm.begin() as conn:  # a bulk load with triggers off: her row with somebody else's digest
        conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        conn.execute(sa.text("INSERT INTO t_contacts VALUES (2, :e, 'n', :d)"),
                     {"e": " ZOE@Example.org", "d": sql_index.value_digest("email", "x@example.org")})
    dry = run_dag(DAG_ID, {"dry_run": True})
    assert task_states(dry)["erasures_intact"] == ["failed"] and dry.state == "failed"
    assert registry.get(rid)["status"] == "complete"  # a dry run reopens nothing

    real = run_dag(DAG_ID, {"dry_run": False})
    states = task_states(real)
    assert states["check_erasures"] == ["success"] and states["erasures_intact"] == ["failed"]
    assert real.state == "failed"
    assert states["anchor_ledger"] == ["success"]  # the check's entries are anchored with the run's
    request = registry.get(rid)
    assert request["status"] == "incomplete" and request["completed_at"] is None and request["dag_id"] is None
    assert registry.systems.of(rid)["crm"]["status"] == "failed"
    checks = [(r["run_id"], r["outcome"], r["request_id"], r["count"]) for r in ledger.rows()
              if r["action"] == "erasure_check"]
    assert checks == [(clean.run_id, "none_found", None, 0), (dry.run_id, "found_again", None, 1),
                      (real.run_id, "found_again", None, 1), (real.run_id, "reopened", rid, 1)]
    assert ledger.verify().ok
    with create_session() as session:
        xcoms = [x.value for x in session.query(XComModel).filter(XComModel.dag_id == DAG_ID)]
    assert any(rid in repr(x) for x in xcoms)  # the check's XCom holds request ids and counts
    assert "zoe" not in (repr(list(ledger.rows())) + repr(xcoms)).lower()
    with crm.connect() as conn:  # the check changed no data: the reopened request erases it
        assert conn.execute(sa.text("SELECT count(*) FROM t_contacts")).scalar() == 2
