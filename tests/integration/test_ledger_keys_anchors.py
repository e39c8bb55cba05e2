"""Issue 22, items 1 and 2: key rotation in the chain and anchors that are hard to bend.

An attacker who holds only a RETIRED key (k0, after the chain was handed over to k1), and one with write
access to the ledger database and to a directory of anchors but without any key, against ``verify``
(docs/adr/0007-key-rotation.md, docs/adr/0006-keyed-anchored-ledger.md). S3 Object Lock through moto's
server. Every case is detected at the first bad entry, refused, or named as the documented limit.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import boto3
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.retention import cli
from include.retention.errors import RetentionError
from include.retention.ledger import (
    ANCHORS_DEMO_ENV,
    DIRECTORY_LIMIT,
    Anchor,
    DirectorySink,
    Ledger,
    RunRef,
    S3Sink,
    anchor_sinks,
    entries,
    entry_hash,
    head,
    read_anchors,
)
from include.retention.ledger.anchors import content_md5
from include.retention.masking import KeyRing
from include.retention.stores.sql import make_engine
from tests.integration.test_ledger_tamper import _rechain_from, _rows

pytestmark = pytest.mark.integration

OLD = ("0ld-key-" + "a1" * 16).encode()
NEW = ("n3w-key-" + "b2" * 16).encode()
OLD_ONLY = KeyRing([("k0", OLD)])
RING = KeyRing([("k1", NEW), ("k0", OLD)])
WRONG = b"attacker-guess-" + b"g" * 17


def _append(led: Ledger, n: int, action: str = "delete") -> list[int]:
    return [led.append(run=RunRef("retention_sweep", "r"), action=action, outcome="done", count=i, rule_id="crm.x.y")
            for i in range(n)]


def _broken_at(led: Ledger, seq: int, **kw) -> str:
    result = led.verify(record=False, **kw)
    assert not result.ok, str(result)
    assert result.first_broken_seq == seq, str(result)
    return result.problem


def _old_key(row: dict) -> str:
    return entry_hash(row, OLD)


@pytest.fixture
def rotated(db_url):
    """Entries 1-3 under k0, the rotation at 4 (chain hash under k0, co-signed by k1), 5-7 under k1."""
    engine = make_engine(db_url)
    _append(Ledger(engine, OLD_ONLY), 3)
    led = Ledger(engine, RING)
    assert led.rotate(run=RunRef("cli", "rotate-keys"), count=0, details={"key_id": "k1"}) == 4
    _append(led, 3)
    result = led.verify(record=False)
    assert result.ok and result.key_id == "k1", str(result)
    yield led
    engine.dispose()


# ---- item 1: the rotation is in the chain --------------------------------------------------------


def test_rotation_entry_is_sealed_by_the_old_key_and_co_signed_by_the_new(rotated):
    rows = _rows(rotated)
    rotation = rows[3]
    change = json.loads(rotation["details"])["key_change"]
    assert change["from"] == "k0" and change["to"] == "k1" and rotation["action"] == "rotate_keys"
    assert rotation["entry_hash"] == entry_hash(rotation, OLD)
    assert [r["entry_hash"] == entry_hash(r, OLD) for r in rows] == [True] * 4 + [False] * 3
    assert all(r["entry_hash"] == entry_hash(r, NEW) for r in rows[4:])
    # the old key's holders alone see a chain that moved on to a key they do not have
    assert "'k1', which is not in the key ring" in _broken_at(Ledger(rotated.engine, OLD_ONLY), 4)


def _forge_rotation(row: dict, how: str) -> None:
    details = json.loads(row["details"])
    if how == "drop-key-change":
        del details["key_change"]
    elif how == "proof-with-old-key":
        details["key_change"]["proof"] = hmac.new(OLD, b"whatever", hashlib.sha256).hexdigest()
    elif how == "edit-keep-proof":
        row["count"] = 99
    row["details"] = json.dumps(details, sort_keys=True)


@pytest.mark.parametrize("how", ["proof-with-old-key", "edit-keep-proof"])
def test_rewrite_from_the_rotation_on_with_the_old_key_is_found_at_the_rotation(rotated, how):
    rows = _rows(rotated)
    _forge_rotation(rows[3], how)
    _rechain_from(rotated, rows, 4, _old_key)  # rotation and everything after, rehashed under k0
    assert "without its co-signature under 'k1'" in _broken_at(rotated, 4)


def test_rewrite_after_the_rotation_with_the_old_key_is_found_at_the_first_rewritten_entry(rotated):
    rows = _rows(rotated)
    rows[5]["count"] = 0  # entry 6
    _rechain_from(rotated, rows, 6, _old_key)
    assert "retired key cannot append or rewrite after a rotation" in _broken_at(rotated, 6)


def test_rotation_dropped_and_everything_after_rewritten_with_the_old_key(rotated, tmp_path):
    """The rotation entry rewritten as a plain one under k0, and all after it: every hash is valid under k0,
    but the chain never reaches the current key. Without an anchor, verify cannot tell where the rewrite
    began: it names every entry since the last proven rotation (here all: 1). With an anchor written after
    the rotation, it is found at the anchor."""
    sink = DirectorySink(tmp_path)
    rotated.anchor(sink)  # head 7 (under k1), recorded by entry 8
    rows = _rows(rotated)
    _forge_rotation(rows[3], "drop-key-change")
    _rechain_from(rotated, rows, 4, _old_key)
    problem = _broken_at(rotated, 1)
    assert "entries 1-8 are under key 'k0', but the current key is 'k1'" in problem
    assert "differs from anchor" in _broken_at(rotated, 7, anchors=sink)


def test_cut_before_the_rotation_and_append_under_the_old_key(rotated):
    rows = _rows(rotated)
    with rotated.engine.begin() as conn:
        conn.execute(entries.delete().where(entries.c.seq > 3))
        conn.execute(head.update().values(seq=3, entry_hash=rows[2]["entry_hash"]))
    _append(Ledger(rotated.engine, OLD_ONLY), 4)  # a valid chain under k0 alone
    assert Ledger(rotated.engine, OLD_ONLY).verify(record=False).ok
    problem = _broken_at(rotated, 1)
    assert "current key is 'k1' and no rotation entry hands the chain over to it" in problem


def test_a_newer_key_without_a_rotation_entry_is_refused(db_url):
    engine = make_engine(db_url)
    _append(Ledger(engine, OLD_ONLY), 2)
    rows = _rows(Ledger(engine, RING))
    rows[1]["count"] = 7
    _rechain_from(Ledger(engine, RING), rows, 2, lambda row: entry_hash(row, NEW))  # k1 holder skips the rotation
    assert "no rotation entry hands it over" in _broken_at(Ledger(engine, RING), 2)
    engine.dispose()


def test_a_ledger_written_under_the_current_key_needs_no_rotation(db_url):
    engine = make_engine(db_url)
    led = Ledger(engine, RING)  # a new deployment on k1, k0 kept for old digests
    _append(led, 3)
    assert all(r["entry_hash"] == entry_hash(r, NEW) for r in _rows(led))
    result = led.verify(record=False)
    assert result.ok and result.key_id == "k1"
    assert Ledger(engine, KeyRing([("k1", NEW)])).verify(record=False).ok  # k0 is not needed for it
    engine.dispose()


_ops = st.lists(st.sampled_from(["append", "rotate"]), min_size=1, max_size=8)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=st.integers(1, 4), after=_ops, cut=st.integers(0, 20), extra=st.integers(0, 3))
def test_the_old_key_alone_never_makes_a_rotated_chain_verify(db_url, before, after, cut, extra):
    """Any history rotated to k1, then any rewrite of any suffix by a holder of k0 alone (entries rehashed
    under k0, the tail cut anywhere, k0 entries appended): verify never says OK under the ring."""
    engine = make_engine(db_url)
    Ledger(engine, RING).ensure_schema()
    with engine.begin() as conn:
        conn.execute(entries.delete())
        conn.execute(head.update().values(seq=0, entry_hash="0" * 64))
    _append(Ledger(engine, OLD_ONLY), before)
    led = Ledger(engine, RING)
    rotation = led.rotate(run=RunRef())
    for op in after:
        led.rotate(run=RunRef()) if op == "rotate" else _append(led, 1)
    assert led.verify(record=False).ok
    rows = _rows(led)
    first = rotation + cut % (len(rows) - rotation + 1)  # rewrite from the rotation or later
    for row in rows[first - 1:]:
        row["details"] = None  # what the old key's holder can write: no co-signed key change
    _rechain_from(led, rows, first, _old_key)
    _append(Ledger(engine, OLD_ONLY), extra)
    assert not led.verify(record=False).ok
    engine.dispose()


# ---- item 2: anchors ------------------------------------------------------------------------------


@pytest.fixture
def anchored(db_url, tmp_path):
    """Anchors of entries 5 and 10 in a directory; the ledger records them as entries 6 and 11; 13 entries."""
    led = Ledger(make_engine(db_url), OLD)
    sink = DirectorySink(tmp_path / "anchors")
    _append(led, 5)
    assert led.anchor(sink).seq == 5
    _append(led, 4)
    assert led.anchor(sink).seq == 10
    _append(led, 2)
    assert led.verify(record=False, anchors=sink).anchors_checked == 2
    yield led, sink
    led.engine.dispose()


def _file(sink: DirectorySink, seq: int):
    (path,) = sink.path.glob(f"{seq:015d}-*.json")
    return path


def _cut(led: Ledger, keep: int) -> None:
    last = _rows(led)[keep - 1]
    with led.engine.begin() as conn:
        conn.execute(entries.delete().where(entries.c.seq > keep))
        conn.execute(head.update().values(seq=keep, entry_hash=last["entry_hash"]))


def test_anchor_entries_record_sink_place_and_seq(anchored):
    led, sink = anchored
    recorded = [json.loads(r["details"]) for r in _rows(led) if r["action"] == "anchor"]
    assert [(r["seq"], r["sink"]) for r in recorded] == [(5, str(sink.path)), (10, str(sink.path))]
    assert [r["where"] for r in recorded] == [str(_file(sink, 5)), str(_file(sink, 10))]
    newest = Anchor.from_json(_file(sink, 10).read_bytes(), "x")
    assert newest.prev_seq == 5 and newest.prev_mac == recorded[0]["mac"] and newest.mac == recorded[1]["mac"]


@pytest.mark.parametrize("how", ["renamed-to-entry-7", "date-edited"])
def test_anchor_rewritten_without_the_key_is_named(anchored, how):
    led, sink = anchored
    path = _file(sink, 10)
    doc = json.loads(path.read_text())
    if how == "renamed-to-entry-7":  # the cut is hidden behind an anchor that now names entry 7
        doc.update(seq=7, entry_hash=_rows(led)[6]["entry_hash"])
        _cut(led, 7)
    else:
        doc["anchored_at"] = "2020-01-01T00:00:00Z"
    path.write_text(json.dumps(doc))
    seq = 7 if how == "renamed-to-entry-7" else 10
    problem = _broken_at(led, seq, anchors=sink)
    assert f"anchor {path} does not match its keyed hash" in problem


def test_anchor_rewritten_with_a_guessed_key_is_named(anchored):
    led, sink = anchored
    path = _file(sink, 10)
    forged = Anchor.from_json(path.read_bytes(), str(path)).signed("k0", WRONG)
    path.write_bytes(forged.to_json())
    assert "does not match its keyed hash" in _broken_at(led, 10, anchors=sink)


def test_newest_anchor_deleted_from_a_directory_the_chain_knows_of_is_named(anchored):
    led, sink = anchored
    path = _file(sink, 10)
    path.unlink()
    assert f"records the anchor of entry 10 at {path}, which is missing" in _broken_at(led, 11, anchors=sink)


def test_older_anchor_deleted_is_named_by_the_chain_and_by_the_next_anchor(anchored, tmp_path):
    led, sink = anchored
    moved = tmp_path / "moved"  # the anchors copied elsewhere: the chain's records name the old place only
    moved.mkdir()
    for f in sink.path.glob("*.json"):
        (moved / f.name).write_bytes(f.read_bytes())
    for place in (sink.path, moved):
        next(place.glob(f"{5:015d}-*.json")).unlink()
    assert f"records the anchor of entry 5 at {sink.path}/" in _broken_at(led, 6, anchors=sink)
    assert "follows an anchor of entry 5 that is missing" in _broken_at(led, 10, anchors=moved)


def test_newest_anchor_deleted_with_the_tail_is_the_directory_limit(anchored, monkeypatch):
    """Cut back to 7 and delete anchor 10: nothing left names it. The documented limit of a directory:
    verify says so, the CLI and the page with it (outside the demo)."""
    led, sink = anchored
    monkeypatch.delenv(ANCHORS_DEMO_ENV, raising=False)
    _file(sink, 10).unlink()
    _cut(led, 7)
    result = led.verify(record=False, anchors=sink)
    assert result.ok and result.anchors_checked == 1
    assert result.warnings == [DIRECTORY_LIMIT] and f"warning: {DIRECTORY_LIMIT}" in str(result)
    monkeypatch.setenv(ANCHORS_DEMO_ENV, "1")
    assert led.verify(record=False, anchors=sink).warnings == []
    assert led.verify(record=False).warnings == []  # no anchors given: the page says that on its own


def test_open_intent_deleted_and_head_moved_back_with_an_anchor_after_it(db_url, tmp_path):
    led = Ledger(make_engine(db_url), OLD)
    sink = DirectorySink(tmp_path)
    _append(led, 5)
    intent = led.intend(action="delete", count=3, rule_id="crm.x.y")  # 6: the change may have happened
    led.anchor(sink)  # head 6, recorded by entry 7
    assert led.verify(record=False, anchors=sink).unreconciled == [intent]
    _cut(led, 5)  # the intent and the anchor's record gone, head back to 5
    plain = led.verify(record=False)
    assert plain.ok and plain.unreconciled == []  # without anchors: a shorter, valid ledger
    problem = _broken_at(led, 6, anchors=sink)
    assert "entries after 5 were removed" in problem and "records entry 6" in problem


def test_read_anchors_is_the_sink_read_once(anchored, monkeypatch):
    led, sink = anchored
    monkeypatch.delenv(ANCHORS_DEMO_ENV, raising=False)
    snapshot = read_anchors(str(sink.path))
    assert snapshot.location() == str(sink.path) and len(snapshot.found) == 2
    _file(sink, 10).unlink()  # after the read: the snapshot still has it
    assert led.verify(record=False, anchors=snapshot).ok
    assert not led.verify(record=False, anchors=read_anchors(sink)).ok


# ---- S3 Object Lock (moto's server) --------------------------------------------------------------


@pytest.fixture
def s3(moto_url):
    return boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def locked(s3, db_url):
    """Anchors of 5 and 10 in an Object Lock bucket (COMPLIANCE), 13 entries."""
    bucket = f"anchors-lock-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    sink = S3Sink(s3, bucket, prefix="ledger/", retain_days=30)
    led = Ledger(make_engine(db_url), OLD)
    _append(led, 5)
    led.anchor(sink)
    _append(led, 4)
    newest = led.anchor(sink)
    _append(led, 2)
    result = led.verify(record=False, anchors=sink)
    assert result.ok and result.anchors_checked == 2 and result.warnings == []
    yield led, sink, newest.where.split("/", 3)[3]
    led.engine.dispose()


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_s3_object_lock_refuses_deleting_and_overwriting_the_newest_anchor(locked, s3):
    led, sink, key = locked
    (version,) = s3.list_object_versions(Bucket=sink.bucket, Prefix=key)["Versions"]
    original = s3.get_object(Bucket=sink.bucket, Key=key)["Body"].read()
    assert s3.head_object(Bucket=sink.bucket, Key=key)["ObjectLockMode"] == "COMPLIANCE"
    with pytest.raises(s3.exceptions.ClientError, match="AccessDenied"):
        s3.delete_object(Bucket=sink.bucket, Key=key, VersionId=version["VersionId"])
    # "overwriting" makes a newer version; a plain delete only hides the key behind a marker
    forged = json.dumps({**json.loads(original), "seq": 7}).encode()
    s3.put_object(Bucket=sink.bucket, Key=key, Body=forged, ContentMD5=content_md5(forged))
    s3.delete_object(Bucket=sink.bucket, Key=key)
    assert "Contents" not in s3.list_objects_v2(Bucket=sink.bucket, Prefix=key)
    kept = s3.get_object(Bucket=sink.bucket, Key=key, VersionId=version["VersionId"])["Body"].read()
    assert kept == original  # byte for byte
    # verify reads every version: the original still anchors entry 10, the version written over it is named
    problem = _broken_at(led, 7, anchors=sink)
    assert f"anchor s3://{sink.bucket}/{key}?versionId=" in problem and "does not match its keyed hash" in problem


@pytest.mark.parametrize("db_url", ["sqlite", "mariadb"], indirect=True)
def test_s3_newest_anchor_hidden_by_a_delete_marker_still_finds_the_cut(locked, s3):
    led, sink, key = locked
    s3.delete_object(Bucket=sink.bucket, Key=key)  # allowed: a delete marker, the locked version stays
    _cut(led, 7)
    problem = _broken_at(led, 8, anchors=sink)
    assert "entries after 7 were removed" in problem and key in problem


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_s3_bucket_without_object_lock_is_warned_of(ledger_plain_bucket):
    result, sink = ledger_plain_bucket
    assert result.ok and result.warnings and sink.bucket in result.warnings[0] and "Object Lock" in result.warnings[0]


@pytest.fixture
def ledger_plain_bucket(s3, db_url):
    bucket = f"anchors-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    sink = S3Sink(s3, bucket)
    led = Ledger(make_engine(db_url), OLD)
    _append(led, 2)
    led.anchor(sink)
    yield led.verify(record=False, anchors=sink), sink
    led.engine.dispose()


def test_anchor_of_a_rotated_chain_is_keyed_with_the_current_key(rotated, tmp_path):
    sink = DirectorySink(tmp_path)
    anchor = rotated.anchor(sink)
    assert anchor.kid == "k1" and anchor.mac_ok(NEW) and not anchor.mac_ok(OLD)
    assert rotated.verify(record=False, anchors=sink).anchors_checked == 1


def test_anchors_across_a_rotation(db_url, tmp_path):
    """An anchor under k0 before the rotation and one under k1 after: both checked, the second names the first;
    the k0 holder cannot re-make the k1 anchor."""
    engine = make_engine(db_url)
    sink = DirectorySink(tmp_path)
    _append(Ledger(engine, OLD_ONLY), 2)
    before = Ledger(engine, OLD_ONLY).anchor(sink)  # head 2, recorded by entry 3
    led = Ledger(engine, RING)
    led.rotate(run=RunRef())  # 4
    _append(led, 1)
    after = led.anchor(sink)  # head 5, recorded by entry 6
    assert (before.kid, after.kid) == ("k0", "k1") and (after.prev_seq, after.prev_mac) == (2, before.mac)
    result = led.verify(record=False, anchors=sink)
    assert result.ok and result.anchors_checked == 2, str(result)
    path = next(sink.path.glob(f"{5:015d}-*.json"))
    path.write_bytes(replace(Anchor.from_json(path.read_bytes(), str(path)), kid="k0").signed("k0", OLD).to_json())
    assert "records the anchor of entry 5" in _broken_at(led, 6, anchors=sink)  # valid k0 mac, not the recorded one
    engine.dispose()


def test_anchoring_while_others_append(db_url, tmp_path):
    """Anchors taken while writers append: every anchor is recorded right after the head it anchors, nothing is
    lost, and the chain verifies against all of them."""
    sink = DirectorySink(tmp_path)
    Ledger(make_engine(db_url), OLD).ensure_schema()

    def work(i: int) -> int:
        led = Ledger(make_engine(db_url), OLD)
        try:
            if i < 2:
                return len([led.anchor(sink, check=False) for _ in range(5)])
            return len(_append(led, 15))
        finally:
            led.engine.dispose()

    with ThreadPoolExecutor(5) as pool:
        done = list(pool.map(work, range(5)))
    assert done == [5, 5, 15, 15, 15]
    led = Ledger(make_engine(db_url), OLD)
    rows = _rows(led)
    recorded = [(r["seq"], json.loads(r["details"])["seq"]) for r in rows if r["action"] == "anchor"]
    assert len(rows) == 45 + 10 and len(recorded) == 10
    assert all(anchored == seq - 1 for seq, anchored in recorded)  # the head under the lock, recorded right after
    result = led.verify(record=False, anchors=sink)
    assert result.ok and result.anchors_checked == 10, str(result)
    led.engine.dispose()


def test_anchor_naming_a_key_outside_the_ring_is_named(anchored):
    led, sink = anchored
    path = _file(sink, 5)
    path.write_text(json.dumps({**json.loads(path.read_text()), "kid": "k9"}))
    assert "keyed with 'k9', which is not in the key ring" in _broken_at(led, 5, anchors=sink)


def test_head_table_untouched_by_a_failed_anchor_put(db_url, tmp_path):
    """The anchor entry is written in the transaction that put the anchor: a sink that fails writes no entry."""

    class Failing(DirectorySink):
        def put(self, anchor):
            raise OSError("disk full")

    led = Ledger(make_engine(db_url), OLD)
    _append(led, 2)
    with pytest.raises(OSError):
        led.anchor(Failing(tmp_path))
    with led.engine.connect() as conn:
        assert conn.execute(sa.select(head.c.seq)).scalar_one() == 2
    assert led.verify(record=False).ok
    led.engine.dispose()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(st.integers(1, 3), min_size=1, max_size=5), keep=st.integers(0, 30),
       deleted=st.sets(st.integers(0, 4)))
def test_a_cut_passes_only_when_every_anchor_naming_it_is_gone_with_its_record(db_url, tmp_path_factory, monkeypatch,
                                                                                plan, keep, deleted):
    """Any number of anchors between appends, any cut of the tail (head moved back), any anchor files deleted:
    verify passes exactly when no remaining entry records a deleted anchor and every anchor beyond the cut was
    deleted too (the directory's limit, which verify then states); otherwise it names the problem."""
    monkeypatch.delenv(ANCHORS_DEMO_ENV, raising=False)
    engine = make_engine(db_url)
    led = Ledger(engine, OLD)
    led.ensure_schema()
    _cut_all(led)
    sink = DirectorySink(tmp_path_factory.mktemp("anchors"))
    made = []  # (anchored seq, seq of the entry that records it)
    for n in plan:
        _append(led, n)
        made.append((led.anchor(sink, check=False).seq, led.current_head()[0]))
    _append(led, 1)
    total = led.current_head()[0]
    keep = keep % (total + 1)
    if keep < total:
        _cut(led, keep) if keep else _cut_all(led)
    gone = {i for i in deleted if i < len(made)}
    for i in gone:
        next(sink.path.glob(f"{made[i][0]:015d}-*.json")).unlink()
    should_pass = (all(recorded > keep for i, (_, recorded) in enumerate(made) if i in gone)
                   and all(i in gone for i, (seq, _) in enumerate(made) if seq > keep))
    result = led.verify(record=False, anchors=sink)
    assert result.ok == should_pass, (str(result), made, keep, gone)
    assert result.warnings == [DIRECTORY_LIMIT]
    engine.dispose()


def _cut_all(led: Ledger) -> None:
    with led.engine.begin() as conn:
        conn.execute(entries.delete())
        conn.execute(head.update().values(seq=0, entry_hash="0" * 64))


def test_a_second_witness_finds_the_cut_the_first_one_lost(db_url, tmp_path, monkeypatch, capsys):
    """`RETENTION_LEDGER_ANCHORS=A,B`: the CLI anchors at both (each recorded); a cut whose newest anchor and record
    were removed from A is still found by B."""
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_LEDGER",
                       json.dumps({"conn_type": "sqlite", "extra": {"sqlalchemy_url": db_url}}))
    monkeypatch.setenv("RETENTION_HMAC_KEY", OLD.decode())
    monkeypatch.delenv("RETENTION_HMAC_KEYS", raising=False)
    monkeypatch.delenv(ANCHORS_DEMO_ENV, raising=False)
    first, second = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("RETENTION_LEDGER_ANCHORS", f"{first}, {second}")
    led = Ledger(make_engine(db_url), OLD)
    _append(led, 5)
    assert cli.main(["verify", "--anchor"]) == 0
    out = capsys.readouterr().out
    assert f"anchored head 5 at {first}/" in out and f"anchored head 6 at {second}/" in out
    assert [json.loads(r["details"])["sink"] for r in _rows(led)[5:]] == [str(first), str(second)]
    _cut(led, 5)
    next(first.glob("*.json")).unlink()
    assert cli.main(["verify", "--anchors", str(first)]) == 0  # one directory alone: the limit, and it says so
    assert f"warning: {DIRECTORY_LIMIT}" in capsys.readouterr().out
    assert cli.main(["verify"]) == 1
    assert "BROKEN at entry 6: entries after 5 were removed" in capsys.readouterr().out
    with pytest.raises(RetentionError, match="names no place"):
        anchor_sinks(" , ")
    led.engine.dispose()
