"""Objects owned by a batch of deleted rows are found with a bounded number of listings, not one per row.

Each test arranges owned objects among neighbours that are not owned (``cvs/1/`` next to ``cvs/10/``,
a key that merely starts like an owned exact key), counts the requests the store's client sends
(botocore's ``before-call`` event) and checks exactly which objects and versions went.
"""

from __future__ import annotations

from typing import Any

import pytest

from include.retention.stores.s3_objects import OwnedKeys
from tests.policy_text import sql_system
from tests.s3.conftest import PLAIN, VERSIONED, count_calls, keys, put, put_many, s3_policy, versions

CRM = sql_system("crm", "crm_db", """\
      applicants:
        table: applicants
        primary_key: id
        columns: [id, cv_key]
        references: [{to: objects.cvs, key_template: "cvs/{id}/"}]
      letters:
        table: letters
        primary_key: id
        columns: [id, letter_key]
        references: [{to: objects.cvs, column: letter_key}]
""")


def objects_yaml(bucket: str, legal_hold: bool = False) -> str:
    hold = '\n  legal_hold: [{column: legal-hold, equals: "true"}]' if legal_hold else ""
    return f"cvs:\n  bucket: {bucket}\n  prefix: cvs/{hold}\n"


def refs(policy: Any) -> tuple[Any, Any]:
    return (policy.collection("crm.applicants").references[0], policy.collection("crm.letters").references[0])


@pytest.mark.parametrize("n", [40, 400])
def test_listings_per_batch_do_not_grow_with_the_rows(s3, make_store, n):
    policy = s3_policy(objects_yaml(PLAIN), CRM)
    store = make_store(policy)
    owned = [i * 2 for i in range(n)]  # every second applicant's row goes
    put_many(PLAIN, [f"cvs/{i}/cv.pdf" for i in range(2 * n)] + [f"cvs/{i}/cover.pdf" for i in owned]
             + [f"cvs/{i}0/cv.pdf" for i in range(2 * n, 2 * n + 5)] + ["cvs/other.pdf"])
    before = keys(s3, PLAIN)
    calls = count_calls(store)

    deleted = store.delete_referenced("crm.applicants", refs(policy)[0], [{"id": i} for i in owned])

    gone = {f"cvs/{i}/cv.pdf" for i in owned} | {f"cvs/{i}/cover.pdf" for i in owned}
    assert deleted == len(gone) == 2 * n
    assert keys(s3, PLAIN) == sorted(set(before) - gone)
    # A page lists up to 1,000 keys: the bucket's pages at most, not one listing per row (40 or 400).
    assert 1 <= calls["ListObjectsV2"] <= -(-len(before) // 1000) <= 2
    assert calls["DeleteObjects"] == -(-len(gone) // 1000)
    assert calls["GetObjectTagging"] == calls["HeadObject"] == 0  # no rule condition reads tags here


def test_versioned_bucket_loses_every_version_of_owned_keys_only(s3, make_store):
    policy = s3_policy(objects_yaml(VERSIONED), CRM)
    store = make_store(policy)
    # 1,500 unowned keys between the two groups of owned ones: the listing jumps over them (KeyMarker).
    put_many(VERSIONED, [f"cvs/a{i:05d}/cv.pdf" for i in range(1500)])
    owned_ids = ["0001", "0002", "0003", "b001", "b002"]
    for i in owned_ids:
        put(s3, VERSIONED, f"cvs/{i}/cv.pdf", b"draft")
        put(s3, VERSIONED, f"cvs/{i}/cv.pdf", b"final")
    s3.delete_object(Bucket=VERSIONED, Key="cvs/0003/cv.pdf")  # only a delete marker is current
    put(s3, VERSIONED, "cvs/0004/cv.pdf")  # a row that is not deleted
    put(s3, VERSIONED, "cvs/b0010/cv.pdf")  # starts like an owned prefix, is not under it
    kept_before = [v for v in versions(s3, VERSIONED) if v[0].split("/")[1] not in owned_ids]
    calls = count_calls(store)

    deleted = store.delete_referenced("crm.applicants", refs(policy)[0], [{"id": i} for i in owned_ids])

    assert deleted == 5
    assert versions(s3, VERSIONED) == kept_before  # every version and marker of the owned keys is gone
    # A listing from the first owned key (one page) and a jump over the 1,500 to the next group; each may
    # list its first key again (moto leaves out the newest version of the first key after a KeyMarker).
    assert 2 <= calls["ListObjectVersions"] <= 4


def listed_entries(store: Any) -> list[int]:
    """The entries (keys, or versions and delete markers) each listing response of ``store``'s client held."""
    sizes: list[int] = []

    def received(parsed: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name.startswith("List"):
            sizes.append(len(parsed.get("Contents", [])) + len(parsed.get("Versions", []))
                         + len(parsed.get("DeleteMarkers", [])))

    store.client.meta.events.register("after-call.s3", received)
    return sizes


def test_the_last_page_of_a_batch_does_not_run_on_over_keys_nobody_wants(s3, make_store):
    policy = s3_policy(objects_yaml(PLAIN), CRM)
    store = make_store(policy)
    put_many(PLAIN, [f"cvs/a{i:04d}/cv.pdf" for i in range(3500)])  # the first 1,500 owned, 2,000 after them not
    sizes = listed_entries(store)

    deleted = store.delete_referenced("crm.applicants", refs(policy)[0], [{"id": f"a{i:04d}"} for i in range(1500)])

    assert deleted == 1500
    assert keys(s3, PLAIN) == [f"cvs/a{i:04d}/cv.pdf" for i in range(1500, 3500)]
    # 1,000 keys, then about what the 500 targets left take by the first page's count (a quarter more and 16:
    # 641 or 642, as the pointer stands), not another 1,000
    assert len(sizes) == 2 and sizes[0] == 1000 and 500 <= sizes[1] <= 500 * 5 // 4 + 20


def test_versions_of_one_key_spread_over_several_small_pages_all_go(s3, make_store):
    policy = s3_policy(objects_yaml(VERSIONED), CRM)
    store = make_store(policy)
    owned_ids = ["k1", "k2", "k3"]
    for i in owned_ids:
        put_many(VERSIONED, [f"cvs/{i}/cv.pdf"] * 40)  # 40 versions each
        put_many(VERSIONED, [f"cvs/{i}0/cv.pdf"] * 3)  # a neighbour that is not owned
    s3.delete_object(Bucket=VERSIONED, Key="cvs/k2/cv.pdf")  # a delete marker on top
    kept_before = [v for v in versions(s3, VERSIONED) if v[0].split("/")[1] not in owned_ids]
    sizes = listed_entries(store)

    deleted = store.delete_referenced("crm.applicants", refs(policy)[0], [{"id": i} for i in owned_ids])

    assert deleted == 3
    assert versions(s3, VERSIONED) == kept_before
    assert sizes[0] == 3 * 4 * 5 // 4 + 16 < 40  # the first page (4 per target, a quarter more and 16) ends
    assert len(sizes) >= 3  # inside the first key's versions: they continue on the next page


def test_exact_keys_and_legal_hold_tags(s3, make_store):
    policy = s3_policy(objects_yaml(PLAIN, legal_hold=True), CRM)
    store = make_store(policy)
    put(s3, PLAIN, "cvs/1/letter.pdf")
    put(s3, PLAIN, "cvs/1/letter.pdf.bak")  # begins with an owned exact key: not owned
    put(s3, PLAIN, "cvs/2/letter.pdf", Tagging="legal-hold=true")
    put(s3, PLAIN, "cvs/3/letter.pdf")
    put(s3, PLAIN, "cvs/3/other.pdf")
    calls = count_calls(store)

    deleted = store.delete_referenced("crm.letters", refs(policy)[1], [
        {"id": 1, "letter_key": "cvs/1/letter.pdf"}, {"id": 2, "letter_key": "cvs/2/letter.pdf"},
        {"id": 3, "letter_key": "cvs/3/letter.pdf"}, {"id": 4, "letter_key": "cvs/4/missing.pdf"},
        {"id": 5, "letter_key": None}])

    assert deleted == 2
    assert keys(s3, PLAIN) == ["cvs/1/letter.pdf.bak", "cvs/2/letter.pdf", "cvs/3/other.pdf"]
    assert calls["ListObjectsV2"] == 1
    assert calls["GetObjectTagging"] == 3  # the condition needs the tags of the owned objects only


def test_owned_keys_match_a_listing_in_one_pass():
    wanted = OwnedKeys([("cvs/1/", True), ("cvs/1/a.pdf", False), ("cvs/10", False), ("cvs/2/", True),
                        ("cvs/2/", True)])
    assert wanted.targets == [("cvs/1/", True), ("cvs/10", False), ("cvs/2/", True)]
    assert wanted.common_prefix() == "cvs/"
    listing = ["cvs/0", "cvs/1/", "cvs/1/a.pdf", "cvs/10", "cvs/10/x", "cvs/100", "cvs/2/b", "cvs/3/c"]
    assert [k for k in listing if wanted.match(k)] == ["cvs/1/", "cvs/1/a.pdf", "cvs/10", "cvs/2/b"]
    assert wanted.done()


def test_timestamps_of_listings_parse_like_botocore():
    from botocore.utils import parse_timestamp as botocore_parse

    from include.retention.stores.s3_objects import parse_timestamp

    for text in ("2026-11-25T03:55:08.000Z", "2026-11-25T03:55:08Z", "2026-11-25T03:55:08.123456+02:00",
                 "Wed, 25 Nov 2026 03:55:08 GMT", "1700000000"):
        assert parse_timestamp(text) == botocore_parse(text), text
        assert parse_timestamp(text).tzinfo is not None


def test_batches_of_rows_owning_objects_do_not_shrink_below_batch_size():
    from include.retention.stores.sql_walks import BatchSizer

    plain, owning = BatchSizer(1000), BatchSizer(1000, floor=1000)
    for sizer in (plain, owning):
        sizer.took(1000, 10.0)  # a slow batch (its objects' S3 calls): 20x over the time a batch should take
    assert plain.size == 250  # shrinks by 4x at most
    assert owning.size == 1000  # one listing and one DeleteObjects per batch either way: no more calls
