"""retention_sweep through Airflow's own runtime (dag.test) with a reference across databases: notes in MariaDB
point at people in PostgreSQL. The minors rule deletes a person in PostgreSQL and, first, that person's notes in
MariaDB; a note held in MariaDB keeps its person. The ledger has each system's own entries."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.airflow.conftest import run_dag, task_states
from tests.airflow.test_retention_sweep_dag import DAG_ID, ids, stores  # noqa: F401 - the fixture
from tests.integration import test_sql_sweep as fixture_data
from tests.policy_text import crm_policy

pytestmark = [pytest.mark.airflow, pytest.mark.integration]

POLICY = crm_policy("""\
      people:
        table: t_people
        primary_key: id
        columns: [id, email, created_at, is_minor, legal_hold, restricted_at, restriction_reason]
        legal_hold: [{column: legal_hold, equals: true}]
        rules:
          - {name: minors, start: created_at, when: [{column: is_minor, equals: true}], action: delete, period: P0D}
""", defaults="{max_fraction: 0.9, batch_size: 2}", mailing="""\
      notes:
        table: t_notes
        primary_key: id
        columns: [id, person_id, body, written_at, legal_hold]
        references: [{column: person_id, to: crm.people, on_delete: delete}]
        legal_hold: [{column: legal_hold, equals: true}]
""")


def test_sweep_cascades_into_the_other_database(stores, tmp_path, monkeypatch):  # noqa: F811
    crm, mailing, ledger, _ = stores
    path = tmp_path / "cross.yaml"
    path.write_text(POLICY)
    monkeypatch.setenv("RETENTION_POLICY_PATH", str(path))
    # minors are 2, 3 and 5 (5 under legal hold); in MariaDB note 11 (person 3) is held, note 10 is person 2's
    run = run_dag(DAG_ID, {"dry_run": False})
    assert run.state == "success", task_states(run)
    assert ids(crm, fixture_data.people) == {1, 3, 4, 5, 6}  # 3 kept by its note held in the other database
    assert ids(mailing, fixture_data.notes) == {11, 12, 13, 14, 15}
    assert ids(crm, fixture_data.notes) == {10, 11, 12, 13, 14, 15}  # crm's own notes table is not in this map
    rows = [r for r in ledger.rows() if r["action"] == "delete" and r["outcome"] == "done"]
    assert {(r["system"], r["collection"], r["count"]) for r in rows} == {("crm", "crm.people", 1),
                                                                          ("mailing", "mailing.notes", 1)}
    assert all(r["rule_id"] == "crm.people.minors" for r in rows)
    assert ledger.verify().ok
    with mailing.connect() as conn:  # the other database's people table is not the referenced one
        assert conn.execute(sa.select(sa.func.count()).select_from(fixture_data.people)).scalar() == 6
