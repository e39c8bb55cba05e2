"""Property: over any records and any person, erasing them from a JSON-lines object leaves exactly the lines whose
address ``normalise`` does not equate with theirs, byte for byte, in order; the receipt counts the lines gone."""

from __future__ import annotations

import csv
import io
import json
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.retention.identity import normalise
from include.retention.requests.receipts import collection_lines, line_text
from include.retention.requests.scanner import SubjectScanner
from include.retention.stores.base import Subject
from tests.s3.conftest import PLAIN, put, s3_policy
from tests.s3.records_util import body

pytestmark = pytest.mark.integration

KEY = "events/2026/part.jsonl"
LOCALS = ["zoë", "zoe", "ZOË", "zoe\u0308", "zoë+news", "zое", " zoë ", "anna", "ánna"]  # NFD, Cyrillic, spaces
DOMAINS = ["example.org", "EXAMPLE.org", "exаmple.org"]


def policy(fmt: str = "jsonl"):
    return s3_policy(f"""\
        events:
          bucket: {PLAIN}
          key_template: "events/{{yyyy}}/..."
          format: {fmt}
          identities: {{email: "record:email"}}
        """)


emails = st.builds(lambda a, b: f"{a}@{b}", st.sampled_from(LOCALS), st.sampled_from(DOMAINS))
records = st.lists(st.fixed_dictionaries({
    "email": st.one_of(emails, st.none(), st.just("")),
    "note": st.text(max_size=12),  # any text: quotes, newlines, surrogate-free unicode (JSON escapes what it must)
    "n": st.integers(-10**12, 10**12),
}), max_size=25)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recs=records, person=emails, blank=st.booleans())
def test_exactly_the_lines_normalise_equates_go(s3, make_store, recs, person, blank):
    lines = [json.dumps(r, ensure_ascii=bool(i % 2)).encode("utf-8") + b"\n" for i, r in enumerate(recs)]
    if blank and lines:
        lines.insert(len(lines) // 2, b"\n")  # no record: stays
    put(s3, PLAIN, KEY, b"".join(lines))
    store = make_store(policy())
    scanner = SubjectScanner(store.policy, store)
    subject = Subject("r1", {"email": normalise("email", person)})

    outcome = scanner.act([subject], "erase", dry_run=False)

    theirs = [normalise("email", r["email"]) == subject.identities["email"] for r in recs]
    kept = [line for line in lines if line == b"\n" or not theirs[_index(lines, line, recs)]]
    gone = sum(theirs)
    assert body(s3, PLAIN, KEY) == (b"".join(kept) if gone else b"".join(lines))
    assert outcome.per_request["r1"] == ({"objects.events": {"deleted": gone, "objects_rewritten": 1}} if gone else {})
    assert scanner.remaining([subject], "erase") == {}
    if gone:
        line = collection_lines({"collections": outcome.per_request["r1"]})["objects.events"]
        assert line_text(line) == f"deleted {gone} records inside 1 object(s), rewritten"
    # a lookalike normalise keeps apart is still there
    left = [json.loads(x) for x in body(s3, PLAIN, KEY).splitlines() if x.strip()]
    assert all(unicodedata.normalize("NFC", (r["email"] or "")).strip().lower() != subject.identities["email"]
               for r in left)


def _index(lines: list[bytes], line: bytes, recs: list[dict]) -> int:
    """The record a line encodes (lines are unique per position: compare by decoding)."""
    record = json.loads(line)
    return next(i for i, r in enumerate(recs) if r == record)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recs=records, person=emails)
def test_exactly_the_csv_rows_normalise_equates_go(s3, make_store, recs, person):
    """The same over CSV: any text in a field (quotes, commas, CR, LF) survives byte for byte in the rows kept."""
    rows = []
    for r in recs:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\r\n").writerow([r["email"] or "", r["note"], r["n"]])
        rows.append(buf.getvalue().encode("utf-8"))
    put(s3, PLAIN, KEY, b"email,note,n\r\n" + b"".join(rows))
    store = make_store(policy("csv"))
    scanner = SubjectScanner(store.policy, store)
    subject = Subject("r1", {"email": normalise("email", person)})

    outcome = scanner.act([subject], "erase", dry_run=False)

    theirs = [normalise("email", r["email"]) == subject.identities["email"] for r in recs]
    assert body(s3, PLAIN, KEY) == b"email,note,n\r\n" + b"".join(
        row for row, gone in zip(rows, theirs, strict=True) if not gone)
    assert outcome.per_request["r1"] == ({"objects.events": {"deleted": sum(theirs), "objects_rewritten": 1}}
                                         if any(theirs) else {})
    assert scanner.remaining([subject], "erase") == {}


@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(0, 200)))
def test_lines_come_back_exactly_however_the_chunks_fall(data, cuts):
    from include.retention.stores.s3_record_read import _lines

    edges = sorted({c for c in cuts if c <= len(data)})
    chunks = [data[a:b] for a, b in zip([0, *edges], [*edges, len(data)], strict=True)]
    *whole, rest = data.split(b"\n")
    assert list(_lines(iter(chunks))) == [line + b"\n" for line in whole] + ([rest] if rest else [])
