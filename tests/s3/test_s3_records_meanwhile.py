"""What somebody else does to an object while a rewrite of its records is under way (review of the rewrite path):
a delete. Over moto's server via real HTTP."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from include.retention.errors import StoreUnavailable
from include.retention.requests.scanner import SubjectScanner
from tests.s3.conftest import VERSIONED, put, versions
from tests.s3.records_util import body, encode, records
from tests.s3.test_s3_records import COLLS, policy_for, zoe

pytestmark = pytest.mark.integration


def test_an_object_deleted_meanwhile_is_not_brought_back(s3, make_store, monkeypatch):
    """Somebody deletes the object (a delete marker) between our read and our upload: our rewrite would sit on top
    of their delete marker and bring the object (everybody else's records) back. Ours must go, the delete stay."""
    from include.retention.stores import s3_record_store

    fmt, gz, theirs, _ = COLLS["events"]
    original = encode(fmt, records(6, seed=1), gz)
    first = put(s3, VERSIONED, theirs, original, ContentEncoding="gzip")
    real = s3_record_store.write_version

    def meanwhile(reader, decide, sink, key):
        out = real(reader, decide, sink, key)
        if reader.obj.key == theirs:
            s3.delete_object(Bucket=VERSIONED, Key=theirs)  # the owner deletes the export now
        return out

    monkeypatch.setattr(s3_record_store, "write_version", meanwhile)
    store = make_store(policy_for(VERSIONED))
    with pytest.raises(StoreUnavailable, match="changed while it was rewritten"):
        SubjectScanner(store.policy, store).act([zoe()], "erase", dry_run=False)
    with pytest.raises(ClientError):  # still deleted: nobody's records came back
        s3.head_object(Bucket=VERSIONED, Key=theirs)
    entries = [v for v in versions(s3, VERSIONED) if v[0] == theirs]
    assert sorted(e[2] for e in entries) == [False, True]  # the original under the owner's delete marker
    assert body(s3, VERSIONED, theirs, first) == original

    # the next run: nothing is current, the older version holding the person's records goes; nothing comes back
    monkeypatch.setattr(s3_record_store, "write_version", real)
    SubjectScanner(store.policy, make_store(policy_for(VERSIONED))).act([zoe()], "erase", dry_run=False)
    with pytest.raises(ClientError):
        s3.head_object(Bucket=VERSIONED, Key=theirs)
    assert not [v for v in versions(s3, VERSIONED) if v[0] == theirs and not v[2]]

