"""Property (review of the rewrite path): whatever a CSV's dialect details (a BOM, CRLF or LF per row, fields quoted
or not, a last row without a line ending, gzip), erasing a person leaves the header and every other row byte for
byte, in order, and nothing of the person's rows. Over moto's server via real HTTP."""

from __future__ import annotations

import csv
import gzip
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.retention.identity import normalise
from include.retention.requests.scanner import SubjectScanner
from include.retention.stores.base import Subject
from tests.s3.conftest import PLAIN, put, s3_policy
from tests.s3.records_util import body

pytestmark = pytest.mark.integration

ZOE = "zoë@example.org"


def policy():
    return s3_policy(f"""\
        events:
          bucket: {PLAIN}
          key_template: "events/{{yyyy}}/..."
          format: csv
          identities: {{email: "record:email"}}
        """)


rows = st.lists(st.tuples(
    st.sampled_from([ZOE, "zoe\u0308@example.org", "zoe@example.org", "ann@example.org", ""]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=10),  # quotes, commas, CR, LF, anything
    st.sampled_from(["\r\n", "\n"]),
    st.booleans(),  # every field quoted
), min_size=1, max_size=15)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recs=rows, bom=st.booleans(), gz=st.booleans(), last_open=st.booleans())
def test_other_rows_stay_byte_for_byte(s3, make_store, recs, bom, gz, last_open):
    key = "events/2026/part.csv" + (".gz" if gz else "")
    header = ("\ufeff" if bom else "") + "email,note\r\n"
    raws = []
    for email, note, ending, quote_all in recs:
        buf = io.StringIO()
        csv.writer(buf, lineterminator=ending, quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL
                   ).writerow([email, note])
        raws.append(buf.getvalue().encode("utf-8"))
    if last_open:
        raws[-1] = raws[-1].removesuffix(b"\n").removesuffix(b"\r")  # no line ending after the last row
    data = header.encode("utf-8") + b"".join(raws)
    put(s3, PLAIN, key, gzip.compress(data) if gz else data)
    store = make_store(policy())
    subject = Subject("r1", {"email": normalise("email", ZOE)})

    SubjectScanner(store.policy, store).act([subject], "erase", dry_run=False)

    theirs = [normalise("email", email) == subject.identities["email"] for email, *_ in recs]
    stored = body(s3, PLAIN, key)
    left = gzip.decompress(stored) if gz else stored
    if any(theirs):
        kept = [raw for raw, gone in zip(raws, theirs, strict=True) if not gone]
        assert left == header.encode("utf-8") + b"".join(kept)
    else:
        assert stored == (gzip.compress(data) if gz else data) or left == data
