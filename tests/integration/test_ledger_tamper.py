"""A hostile user with write access to the ledger database (but not the key) against ``verify``.

Every case is reported at the first bad sequence number. Rewrites by someone who HAS the key, and
a truncated tail with a moved head, only anchors outside the database can reveal: tested with a
directory sink and with S3 (moto's server; a plain and an Object Lock bucket).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable

import boto3
import pytest
import sqlalchemy as sa

from include.retention.errors import LedgerBroken, RetentionError
from include.retention.ledger import (
    GENESIS,
    HASHED_FIELDS,
    DirectorySink,
    Ledger,
    RunRef,
    S3Sink,
    anchor_sink,
    entries,
    entry_hash,
    head,
)
from include.retention.stores.sql import make_engine
from tests.conftest import KEY

pytestmark = pytest.mark.integration

N = 10
WRONG_KEY = b"attacker-guess-" + b"g" * 17


@pytest.fixture
def ledger(db_url):
    led = Ledger(make_engine(db_url), KEY)
    for i in range(1, N + 1):
        led.append(run=RunRef("retention_sweep", "r1"), action="delete", outcome="done", count=i,
                   rule_id="crm.x.y", pk_digest=led.pk_digest([i]))
    assert led.verify(record=False).ok
    yield led
    led.engine.dispose()


def _rows(led: Ledger) -> list[dict]:
    return list(led.rows())


def _rewrite(led: Ledger, rows: list[dict], hasher: Callable[[dict], str], move_head: bool = True) -> None:
    """Write ``rows`` (already renumbered) back over the whole table, re-chained with ``hasher``."""
    prev = GENESIS
    for row in rows:
        row["prev_hash"] = prev
        row["entry_hash"] = prev = hasher(row)
    with led.engine.begin() as conn:
        conn.execute(entries.delete())
        for row in rows:
            conn.execute(entries.insert().values(**row))
        if move_head:
            last = rows[-1] if rows else {"seq": 0, "entry_hash": GENESIS}
            conn.execute(head.update().values(seq=last["seq"], entry_hash=last["entry_hash"]))


def _plain_sha256(row: dict) -> str:
    """The attacker recomputes with the old, unkeyed format."""
    import hashlib

    return hashlib.sha256(json.dumps({k: row.get(k) for k in HASHED_FIELDS}, sort_keys=True,
                                     separators=(",", ":")).encode()).hexdigest()


def _guessed_key(row: dict) -> str:
    return entry_hash(row, WRONG_KEY)


def _with_key(row: dict) -> str:
    return entry_hash(row, KEY)


def _broken_at(led: Ledger, seq: int, **kw) -> str:
    result = led.verify(record=False, **kw)
    assert not result.ok, str(result)
    assert result.first_broken_seq == seq, str(result)
    assert f"BROKEN at entry {seq}" in str(result)
    return result.problem


# ---- without anchors: the key alone catches these ------------------------------------------------


def test_edit_is_found(ledger):
    with ledger.engine.begin() as conn:
        conn.execute(entries.update().where(entries.c.seq == 4).values(count=0))
    assert "keyed hash" in _broken_at(ledger, 4)


@pytest.mark.parametrize("hasher", [_plain_sha256, _guessed_key], ids=["plain-sha256", "guessed-key"])
def test_edit_and_rehash_everything_without_the_key_is_found(ledger, hasher):
    rows = _rows(ledger)
    rows[3]["count"] = 0  # entry 4
    _rewrite(ledger, rows, hasher)
    assert "keyed hash" in _broken_at(ledger, 1)  # every entry was rehashed: the first one is already wrong


def test_edit_and_rehash_from_the_edit_on_is_found_at_the_edit(ledger):
    rows = _rows(ledger)
    rows[3]["count"] = 0
    _rechain_from(ledger, rows, 4, _guessed_key)
    _broken_at(ledger, 4)


def test_delete_is_found(ledger):
    with ledger.engine.begin() as conn:
        conn.execute(entries.delete().where(entries.c.seq == 4))
    assert "missing" in _broken_at(ledger, 4)


def _rechain_from(led: Ledger, rows: list[dict], first: int, hasher: Callable[[dict], str]) -> None:
    """Replace entries ``first``.. by ``rows[first - 1:]`` chained after the untouched prefix; move the head."""
    prev = rows[first - 2]["entry_hash"] if first > 1 else GENESIS
    for row in rows[first - 1:]:
        row["prev_hash"] = prev
        row["entry_hash"] = prev = hasher(row)
    with led.engine.begin() as conn:
        conn.execute(entries.delete().where(entries.c.seq >= first))
        for row in rows[first - 1:]:
            conn.execute(entries.insert().values(**row))
        conn.execute(head.update().values(seq=rows[-1]["seq"], entry_hash=prev))


@pytest.mark.parametrize("from_start", [True, False], ids=["rehash-all", "rehash-from-gap"])
def test_delete_renumber_rehash_is_found(ledger, from_start):
    rows = [r for r in _rows(ledger) if r["seq"] != 4]
    for new_seq, row in enumerate(rows, start=1):
        row["seq"] = new_seq
    _rechain_from(ledger, rows, 1 if from_start else 4, _guessed_key)
    _broken_at(ledger, 1 if from_start else 4)


def test_reorder_is_found(ledger):
    with ledger.engine.begin() as conn:  # swap entries 4 and 5 by their sequence numbers
        conn.execute(entries.update().where(entries.c.seq == 4).values(seq=-4))
        conn.execute(entries.update().where(entries.c.seq == 5).values(seq=4))
        conn.execute(entries.update().where(entries.c.seq == -4).values(seq=5))
    _broken_at(ledger, 4)


def test_reorder_and_rehash_without_the_key_is_found(ledger):
    rows = _rows(ledger)
    rows[3], rows[4] = rows[4], rows[3]
    rows[3]["seq"], rows[4]["seq"] = 4, 5
    _rechain_from(ledger, rows, 4, _plain_sha256)
    _broken_at(ledger, 4)


def test_insert_in_the_middle_is_found(ledger):
    rows = _rows(ledger)
    forged = {**rows[4], "action": "lock", "count": 1}
    rows = rows[:4] + [forged] + [dict(r) for r in rows[4:]]
    for new_seq, row in enumerate(rows, start=1):
        row["seq"] = new_seq
    _rechain_from(ledger, rows, 5, _guessed_key)
    _broken_at(ledger, 5)


def test_insert_at_the_end_with_moved_head_is_found(ledger):
    last = _rows(ledger)[-1]
    forged = {**last, "seq": N + 1, "count": 0, "prev_hash": last["entry_hash"]}
    forged["entry_hash"] = _plain_sha256(forged)
    with ledger.engine.begin() as conn:
        conn.execute(entries.insert().values(**forged))
        conn.execute(head.update().values(seq=N + 1, entry_hash=forged["entry_hash"]))
    _broken_at(ledger, N + 1)


def test_insert_at_the_end_without_moving_the_head_is_found(ledger):
    last = _rows(ledger)[-1]
    forged = {**last, "seq": N + 1, "prev_hash": last["entry_hash"]}
    forged["entry_hash"] = _with_key(forged)  # even with the key: the head disagrees
    with ledger.engine.begin() as conn:
        conn.execute(entries.insert().values(**forged))
    assert "behind its back" in _broken_at(ledger, N + 1)


def test_insert_before_the_first_entry_is_found(ledger):
    first = _rows(ledger)[0]
    with ledger.engine.begin() as conn:
        conn.execute(entries.insert().values(**{**first, "seq": 0}))
    _broken_at(ledger, 0)


def test_truncate_without_moving_the_head_is_found(ledger):
    with ledger.engine.begin() as conn:
        conn.execute(entries.delete().where(entries.c.seq >= 8))
    assert "removed" in _broken_at(ledger, 8)


def test_head_edited_is_found(ledger):
    with ledger.engine.begin() as conn:
        conn.execute(head.update().values(entry_hash="f" * 64))
    _broken_at(ledger, N)


# ---- anchors: truncation with a moved head, rewrites with the key ---------------------------------


def _truncate_and_move_head(led: Ledger, keep: int) -> None:
    last = _rows(led)[keep - 1] if keep else {"seq": 0, "entry_hash": GENESIS}
    with led.engine.begin() as conn:
        conn.execute(entries.delete().where(entries.c.seq > keep))
        conn.execute(head.update().values(seq=last["seq"], entry_hash=last["entry_hash"]))


def test_truncate_and_move_head_passes_without_anchors_and_is_found_with_them(ledger, tmp_path):
    sink = DirectorySink(tmp_path / "anchors")
    first = ledger.anchor(sink)
    assert first.seq == N and first.where.endswith(".json")
    _truncate_and_move_head(ledger, 7)
    assert ledger.verify(record=False).ok  # the limit of a chain whose head lives in the same database
    assert "anchor" in _broken_at(ledger, 8, anchors=sink)
    _truncate_and_move_head(ledger, 0)  # everything gone
    _broken_at(ledger, 1, anchors=tmp_path / "anchors")


def test_rewrite_with_the_key_is_found_at_the_next_anchor(ledger, tmp_path):
    """An insider with the key can rehash; the anchors written before bound where (entry 6 here)."""
    sink = DirectorySink(tmp_path)
    with ledger.engine.begin() as conn:
        conn.execute(entries.delete().where(entries.c.seq > 6))
        conn.execute(head.update().values(seq=6, entry_hash=_rows(ledger)[5]["entry_hash"]))
    ledger.anchor(sink)  # head 6
    rows = _rows(ledger)
    rows[2]["count"] = 0  # entry 3
    _rewrite(ledger, rows, _with_key)
    assert ledger.verify(record=False).ok  # with the key, the chain itself is consistent
    assert "differs from anchor" in _broken_at(ledger, 6, anchors=sink)


def test_anchor_refuses_a_broken_ledger(ledger, tmp_path):
    with ledger.engine.begin() as conn:
        conn.execute(entries.update().where(entries.c.seq == 2).values(count=0))
    with pytest.raises(LedgerBroken, match="entry 2"):
        ledger.anchor(tmp_path / "anchors")
    assert not (tmp_path / "anchors").exists()


def test_many_anchors_all_checked(ledger, tmp_path):
    sink = anchor_sink(str(tmp_path / "a"))
    ledger.anchor(sink)
    ledger.append(run=RunRef(), action="lock", outcome="done", count=1)
    ledger.anchor(sink)
    result = ledger.verify(record=False, anchors=[sink])
    assert result.ok and result.anchors_checked == 2 and "2 anchor(s) match" in str(result)
    first, second = (json.loads(f.read_text()) for f in sorted((tmp_path / "a").iterdir()))
    assert set(first) == {"format", "seq", "entry_hash", "anchored_at", "kid", "prev", "mac"}
    assert first["seq"] == N and first["prev"] is None and first["kid"] == "k0"
    # the anchor entry (N + 1) and the append (N + 2) came after the first anchor; the second names the first
    assert second["seq"] == N + 2 and second["prev"] == {"seq": N, "mac": first["mac"]}


def test_empty_ledger_anchor(db_url, tmp_path):
    led = Ledger(make_engine(db_url), KEY)
    anchor = led.anchor(tmp_path)
    assert anchor.seq == 0 and anchor.entry_hash == GENESIS
    result = led.verify(record=False, anchors=tmp_path)
    assert result.ok and result.anchors_checked == 1
    led.engine.dispose()


def test_verify_needs_the_key(ledger):
    with pytest.raises(RetentionError, match="HMAC key"):
        Ledger(ledger.engine, b"").verify(record=False)
    other = Ledger(ledger.engine, WRONG_KEY).verify(record=False)
    assert not other.ok and other.first_broken_seq == 1


# ---- S3 anchors (moto's server) ---------------------------------------------------------------


@pytest.fixture
def s3(moto_url):
    return boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_s3_anchor_in_plain_bucket(ledger, s3):
    bucket = f"anchors-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    sink = S3Sink(s3, bucket, prefix="ledger/")
    anchor = ledger.anchor(sink)
    assert anchor.where == f"s3://{bucket}/ledger/{anchor.name()}"
    assert not sink.object_lock()
    assert ledger.verify(record=False, anchors=sink).anchors_checked == 1
    _truncate_and_move_head(ledger, 5)
    _broken_at(ledger, 6, anchors=sink)


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_s3_anchor_in_object_lock_bucket_is_compliance_locked(ledger, s3):
    bucket = f"anchors-lock-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    sink = S3Sink(s3, bucket, retain_days=30)
    anchor = ledger.anchor(sink)
    assert sink.object_lock()
    key = anchor.where.split("/", 3)[3]
    meta = s3.head_object(Bucket=bucket, Key=key)
    assert meta["ObjectLockMode"] == "COMPLIANCE"
    until = meta["ObjectLockRetainUntilDate"]
    assert dt.timedelta(days=29) < until - dt.datetime.now(dt.UTC) <= dt.timedelta(days=30)
    # the attacker cannot remove the anchor's version (compliance mode) ...
    with pytest.raises(s3.exceptions.ClientError):
        s3.delete_object(Bucket=bucket, Key=key, VersionId=meta["VersionId"])
    # (real S3 also refuses to shorten a COMPLIANCE retention; moto 5.2 does not enforce that part)
    _truncate_and_move_head(ledger, 3)
    _broken_at(ledger, 4, anchors=anchor_sink(f"s3://{bucket}/ledger-anchors", s3_client=s3))


def test_s3_location_parsing(s3):
    sink = anchor_sink("s3://bucket/some/prefix", s3_client=s3)
    assert isinstance(sink, S3Sink) and sink.bucket == "bucket" and sink.prefix == "some/prefix/"
    with pytest.raises(RetentionError, match="no bucket"):
        anchor_sink("s3:///x", s3_client=s3)
    assert isinstance(anchor_sink("/tmp/somewhere"), DirectorySink)


def test_unreadable_anchor_is_an_error_not_a_pass(ledger, tmp_path):
    (tmp_path / "000000000000001-bad.json").write_text("{not json")
    with pytest.raises(LedgerBroken, match="not a ledger anchor"):
        ledger.verify(record=False, anchors=tmp_path)
    assert sa.inspect(ledger.engine).has_table("ledger_entries")
