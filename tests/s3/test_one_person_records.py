"""One person per request over records inside objects (moto's server over HTTP, the CRM on SQLite): every record of
an object is found under the object's key, and each one counts on its own. A family phone on Ann's CRM row and on
Bob's record in a nightly export (Bob's e-mail on it) is conflicting whichever record of the export comes first: the
record of Ann's that follows Bob's in the same object does not hide his (before, the later record replaced the
earlier one under the shared key, the phone came out ``linked`` and an erasure acting with it removed Bob's
record)."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.retention.identity import normalise
from include.retention.requests import person
from include.retention.requests.scanner import SubjectScanner
from include.retention.stores.base import Subject
from include.retention.stores.sql import SqlStore, make_engine
from tests.s3.conftest import PLAIN, put, s3_policy
from tests.s3.records_util import body

pytestmark = pytest.mark.integration

ANN, BOB, FAMILY_PHONE = "ann@example.org", "bob@example.org", "+44 20 7946 0555"
KEY = "events/dt=2026-05-01/part-0.jsonl"
ASKED = {"email": ANN, "phone": FAMILY_PHONE}


@pytest.fixture
def world(s3, make_store, tmp_path):
    policy = s3_policy(f"""\
        events:
          bucket: {PLAIN}
          key_template: "events/dt={{yyyy}}-{{mm}}-{{dd}}/..."
          format: jsonl
          identities: {{email: "record:email", phone: "record:phone"}}
        """, extra_systems="""\
        crm:
          kind: sql
          connection: crm_db
          collections:
            customers:
              table: customers
              primary_key: id
              columns: [id, email, phone]
              identities: {email: email, phone: phone}
        """)
    engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    md = sa.MetaData()
    customers = sa.Table("customers", md, sa.Column("id", sa.Integer, primary_key=True),
                         sa.Column("email", sa.String(100)), sa.Column("phone", sa.String(40)))
    md.create_all(engine)
    with engine.begin() as conn:  # Ann's row carries the family phone
        conn.execute(customers.insert(), [{"id": 1, "email": ANN, "phone": FAMILY_PHONE}])
    stores = {"crm": SqlStore("crm", policy, engine), "objects": make_store(policy)}
    yield policy, stores
    engine.dispose()


def lines(recs: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in recs)


BOBS = {"email": BOB, "phone": FAMILY_PHONE, "n": 1}
ANNS = {"email": ANN, "phone": FAMILY_PHONE, "n": 2}
OTHER = {"email": "carol@example.org", "phone": "+44 20 7946 0777", "n": 3}


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations([BOBS, ANNS, OTHER]))
def test_a_family_phone_in_a_shared_export_is_conflicting_in_any_order(s3, world, order):
    policy, stores = world
    put(s3, PLAIN, KEY, lines(order))
    res = person.resolve(policy, stores.__getitem__, {k: normalise(k, v) for k, v in ASKED.items()})
    assert res.status == {"email": "found", "phone": "conflicting"}, (order, res.status)
    assert "another email" in res.why["phone"]
    # acting with what the resolution allows: Ann's record goes, Bob's and Carol's stay as they were
    subject = [Subject("r", {k: normalise(k, v) for k, v in ASKED.items() if k in res.act_kinds})]
    SubjectScanner(policy, stores["objects"]).act(subject, "erase", dry_run=False)
    assert [json.loads(line) for line in body(s3, PLAIN, KEY).splitlines()] == [r for r in order if r is not ANNS]
