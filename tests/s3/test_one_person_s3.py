"""One person per request across a SQL row and the S3 objects it owns (moto's server over HTTP): a phone found
only in an upload's metadata is linked to the e-mail when the upload belongs to the customer row carrying the
e-mail (the data map's key-template reference), and conflicting when it belongs to somebody else's row."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from include.retention.identity import normalise
from include.retention.requests import person
from include.retention.stores.base import Subject
from include.retention.stores.sql import SqlStore, make_engine
from tests.s3.conftest import PLAIN, s3_policy

pytestmark = pytest.mark.integration

A_EMAIL, A_PHONE = "Ann@Example.org", "+44 20 7946 0001"
B_EMAIL, B_PHONE = "bob@example.org", "+44 20 7946 0002"


@pytest.fixture
def world(s3, make_store, tmp_path):
    policy = s3_policy(f"""\
        uploads:
          bucket: {PLAIN}
          prefix: uploads/
          key_template: "uploads/{{customer_id}}/..."
          identities: {{phone: "metadata:phone"}}
        """, extra_systems="""\
        crm:
          kind: sql
          connection: crm_db
          collections:
            customers:
              table: customers
              primary_key: id
              columns: [id, email]
              identities: {email: email}
              references: [{to: objects.uploads, key_template: "uploads/{id}/"}]
        """)
    engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    md = sa.MetaData()
    customers = sa.Table("customers", md, sa.Column("id", sa.Integer, primary_key=True),
                         sa.Column("email", sa.String(100)))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(customers.insert(), [{"id": 1, "email": A_EMAIL}, {"id": 2, "email": B_EMAIL},
                                          {"id": 3, "email": "carol@example.org"}])
    s3.put_object(Bucket=PLAIN, Key="uploads/1/a.pdf", Body=b"a", Metadata={"phone": "0044 20 7946 0001"})
    s3.put_object(Bucket=PLAIN, Key="uploads/2/b.pdf", Body=b"b", Metadata={"phone": B_PHONE})
    # a loose upload with A's phone that no row owns
    s3.put_object(Bucket=PLAIN, Key="uploads/9/x.pdf", Body=b"x", Metadata={"phone": A_PHONE})
    stores = {"crm": SqlStore("crm", policy, engine), "objects": make_store(policy)}
    yield policy, stores
    engine.dispose()


def resolve(world, **ids: str) -> person.Resolution:
    policy, stores = world
    return person.resolve(policy, stores.__getitem__, {k: normalise(k, v) for k, v in ids.items()})


def test_an_owned_upload_links_its_phone_and_somebody_elses_does_not(world, s3):
    s3.delete_object(Bucket=PLAIN, Key="uploads/9/x.pdf")
    linked = resolve(world, email=A_EMAIL, phone=A_PHONE)
    assert linked.status == {"email": "found", "phone": "linked"}
    assert linked.counts == {"email": {"crm.customers": 1}, "phone": {"objects.uploads": 1}}
    mixed = resolve(world, email=A_EMAIL, phone=B_PHONE)
    assert mixed.status == {"email": "found", "phone": "conflicting"} and mixed.act_kinds == ["email"]
    # acting with the resolved identities claims A's upload only
    _policy, stores = world
    claims = stores["objects"].find("uploads", [Subject("r", {k: normalise(k, v) for k, v in
                                                               {"email": A_EMAIL, "phone": A_PHONE}.items()
                                                               if k in linked.act_kinds})])
    assert sorted(claims) == ["uploads/1/a.pdf"]


def test_a_loose_upload_with_the_phone_makes_it_conflicting(world):
    res = resolve(world, email=A_EMAIL, phone=A_PHONE)  # uploads/9/x.pdf: owned by no row of A
    assert res.status == {"email": "found", "phone": "conflicting"}
    assert res.counts["phone"] == {"objects.uploads": 2}
