"""Records inside S3 objects (CSV, gzipped JSON lines, Parquet), erased record by record in every version, over
moto's server via real HTTP, in plain, versioned and Object Lock buckets."""

from __future__ import annotations

import json
import zipfile

import pytest

from include.retention.requests.access import PackageBuilder
from include.retention.requests.scanner import SubjectScanner
from include.retention.stores.base import Subject
from include.retention.stores.s3_record_read import RecordsUnreadable
from tests.s3.conftest import LOCKED, PLAIN, VERSIONED, count_calls, put, s3_policy, snapshot, store_log, versions
from tests.s3.records_util import ZOE, body, decode, encode, expected_after, is_zoes, records

pytestmark = pytest.mark.integration

COLLS = {  # collection -> (format, gzip, key of the person's object, key of an object without them)
    "crm_export": ("csv", False, "crm/2026-05-01.csv", "crm/2026-05-02.csv"),
    "events": ("jsonl", True, "events/dt=2026-05-01/part-0.jsonl.gz", "events/dt=2026-05-02/part-0.jsonl.gz"),
    "tables": ("parquet", False, "tables/dt=2026-05-01/part-0.parquet", "tables/dt=2026-05-02/part-0.parquet"),
}
IDENTITIES = ('{email: ["record:email", {column: "record:referrer", erase: mask, '
              'mask: {strategy: redact, value: erased}}]}')


def policy_for(bucket: str):
    return s3_policy(f"""\
        crm_export:
          bucket: {bucket}
          key_template: "crm/{{yyyy}}-{{mm}}-{{dd}}.csv"
          format: csv
          identities: {IDENTITIES}
          legal_hold: [{{column: legal-hold, equals: "true"}}]
        events:
          bucket: {bucket}
          key_template: "events/dt={{yyyy}}-{{mm}}-{{dd}}/..."
          format: jsonl
          identities: {IDENTITIES}
        tables:
          bucket: {bucket}
          key_template: "tables/dt={{yyyy}}-{{mm}}-{{dd}}/..."
          format: parquet
          identities: {IDENTITIES}
        """)


def zoe() -> Subject:
    return Subject("r1", {"email": ZOE})


def arrange(s3, bucket: str, *, older: bool = False) -> dict[str, list[dict]]:
    """Each collection: the person's object and one without them; ``older``: the person's object has an older
    version holding them too, and the other one an older version without them. Returns key -> current records."""
    current = {}
    for name, (fmt, gz, theirs, other) in COLLS.items():
        extra = {"ContentEncoding": "gzip"} if gz and name == "events" else {}
        if older:
            put(s3, bucket, theirs, encode(fmt, records(3, seed=9), gz), **extra)
            put(s3, bucket, other, encode(fmt, records(2, zoe=False, seed=8), gz), **extra)
        current[theirs] = records(6, seed=1)
        current[other] = records(5, zoe=False, seed=2)
        put(s3, bucket, theirs, encode(fmt, current[theirs], gz), Tagging="source=crm", **extra)
        put(s3, bucket, other, encode(fmt, current[other], gz), **extra)
    return current


def fmt_of(key: str) -> tuple[str, bool]:
    for fmt, gz, theirs, other in COLLS.values():
        if key in (theirs, other):
            return fmt, gz
    raise KeyError(key)


def every_version(s3, bucket):
    """(key, version id, records) of every data version, each key's current version first."""
    listed = [v for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket)
              for v in page.get("Versions", []) if not v["Key"].startswith(".retention")]
    for v in sorted(listed, key=lambda v: (v["Key"], not v["IsLatest"])):
        fmt, gz = fmt_of(v["Key"])
        yield v["Key"], v["VersionId"], decode(fmt, body(s3, bucket, v["Key"], v["VersionId"]), gz)


@pytest.mark.parametrize("bucket", [PLAIN, VERSIONED, LOCKED])
def test_erasure_removes_exactly_their_records_from_every_version(s3, make_store, bucket):
    versioned = bucket != PLAIN
    current = arrange(s3, bucket, older=versioned)
    others = [k for _, _, theirs, _ in COLLS.values() for k in [theirs]]
    untouched = [row for row in snapshot(s3, bucket) if row[0] not in others]
    store = make_store(policy_for(bucket))
    scanner = SubjectScanner(store.policy, store)

    dry = scanner.act([zoe()], "erase", dry_run=True)
    per_object = {"deleted": 3, "masked": 1, "objects_rewritten": 1}
    if versioned:
        per_object["versions_deleted"] = 1
    assert dry.per_request["r1"] == {f"objects.{name}": per_object for name in COLLS}
    assert scanner.remaining([zoe()], "erase") == {"r1": {f"objects.{name}": 4 + (4 if versioned else 0)
                                                          for name in COLLS}}
    assert [row for row in snapshot(s3, bucket) if row[0] not in others] == untouched

    outcome = scanner.act([zoe()], "erase", dry_run=False)
    assert outcome.per_request["r1"] == dry.per_request["r1"]
    assert scanner.remaining([zoe()], "erase") == {}
    # exactly their records are gone, from every version; the record naming them is masked; nothing else changed
    seen = {}
    for key, _vid, recs in every_version(s3, bucket):
        assert not [r for r in recs if is_zoes(r) or ZOE in str(r.get("referrer"))]
        seen.setdefault(key, []).append(recs)
    for key, recs in current.items():
        assert seen[key][0] == expected_after(recs)  # the current version
    assert [len(v) for k, v in sorted(seen.items())] == [1 if k in others or not versioned else 2
                                                         for k in sorted(seen)]
    assert [row for row in snapshot(s3, bucket) if row[0] not in others] == untouched
    # tags and content encoding go along with the rewrite; no temporary key is left
    for _, gz, theirs, _ in COLLS.values():
        tagset = s3.get_object_tagging(Bucket=bucket, Key=theirs)["TagSet"]
        assert tagset == [{"Key": "source", "Value": "crm"}]
        if gz:
            assert s3.head_object(Bucket=bucket, Key=theirs).get("ContentEncoding") == "gzip"
    assert not [v for v in versions(s3, bucket) if v[0].startswith(".retention")]
    # a second run finds nothing
    again = scanner.act([zoe()], "erase", dry_run=False)
    assert again.per_request["r1"] == {}


@pytest.mark.parametrize("bucket", [PLAIN, VERSIONED])
def test_an_interrupted_rewrite_reruns_to_the_same_end(s3, make_store, bucket, monkeypatch):
    current = arrange(s3, bucket, older=bucket == VERSIONED)
    store = make_store(policy_for(bucket))
    scanner = SubjectScanner(store.policy, store)
    before = {(k, v): recs for k, v, recs in every_version(s3, bucket)}

    def killed(bucket_name, key):
        raise KeyboardInterrupt("killed between the write and the version deletes")

    monkeypatch.setattr(store.records, "before_old_versions_go", killed)
    with pytest.raises(KeyboardInterrupt):
        scanner.act([zoe()], "erase", dry_run=False)
    if bucket == PLAIN:  # the original is whole until the checked copy replaces it
        assert {(k, v): recs for k, v, recs in every_version(s3, bucket)} == before
        assert not [v for v in versions(s3, bucket) if v[0].startswith(".retention")]
    else:  # the checked new version is on top, every original version still below it
        assert set(before) <= {(k, v) for k, v, _ in every_version(s3, bucket)}
    assert scanner.remaining([zoe()], "erase")

    monkeypatch.undo()
    scanner.act([zoe()], "erase", dry_run=False)
    assert scanner.remaining([zoe()], "erase") == {}
    latest = {}
    for key, _vid, recs in every_version(s3, bucket):
        assert not [r for r in recs if is_zoes(r)]
        latest.setdefault(key, recs)
    for key, recs in current.items():
        assert latest[key] == expected_after(recs)
    assert not [v for v in versions(s3, bucket) if v[0].startswith(".retention")]


def test_held_objects_are_kept_as_exceptions(s3, make_store):
    current = arrange(s3, LOCKED)
    fmt, gz, theirs, _ = COLLS["tables"]
    held_version = s3.list_object_versions(Bucket=LOCKED, Prefix=theirs)["Versions"][0]["VersionId"]
    s3.put_object_legal_hold(Bucket=LOCKED, Key=theirs, LegalHold={"Status": "ON"})
    csv_key = COLLS["crm_export"][2]
    s3.put_object_tagging(Bucket=LOCKED, Key=csv_key, Tagging={"TagSet": [{"Key": "legal-hold", "Value": "true"}]})
    held_before = [row for row in snapshot(s3, LOCKED) if row[0] in (theirs, csv_key)]
    store = make_store(policy_for(LOCKED))
    scanner = SubjectScanner(store.policy, store)

    outcome = scanner.act([zoe()], "erase", dry_run=False)
    assert outcome.per_request["r1"] == {"objects.tables": {"exception:legal_hold": 4},
                                         "objects.crm_export": {"exception:legal_hold": 4},
                                         "objects.events": {"deleted": 3, "masked": 1, "objects_rewritten": 1}}
    assert [row for row in snapshot(s3, LOCKED) if row[0] in (theirs, csv_key)] == held_before
    assert decode(fmt, body(s3, LOCKED, theirs, held_version), gz) == current[theirs]
    assert scanner.remaining([zoe()], "erase") == {}  # what is left is listed as exceptions
    s3.put_object_legal_hold(Bucket=LOCKED, Key=theirs, LegalHold={"Status": "OFF"})


@pytest.mark.parametrize("bucket", [PLAIN, VERSIONED])
def test_restriction_locks_the_versions_holding_their_records(s3, make_store, bucket):
    arrange(s3, bucket)
    store = make_store(policy_for(bucket))
    scanner = SubjectScanner(store.policy, store)
    assert scanner.remaining([zoe()], "restrict") == {"r1": {f"objects.{n}": 4 for n in COLLS}}
    outcome = scanner.act([zoe()], "restrict", dry_run=False)
    # each object's one version is locked whole: the 10 records of other people in it are restricted too
    assert outcome.per_request["r1"] == {f"objects.{n}": {"restricted": 4, "objects_locked": 1, "others_restricted": 10}
                                         for n in COLLS}
    assert scanner.remaining([zoe()], "restrict") == {}
    for _, _, theirs, other in COLLS.values():
        assert "retention-lock" in {t["Key"] for t in s3.get_object_tagging(Bucket=bucket, Key=theirs)["TagSet"]}
        assert "retention-lock" not in {t["Key"] for t in s3.get_object_tagging(Bucket=bucket, Key=other)["TagSet"]}
    # a later erasure of the same person lifts their own restriction and removes the records
    outcome = scanner.act([zoe()], "erase", dry_run=False)
    assert outcome.per_request["r1"]["objects.events"]["deleted"] == 3
    assert scanner.remaining([zoe()], "erase") == {}


def test_an_unreadable_object_stops_the_request_and_changes_nothing(s3, make_store):
    arrange(s3, VERSIONED)
    put(s3, VERSIONED, "events/dt=2026-05-03/part-0.jsonl.gz", b"not gzip at all")
    before = snapshot(s3, VERSIONED)
    store = make_store(policy_for(VERSIONED))
    scanner = SubjectScanner(store.policy, store)
    with pytest.raises(RecordsUnreadable, match="cannot be read as jsonl: the object is not valid gzip") as info:
        scanner.act([zoe()], "erase", dry_run=False)
    assert "zo" not in str(info.value).lower() and "events/" not in str(info.value)
    # collections handled before it are done (a retry finds them clean); the collection holding it is untouched
    assert [r for r in snapshot(s3, VERSIONED) if r[0].startswith("events/")] == [
        r for r in before if r[0].startswith("events/")]


@pytest.mark.parametrize("fmt_name", ["human", "portable"])
def test_an_access_package_holds_their_records_and_no_one_elses(s3, make_store, fmt_name):
    current = arrange(s3, PLAIN)
    store = make_store(policy_for(PLAIN))
    builder = PackageBuilder(store.policy, lambda _system: store, [zoe()], request_id="a1", fmt=fmt_name)
    try:
        result = builder.build()
        with zipfile.ZipFile(result.path) as zf:
            names = zf.namelist()
            assert not [n for n in names if n.startswith("objects/")]  # the objects hold other people's records
            for name, (_fmt, _gz, theirs, _other) in COLLS.items():
                rows = json.loads(zf.read(f"data/objects.{name}.json"))
                assert {r["key"] for r in rows} == {theirs}
                got = [json.loads(r["content"]) for r in rows]
                assert got == [r for r in current[theirs] if is_zoes(r) or r["referrer"] == ZOE]
            if fmt_name == "human":
                text = zf.read("data/objects.events.csv").decode("utf-8")
                assert text.splitlines()[0] == "key,version_id,content" and "person1.0" not in text
            manifest = json.loads(zf.read("manifest.json"))
            assert manifest["systems"]["objects"]["collections"]["objects.tables"]["rows"] == 4
    finally:
        builder.close()


CSV_EDGES = (
    "\ufeffemail,note,amount\r\n"
    "a@example.org,\"a, quoted\r\nnote\",1\r\n"
    "\"ZOË@example.org\",\"their \"\"own\"\" line\nspanning lines\",2\r\n"
    "\r\n"
    "zoë+news@example.org,plus-addressed: somebody else,3\r\n"
    f"{ZOE},last line without an ending,4"
).encode()


@pytest.mark.parametrize("bucket", [PLAIN, VERSIONED])
def test_csv_rows_that_stay_are_copied_byte_for_byte(s3, make_store, bucket):
    put(s3, bucket, "crm/2026-05-03.csv", CSV_EDGES)
    store = make_store(policy_for(bucket))
    outcome = SubjectScanner(store.policy, store).act([zoe()], "erase", dry_run=False)
    assert outcome.per_request["r1"] == {"objects.crm_export": {"deleted": 2, "objects_rewritten": 1}}
    assert body(s3, bucket, "crm/2026-05-03.csv") == (
        "\ufeffemail,note,amount\r\n"
        "a@example.org,\"a, quoted\r\nnote\",1\r\n"
        "\r\n"
        "zoë+news@example.org,plus-addressed: somebody else,3\r\n").encode("utf-8")
    assert [k for k, _, _ in versions(s3, bucket) if k.startswith("crm/")] == ["crm/2026-05-03.csv"]


@pytest.mark.parametrize("name", list(COLLS))
def test_an_object_of_only_their_records_stays_as_an_empty_object_of_its_format(s3, make_store, name):
    fmt, gz, theirs, _ = COLLS[name]
    mine = [r for r in records(0) if is_zoes(r)]
    put(s3, VERSIONED, theirs, encode(fmt, mine, gz))
    store = make_store(policy_for(VERSIONED))
    scanner = SubjectScanner(store.policy, store)
    outcome = scanner.act([zoe()], "erase", dry_run=False)
    assert outcome.per_request["r1"] == {f"objects.{name}": {"deleted": 3, "objects_rewritten": 1}}
    assert decode(fmt, body(s3, VERSIONED, theirs), gz) == []
    assert len([v for v in versions(s3, VERSIONED) if v[0] == theirs]) == 1
    assert scanner.remaining([zoe()], "erase") == {}


def test_the_receipt_counts_records_per_collection(s3, make_store):
    import datetime as dt

    from include.retention.requests.receipts import build_receipt, render_markdown

    arrange(s3, VERSIONED, older=True)
    store = make_store(policy_for(VERSIONED))
    outcome = SubjectScanner(store.policy, store).act([zoe()], "erase", dry_run=False)
    now = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    request = {"request_id": "r1", "mode": "erase", "dry_run": False, "status": "complete", "received_at": now,
               "due_at": now + dt.timedelta(days=30), "completed_at": now}
    counts = {"collections": outcome.per_request["r1"], "removed_along": outcome.totals}
    receipt = build_receipt(request, {"objects": {"status": "recorded", "counts": counts}}, ["objects"],
                            store.policy.digest, policy=store.policy)
    text = render_markdown(receipt)
    lines = sorted(line for line in text.splitlines() if line.startswith("| objects |"))
    assert lines == [f"| objects | recorded | objects.{name} | deleted 3 records inside 1 object(s), rewritten; "
                     "masked 1; versions_deleted 1 |"
                     for name in sorted(COLLS)]
    assert receipt["systems"]["objects"]["records_left"] == {f"objects.{name}": 3 for name in COLLS}
    assert "@" not in text and "zo" not in text.lower()


@pytest.mark.parametrize("bucket", [PLAIN, VERSIONED])
def test_a_rewrite_that_does_not_check_out_is_undone(s3, make_store, bucket, monkeypatch):
    from include.retention.stores import s3_record_store
    from include.retention.stores.s3_records import RewriteNotVerified

    arrange(s3, bucket)
    before = snapshot(s3, bucket)
    real = s3_record_store.write_version

    def one_more_gone(reader, decide, sink, key):  # a faulty writer: leaves out a record nobody claimed
        return real(reader, _Dropping(decide), sink, key)

    monkeypatch.setattr(s3_record_store, "write_version", one_more_gone)
    store = make_store(policy_for(bucket))
    with pytest.raises(RewriteNotVerified, match="did not check out: .*records read back"):
        SubjectScanner(store.policy, store).act([zoe()], "erase", dry_run=False)
    assert snapshot(s3, bucket) == before  # the original stays, the new version / temporary key is gone


class _Dropping:
    """Wraps a judge: also drops one record of somebody else, but does not count it (a faulty rewrite)."""

    def __init__(self, decide):
        self.decide = decide

    def fields(self):
        return self.decide.fields()

    def __call__(self, record):
        from include.retention.stores.s3_records import Verdict

        verdict = self.decide(record)
        if verdict is None and isinstance(record, dict) and record.get("email") == "person1.0@example.org":
            return Verdict(set(), True)  # dropped, counted for no one
        return verdict


def test_a_version_written_meanwhile_is_not_hidden(s3, make_store, monkeypatch):
    from include.retention.errors import StoreUnavailable
    from include.retention.stores import s3_record_store

    arrange(s3, VERSIONED)
    fmt, gz, theirs, _ = COLLS["events"]
    newer = encode(fmt, records(2, zoe=False, seed=7), gz)
    real = s3_record_store.write_version

    def meanwhile(reader, decide, sink, key):
        out = real(reader, decide, sink, key)
        if reader.obj.key == theirs:
            put(s3, VERSIONED, theirs, newer, ContentEncoding="gzip")  # somebody's export lands now
        return out

    monkeypatch.setattr(s3_record_store, "write_version", meanwhile)
    store = make_store(policy_for(VERSIONED))
    with pytest.raises(StoreUnavailable, match="changed while it was rewritten"):
        SubjectScanner(store.policy, store).act([zoe()], "erase", dry_run=False)
    assert body(s3, VERSIONED, theirs) == newer  # theirs is current again; ours went
    assert len([v for v in versions(s3, VERSIONED) if v[0] == theirs]) == 2  # the original and theirs


def test_several_requests_at_once_are_counted_apart(s3, make_store):
    current = arrange(s3, PLAIN)
    store = make_store(policy_for(PLAIN))
    other = Subject("r2", {"email": "person1.0@example.org"})
    outcome = SubjectScanner(store.policy, store).act([zoe(), other], "erase", dry_run=False)
    assert outcome.per_request["r1"] == {f"objects.{n}": {"deleted": 3, "masked": 1, "objects_rewritten": 1}
                                         for n in COLLS}
    assert outcome.per_request["r2"] == {f"objects.{n}": {"deleted": 1, "objects_rewritten": 1} for n in COLLS}
    for fmt, gz, theirs, _ in COLLS.values():
        assert decode(fmt, body(s3, PLAIN, theirs), gz) == [
            r for r in expected_after(current[theirs]) if r["email"] != "person1.0@example.org"]


@pytest.mark.parametrize("bucket", [VERSIONED, PLAIN])
def test_a_rewrite_larger_than_a_part_goes_up_in_parts(s3, make_store, bucket):
    key = "events/dt=2026-05-04/part-0.jsonl"
    recs = [{"email": ZOE if i % 997 == 0 else f"p{i}@example.org", "pad": f"{i:08d}" * 40} for i in range(20000)]
    lines = [json.dumps(r).encode() + b"\n" for r in recs]
    put(s3, bucket, key, b"".join(lines))  # 6.7 MB
    store = make_store(policy_for(bucket), part_size=5 * 1024 * 1024)
    calls = count_calls(store)
    outcome = SubjectScanner(store.policy, store).act([zoe()], "erase", dry_run=False)
    assert outcome.per_request["r1"] == {"objects.events": {"deleted": 21, "objects_rewritten": 1}}
    assert calls["UploadPart"] == 2 and calls["CompleteMultipartUpload"] == 1
    assert body(s3, bucket, key) == b"".join(line for line, r in zip(lines, recs, strict=True) if r["email"] != ZOE)
    assert len([v for v in versions(s3, bucket) if v[0] == key]) == 1


def test_objects_without_the_identity_fields_are_named_in_a_warning(s3, make_store, caplog):
    put(s3, PLAIN, "crm/2026-05-05.csv", f"mail,amount\r\n{ZOE},1\r\n".encode())
    put(s3, PLAIN, "tables/dt=2026-05-05/part-0.parquet", encode("parquet", records(2)))
    store = make_store(policy_for(PLAIN))
    with caplog.at_level("WARNING"):
        outcome = SubjectScanner(store.policy, store).act([zoe()], "erase", dry_run=True)
    assert outcome.per_request["r1"] == {"objects.tables": {"deleted": 3, "masked": 1, "objects_rewritten": 1}}
    assert ("objects.crm_export: 1 object version(s) of plain-bucket have none of the identity fields email, "
            "referrer in their header: nobody can be found in them") in store_log(caplog)
    assert "zo" not in store_log(caplog).lower()


NEW = "zoe.new@example.org"


def correct(store, new: str):
    from include.retention.requests.correction import Correction

    c = Correction(store.policy, lambda _s: store, ["objects"], [zoe()], {"email": new})
    c.check()
    return c, c.apply("objects", dry_run=False).per_request.get("r1", {})


@pytest.mark.parametrize("bucket", [PLAIN, VERSIONED])
def test_a_correction_rewrites_their_fields_in_place(s3, make_store, bucket):
    current = arrange(s3, bucket, older=bucket == VERSIONED)
    untouched = [row for row in snapshot(s3, bucket) if row[0] not in [c[2] for c in COLLS.values()]]
    store = make_store(policy_for(bucket))
    c, counts = correct(store, NEW)
    per = {"rectified": 4, "objects_rewritten": 1, **({"versions_deleted": 1} if bucket == VERSIONED else {})}
    assert counts == {f"objects.{n}": per for n in COLLS}
    assert c.remaining("objects") == 0
    for fmt, gz, theirs, _ in COLLS.values():
        want = [{**r, "email": NEW if is_zoes(r) else r["email"], "referrer": NEW if r["referrer"] == ZOE
                 else r["referrer"]} for r in current[theirs]]
        assert decode(fmt, body(s3, bucket, theirs), gz) == want
        assert len([v for v in versions(s3, bucket) if v[0] == theirs]) == 1
    assert [row for row in snapshot(s3, bucket) if row[0] not in [c[2] for c in COLLS.values()]] == untouched


def test_a_correction_to_somebody_elses_address_in_the_same_object_is_refused(s3, make_store):
    from include.retention.requests.correction import CorrectionRefused

    arrange(s3, VERSIONED)
    before = snapshot(s3, VERSIONED)
    store = make_store(policy_for(VERSIONED))
    with pytest.raises(CorrectionRefused, match="objects.crm_export: the new email is already an identity of "
                                                "records that are not this person's") as info:
        correct(store, "Person1.0@example.org")  # a record next to theirs in each object
    assert "person1" not in str(info.value).lower() and "zo" not in str(info.value).lower()
    assert snapshot(s3, VERSIONED) == before


def test_gzip_by_content_encoding_and_of_several_members(s3, make_store):
    import gzip

    key = "events/dt=2026-05-06/part-0.jsonl"  # no .gz: Content-Encoding says gzip
    first, second = records(3, seed=3), records(2, zoe=False, seed=4)
    data = encode("jsonl", first, gz=True) + encode("jsonl", second, gz=True)  # `cat a.gz b.gz`
    put(s3, VERSIONED, key, data, ContentEncoding="gzip", ContentType="application/x-ndjson")
    store = make_store(policy_for(VERSIONED))
    outcome = SubjectScanner(store.policy, store).act([zoe()], "erase", dry_run=False)
    assert outcome.per_request["r1"] == {"objects.events": {"deleted": 3, "masked": 1, "objects_rewritten": 1}}
    head = s3.head_object(Bucket=VERSIONED, Key=key)
    assert (head["ContentEncoding"], head["ContentType"]) == ("gzip", "application/x-ndjson")
    assert decode("jsonl", gzip.decompress(body(s3, VERSIONED, key))) == expected_after(first + second)


def test_parquet_types_and_other_strategies_survive(s3, make_store):
    import datetime as dt
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from include.retention.masking import keyed_digest
    from tests.s3.conftest import KEY as STORE_KEY

    schema = pa.schema([("email", pa.string()), ("referrer", pa.string()), ("amount", pa.int64()),
                        ("at", pa.timestamp("ms", tz="UTC")), ("score", pa.float64()), ("tags", pa.list_(pa.string()))],
                       metadata={b"origin": b"crm-export"})
    at = dt.datetime(2026, 5, 1, 12, tzinfo=dt.UTC)
    rows = [{"email": e, "referrer": r, "amount": i, "at": at, "score": i / 3, "tags": [str(i)] * (i % 3)}
            for i, (e, r) in enumerate([("a@example.org", None), (ZOE, None), ("b@example.org", ZOE.upper()),
                                        (None, None), ("c@example.org", "d@example.org")])]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf, row_group_size=2, compression="snappy")
    key = "tables/dt=2026-05-07/part-0.parquet"
    put(s3, PLAIN, key, buf.getvalue())
    policy = s3_policy(f"""\
        tables:
          bucket: {PLAIN}
          key_template: "tables/dt={{yyyy}}-{{mm}}-{{dd}}/..."
          format: parquet
          identities: {{email: ["record:email", {{column: "record:referrer", erase: mask, mask: {{strategy: hmac}}}}]}}
        """)
    store = make_store(policy)
    outcome = SubjectScanner(store.policy, store).act([zoe()], "erase", dry_run=False)
    assert outcome.per_request["r1"] == {"objects.tables": {"deleted": 1, "masked": 1, "objects_rewritten": 1}}
    table = pq.read_table(io.BytesIO(body(s3, PLAIN, key)))
    assert table.schema.equals(pq.read_schema(io.BytesIO(buf.getvalue())), check_metadata=True)  # as written
    want = [rows[0], {**rows[2], "referrer": keyed_digest(STORE_KEY, ZOE.upper())}, rows[3], rows[4]]
    assert table.to_pylist() == want
    meta = pq.ParquetFile(io.BytesIO(body(s3, PLAIN, key))).metadata
    assert meta.row_group(0).column(0).compression == "SNAPPY"
