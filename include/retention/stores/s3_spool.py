"""The objects a plan found due for deletion, kept on disk for the delete stage that follows it.

``run_rule`` plans a rule (the safety brake needs exact counts before anything goes), then acts.
Listing the collection a second time for the act stage was most of an S3 sweep's cost beyond a raw
loop. The plan instead writes each object it found due for deletion (key, listing date and, in a
versioned bucket, every version id it saw) to an anonymous temporary file, one line per object, and
the delete stage of the same rule at the same instant reads it back a page at a time: memory stays
one page, whatever the bucket's size. The file has no name (unlinked at creation) and goes with the
store, the next plan, or the delete stage that reads it; nothing else ever reads it.

What the delete stage then does with each page is what it does with a listing page: the objects are
classified again under the same ``now`` with their tags and HEADs read afresh where a rule needs them
(legal-hold tag conditions, Object Lock, a metadata or tag date), an orphan rule's page is looked up
against its owners again, and only what is still due is deleted. Planned versions are deleted by
version id: a version written after the plan is never among them. ``S3Store.spools`` says where this
is used (not for an unversioned bucket dated by ``last_modified``: a key overwritten after the plan
would be deleted by its key although its new content is within its period).

This module imports nothing from Airflow.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from collections.abc import Iterator
from typing import Any

from include.retention.stores.s3_objects import Page, S3Object

PAGE = 1000  # objects per page read back (a listing page)


class Spool:
    """Due objects of one plan (collection, rule, instant), written once, read back once."""

    def __init__(self, collection_name: str, rule: Any, now: dt.datetime):
        self.collection_name, self.rule, self.now = collection_name, rule, now
        self.file = tempfile.TemporaryFile(mode="w+b", prefix="retention-plan-")  # noqa: SIM115 - closed by close()
        self.count = 0

    def matches(self, collection_name: str, rule: Any, now: dt.datetime) -> bool:
        """Was this spool written by the plan of exactly this rule (the same object) at exactly this instant?"""
        return self.collection_name == collection_name and self.rule is rule and self.now == now

    def add(self, obj: S3Object) -> None:
        line = [obj.key, obj.last_modified.isoformat(), obj.version_id, obj.live, obj.versions, obj.data_versions]
        self.file.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
        self.count += 1

    def pages(self, size: int = PAGE) -> Iterator[Page]:
        """The objects in the order they were written (the listing's), ``size`` at a time."""
        self.file.flush()
        self.file.seek(0)
        page: list[S3Object] = []
        for line in self.file:
            key, modified, version_id, live, versions, data_versions = json.loads(line)
            page.append(S3Object(key, dt.datetime.fromisoformat(modified), version_id=version_id, live=live,
                                 versions=versions, data_versions=data_versions))
            if len(page) >= size:
                yield Page(page, more=True)
                page = []
        if page:
            yield Page(page)

    def close(self) -> None:
        self.file.close()
