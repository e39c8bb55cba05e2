"""What every store has (``Store``) and what only some have (the capability protocols of ``stores/base.py``)."""

from __future__ import annotations

import boto3
import sqlalchemy as sa

from include.retention.policy import parse_policy
from include.retention.stores.base import HoldsConsents, HoldsObjects, RectifiesTogether, ReferencingRows, Store
from include.retention.stores.kinds import holds_objects, holds_rows, store_class
from include.retention.stores.s3 import S3Store
from include.retention.stores.sql import SqlStore

POLICY = """
systems:
  crm:
    kind: sql
    connection: crm
    collections:
      people:
        table: people
        primary_key: id
        columns: [id, email, cv_key]
        identities: {email: email}
        references: [{to: files.cvs, column: cv_key}]
  files:
    kind: s3
    connection: files
    collections:
      cvs: {bucket: cvs, prefix: cvs/}
"""


def test_each_store_has_the_capabilities_of_its_items(tmp_path):
    policy = parse_policy(POLICY, source="t.yaml")
    sql = SqlStore("crm", policy, sa.create_engine(f"sqlite:///{tmp_path / 'crm.db'}"))
    client = boto3.client("s3", endpoint_url="http://127.0.0.1:1", region_name="us-east-1",
                          aws_access_key_id="k", aws_secret_access_key="s")  # never called here
    s3 = S3Store("files", policy, client)
    assert isinstance(sql, Store) and isinstance(s3, Store)
    assert isinstance(sql, ReferencingRows) and isinstance(sql, HoldsConsents) and not isinstance(sql, HoldsObjects)
    assert isinstance(s3, HoldsObjects) and not isinstance(s3, ReferencingRows) and not isinstance(s3, HoldsConsents)
    # a correction commits the SQL systems together; S3 (no transactions) is written after (ADR 0008)
    assert isinstance(sql, RectifiesTogether) and not isinstance(s3, RectifiesTogether)
    assert sql.database() == "sqlite:" + str((tmp_path / "crm.db").resolve())
    assert sql.read_columns("people") == ["id", "email", "cv_key"]
    assert s3.read_columns("cvs") == ["bucket", "key", "version_id", "size", "last_modified", "content_type"]
    sql.close()
    s3.close()


def test_what_a_systems_items_are_is_asked_of_its_store_class_before_any_store_is_open():
    policy = parse_policy(POLICY, source="t.yaml")
    assert store_class(policy.systems["crm"]) is SqlStore and store_class(policy.systems["files"]) is S3Store
    assert holds_rows(policy, "crm.people") and holds_rows(policy, "crm") and not holds_objects(policy, "crm.people")
    assert holds_objects(policy, "files.cvs") and holds_objects(policy, "files") and not holds_rows(policy, "files.cvs")
