"""Corrections over S3 (metadata, tags, keys; moto's server over HTTP) and a SQL system together: another person's
address anywhere refuses the correction before any change in either system, values S3 cannot hold (user metadata
over 2 KB, tag values) are refused before the first change, held and foreign-locked objects are kept as
exceptions and the person's other objects corrected."""

from __future__ import annotations

import unicodedata

import pytest
import sqlalchemy as sa

from include.retention.identity import normalise
from include.retention.policy import parse_policy
from include.retention.requests.correction import Correction, CorrectionRefused, CorrectionStopped
from include.retention.stores.base import RESTRICTION, Subject, lock_reason_for
from include.retention.stores.sql import SqlStore, make_engine
from tests.policy_text import policy_text, sql_system, system
from tests.s3.conftest import KEY, PLAIN, VERSIONED, keys, put, snapshot, tags

pytestmark = pytest.mark.integration

ZOE, OTHER, NEW = "Zoe.Muller@Example.org", "zoë.müller@example.org", "zoe.new@example.org"

OBJECTS = """\
    by_meta:
      bucket: {bucket}
      prefix: uploads/
      identities: {{email: "metadata:uploader-email"}}
      legal_hold: [{{column: legal-hold, equals: "true"}}]
    by_tag:
      bucket: {bucket}
      prefix: tickets/
      identities: {{email: "tag:contact"}}
    by_key:
      bucket: {bucket}
      prefix: exports/
      key_template: "exports/{{email}}/..."
      identities: {{email: "key:email"}}
"""
PEOPLE = """\
    people:
      table: people
      primary_key: id
      columns: [id, email]
      identities: {email: email}
"""


def world(tmp_path, bucket: str, make_store):
    """The SQL system ``crm`` (SQLite file: the subject's row and another person's) and the S3 system ``objects``."""
    policy = parse_policy(policy_text(sql_system("crm", "crm_db", PEOPLE),
                                      system("objects", "s3", "objects_s3", OBJECTS.format(bucket=bucket))),
                          source="test-policy.yaml")
    engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE people (id INTEGER PRIMARY KEY, email VARCHAR(254))"))
        conn.execute(sa.text("INSERT INTO people VALUES (1, :a), (2, 'third@example.net')"), {"a": ZOE})
    stores = {"crm": SqlStore("crm", policy, engine, mask_key=KEY), "objects": make_store(policy)}
    return policy, engine, stores


def arrange(s3, bucket: str) -> None:
    put(s3, bucket, "uploads/zoe.pdf", b"zoe's upload", Metadata={"uploader-email": " zoe.muller@example.org "})
    put(s3, bucket, "tickets/zoe.txt", b"zoe's ticket", Tagging="contact=ZOE.MULLER%40example.org&kind=ticket")
    put(s3, bucket, "exports/zoe.muller%40example.org/package.zip", b"zoe's package")


def sql_rows(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text("SELECT id, email FROM people ORDER BY id"))]


def correct(policy, stores, new: str) -> tuple[Correction, dict[str, dict[str, int]]]:
    c = Correction(policy, stores.__getitem__, ["crm", "objects"], [Subject("r1", {"email": normalise("email", ZOE)})],
                   {"email": new})
    c.check()
    counts: dict[str, dict[str, int]] = {}
    for name in c.systems:
        counts.update(c.apply(name, dry_run=False).per_request.get("r1", {}))
    return c, counts


@pytest.mark.parametrize("where", ["metadata", "tag", "key"])
def test_another_persons_address_only_in_s3_refuses_before_any_change(s3, make_store, tmp_path, where):
    """The other person exists only in one S3 field; the correction is refused before the SQL system (checked
    and applied first) changes, and no object changes."""
    bucket = VERSIONED
    policy, engine, stores = world(tmp_path, bucket, make_store)
    arrange(s3, bucket)
    other = unicodedata.normalize("NFD", OTHER)
    if where == "metadata":
        from email.header import Header

        put(s3, bucket, "uploads/other.pdf", b"x", Metadata={"uploader-email": Header(other, "utf-8").encode()})
    elif where == "tag":
        s3.put_object(Bucket=bucket, Key="tickets/other.txt", Body=b"x")
        s3.put_object_tagging(Bucket=bucket, Key="tickets/other.txt",
                              Tagging={"TagSet": [{"Key": "contact", "Value": OTHER.upper()}]})  # NFC: a tag
    else:
        put(s3, bucket, "exports/zo%C3%AB.m%C3%BCller%40example.org/package.zip", b"x")
    before, rows = snapshot(s3, bucket), sql_rows(engine)
    with pytest.raises(CorrectionRefused) as info:
        correct(policy, stores, f"  {OTHER.upper()} ")
    ref = {"metadata": "objects.by_meta", "tag": "objects.by_tag", "key": "objects.by_key"}[where]
    assert f"the new email is already an identity of 1 record(s) that are not this person's ({ref}: 1)" \
        in str(info.value)
    assert "example.org" not in str(info.value) and "ller" not in str(info.value)
    assert snapshot(s3, bucket) == before and sql_rows(engine) == rows


def test_metadata_over_two_kilobytes_and_bad_tag_values_are_refused_before_any_change(s3, make_store, tmp_path):
    bucket = PLAIN
    policy, engine, stores = world(tmp_path, bucket, make_store)
    arrange(s3, bucket)
    # 'uploader-email' (14) + its new value + 'note' (4) + 2,000 bytes of note: over 2,048 with a 31-byte address
    s3.copy_object(Bucket=bucket, Key="uploads/zoe.pdf", CopySource={"Bucket": bucket, "Key": "uploads/zoe.pdf"},
                   Metadata={"uploader-email": ZOE, "note": "n" * 2000}, MetadataDirective="REPLACE")
    before, rows = snapshot(s3, bucket), sql_rows(engine)
    with pytest.raises(CorrectionRefused) as info:
        correct(policy, stores, "a.longer.new.address@example.org")
    assert ("objects.by_meta.metadata:uploader-email: the new value makes the object's user metadata larger than "
            "2048 bytes (1 object(s))") in str(info.value)
    assert "objects.by_tag" not in str(info.value) and "objects.by_key" not in str(info.value)
    assert snapshot(s3, bucket) == before and sql_rows(engine) == rows

    # an address a tag value cannot hold (an apostrophe), and one longer than 256 characters
    s3.copy_object(Bucket=bucket, Key="uploads/zoe.pdf", CopySource={"Bucket": bucket, "Key": "uploads/zoe.pdf"},
                   Metadata={"uploader-email": ZOE}, MetadataDirective="REPLACE")
    before = snapshot(s3, bucket)
    for new, problem in (("o'brien@example.org", "has characters a tag value cannot hold (letters, digits, spaces and "
                                                "+ - = . _ : / @ only)"),
                         ("z" * 250 + "@example.org", "is longer than a tag value may be (256 characters)")):
        with pytest.raises(CorrectionRefused) as info:
            correct(policy, stores, new)
        assert f"objects.by_tag.tag:contact: the new value {problem} (1 object(s))" in str(info.value)
        assert "brien" not in str(info.value) and "zzz" not in str(info.value)
        assert snapshot(s3, bucket) == before and sql_rows(engine) == rows


@pytest.mark.parametrize("bucket", [PLAIN, VERSIONED])
def test_held_and_locked_objects_are_kept_the_others_corrected(s3, make_store, tmp_path, bucket):
    policy, engine, stores = world(tmp_path, bucket, make_store)
    arrange(s3, bucket)
    put(s3, bucket, "uploads/held.pdf", b"held", Metadata={"uploader-email": ZOE}, Tagging="legal-hold=true")
    sweep = "retention:objects.by_tag.answered@2026-01-01"
    put(s3, bucket, "tickets/locked.txt", b"locked", Tagging=f"contact={ZOE}&retention-lock={sweep}")
    own = lock_reason_for(RESTRICTION, f"email\x00{normalise('email', ZOE)}", KEY)
    put(s3, bucket, "tickets/own.txt", b"own", Tagging=f"contact={ZOE}&retention-lock={own}@2026-02-02")
    held_before = [r for r in snapshot(s3, bucket) if r[0] in ("uploads/held.pdf", "tickets/locked.txt")]

    c, counts = correct(policy, stores, NEW)
    assert counts == {"crm.people": {"rectified": 1},
                      "objects.by_meta": {"rectified": 1, "exception:legal_hold": 1},
                      "objects.by_tag": {"rectified": 2, "exception:statutory_lock": 1},
                      "objects.by_key": {"rectified": 1}}
    # kept byte for byte, every version
    assert [r for r in snapshot(s3, bucket) if r[0] in ("uploads/held.pdf", "tickets/locked.txt")] == held_before
    head = s3.head_object(Bucket=bucket, Key="uploads/zoe.pdf")
    assert head["Metadata"] == {"uploader-email": NEW}
    assert tags(s3, bucket, "tickets/zoe.txt") == {"contact": NEW, "kind": "ticket"}
    renamed = lock_reason_for(RESTRICTION, f"email\x00{normalise('email', NEW)}", KEY)
    assert tags(s3, bucket, "tickets/own.txt") == {"contact": NEW, "retention-lock": f"{renamed}@2026-02-02"}
    assert "exports/zoe.new@example.org/package.zip" in keys(s3, bucket)
    assert not [k for k in keys(s3, bucket) if k.startswith("exports/zoe.muller")]
    assert sql_rows(engine) == [(1, NEW), (2, "third@example.net")]
    assert c.remaining("crm") == 0 and c.remaining("objects") == 0  # only the exceptions carry the old value


# ---- order: every SQL system committed first, S3 after; an S3 system stopped part way is finished by a retry ----
class Heard:
    """A journal that keeps what the correction told it (``requests/correction.py``'s ``Journal``)."""

    def __init__(self):
        self.events: list[tuple] = []

    def begin(self, system, planned):
        self.events.append(("begin", system, planned))

    def done(self, system, outcome):
        self.events.append(("done", system, sum(c for counts in outcome.per_request.get("r1", {}).values()
                                                for c in counts.values())))

    def rolled_back(self, system, why):
        self.events.append(("rolled_back", system, why))

    def unknown(self, system, why):
        self.events.append(("unknown", system, why))


def test_a_sql_refusal_at_write_time_leaves_s3_untouched(s3, make_store, tmp_path):
    """S3 is listed first in the systems, yet written only after the SQL commit: a trigger refusing the SQL update
    leaves every object and row as it was."""
    bucket = VERSIONED
    policy, engine, stores = world(tmp_path, bucket, make_store)
    arrange(s3, bucket)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TRIGGER refuse BEFORE UPDATE ON people BEGIN SELECT RAISE(ABORT, 'no'); END")
    before, rows = snapshot(s3, bucket), sql_rows(engine)
    c = Correction(policy, stores.__getitem__, ["objects", "crm"], [Subject("r1", {"email": normalise("email", ZOE)})],
                   {"email": NEW})
    c.check()
    heard = Heard()
    with pytest.raises(CorrectionStopped, match=r"rectify rolled back: crm failed when written \(IntegrityError"):
        c.run(heard, dry_run=False)
    assert [e[:2] for e in heard.events] == [("begin", "crm"), ("rolled_back", "crm")]  # S3 never begun
    assert snapshot(s3, bucket) == before and sql_rows(engine) == rows


def test_s3_stopped_part_way_keeps_sql_committed_and_a_resumed_retry_converges(s3, make_store, tmp_path):
    bucket = VERSIONED
    policy, engine, stores = world(tmp_path, bucket, make_store)
    arrange(s3, bucket)
    subject = [Subject("r1", {"email": normalise("email", ZOE)})]
    calls = []

    def fail_tagging(**_):
        calls.append(1)
        raise ConnectionError("S3 gone")

    client = stores["objects"].client
    client.meta.events.register("before-call.s3.PutObjectTagging", fail_tagging)
    c = Correction(policy, stores.__getitem__, ["crm", "objects"], subject, {"email": NEW})
    c.check()
    heard = Heard()
    with pytest.raises(Exception):  # noqa: B017 - whatever the client raises, the journal hears its class only
        c.run(heard, dry_run=False)
    client.meta.events.unregister("before-call.s3.PutObjectTagging", fail_tagging)
    assert calls
    assert [e[:2] for e in heard.events] == [("begin", "crm"), ("done", "crm"), ("begin", "objects"),
                                             ("unknown", "objects")]
    assert heard.events[3][2].startswith("stopped part way (") and "example" not in heard.events[3][2]
    assert sql_rows(engine) == [(1, NEW), (2, "third@example.net")]  # the SQL system is committed
    assert "uploads/zoe.pdf" in keys(s3, bucket)
    # a retry that did not know the system was begun would take the rewritten object for somebody else's
    with pytest.raises(CorrectionRefused, match="objects.by_meta: 1"):
        Correction(policy, stores.__getitem__, ["objects"], subject, {"email": NEW}).check()
    # resumed (its ledger intent is open, with the items the first attempt claimed): only what still carries the old
    # value is corrected; what the first attempt claimed and already corrected is not taken for somebody else's
    earlier = frozenset(c.claimed_digests("objects") or ())
    retry = Correction(policy, stores.__getitem__, ["objects"], subject, {"email": NEW}, resumed={"objects": earlier})
    retry.check()
    heard = Heard()
    retry.run(heard, dry_run=False)
    assert heard.events == [("begin", "objects", 2), ("done", "objects", 2)]  # the tag and the key, not the upload
    assert retry.remaining("objects") == 0
    assert tags(s3, bucket, "tickets/zoe.txt")["contact"] == NEW
    assert keys(s3, bucket, "exports/") == ["exports/zoe.new@example.org/package.zip"]
    head = s3.head_object(Bucket=bucket, Key="uploads/zoe.pdf")
    assert head["Metadata"]["uploader-email"] == NEW
