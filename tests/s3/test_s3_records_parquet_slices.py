"""Property: a Parquet object whose row groups are read in several slices (``PARQUET_SLICE``) is rewritten with
exactly the other people's records, in order, every value as it was, and one row group per original row group
that keeps a record (the kept slices of a group written together: the rewrite's Parquet path, ported into
``stores/s3_rewrite.py``); the receipt's count equals the records gone (moto over HTTP, pyarrow reads it back)."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.retention.identity import normalise
from include.retention.requests.scanner import SubjectScanner
from include.retention.stores import s3_record_read
from include.retention.stores.base import Subject
from tests.s3.conftest import PLAIN, put, s3_policy
from tests.s3.records_util import body

pytestmark = pytest.mark.integration

KEY = "tables/dt=2026-05-01/part-0.parquet"
PERSON = "zoë@example.org"
SPELLINGS = [PERSON, " ZOË@example.org", "zoe@example.org", "ann@example.org", None]  # the first two are theirs
SCHEMA = pa.schema([("email", pa.string()), ("n", pa.int64()), ("amount", pa.decimal128(12, 2)),
                    ("tags", pa.list_(pa.string()))])


def policy():
    return s3_policy(f"""\
        tables:
          bucket: {PLAIN}
          key_template: "tables/dt={{yyyy}}-{{mm}}-{{dd}}/..."
          format: parquet
          identities: {{email: "record:email"}}
        """)


records = st.lists(st.builds(
    lambda e, n, cents, tags: {"email": e, "n": n, "amount": cents, "tags": tags},
    st.sampled_from(SPELLINGS), st.integers(-2**40, 2**40), st.integers(-10**9, 10**9),
    st.one_of(st.none(), st.lists(st.text(max_size=4), max_size=2))), min_size=1, max_size=20)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recs=records, group=st.integers(1, 7), piece=st.integers(1, 3))
def test_sliced_row_groups_keep_exactly_the_others(s3, make_store, monkeypatch, recs, group, piece):
    import decimal

    monkeypatch.setattr(s3_record_read, "PARQUET_SLICE", piece)
    rows = [{**r, "amount": decimal.Decimal(r["amount"]).scaleb(-2)} for r in recs]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), buf, row_group_size=group, compression="zstd")
    put(s3, PLAIN, KEY, buf.getvalue())
    store = make_store(policy())
    subject = Subject("r1", {"email": normalise("email", PERSON)})
    theirs = [r["email"] is not None and normalise("email", r["email"]) == subject.identities["email"] for r in rows]

    outcome = SubjectScanner(store.policy, store).act([subject], "erase", dry_run=False)

    if not any(theirs):
        assert outcome.per_request.get("r1", {}) == {}
        return
    out = pq.ParquetFile(io.BytesIO(body(s3, PLAIN, KEY)))
    assert out.schema_arrow == SCHEMA
    assert out.read().to_pylist() == [r for r, t in zip(rows, theirs, strict=True) if not t]
    kept_per_group = [sum(1 for t in theirs[i:i + group] if not t) for i in range(0, len(rows), group)]
    assert [out.metadata.row_group(i).num_rows for i in range(out.metadata.num_row_groups)] == \
        [n for n in kept_per_group if n]
    assert outcome.per_request["r1"]["objects.tables"]["deleted"] == sum(theirs)
