"""What a system's items are, asked of the data map before any store is open (the deletion concept, the policy
diff, the CLI): the answer is the capabilities of the store class the system is built as (ADR 0025), so callers
ask whether items are rows that reference each other (``ReferencingRows``) or objects rows own
(``HoldsObjects``), never for a kind. This module and store construction are where the kinds are named."""

from __future__ import annotations

import functools

from include.retention.policy import Policy, System
from include.retention.stores.base import HoldsObjects, ReferencingRows, Store
from include.retention.stores.s3 import S3Store
from include.retention.stores.sql import SqlStore


def store_class(system: System) -> type[Store]:
    """The class of the store a system of the data map is opened as."""
    return _store_class(system.kind)


@functools.cache
def _store_class(kind: str) -> type[Store]:
    return SqlStore if kind == "sql" else S3Store


@functools.cache
def _capabilities(cls: type[Store]) -> tuple[bool, bool]:
    return issubclass(cls, ReferencingRows), issubclass(cls, HoldsObjects)


def holds_rows(policy: Policy, ref: str) -> bool:
    """Whether the items of ``ref`` (``system.collection``, or a system's name) are rows that reference each
    other by column values: dependents go with a delete, references join them."""
    return _capabilities(store_class(policy.systems[ref.partition(".")[0]]))[0]


def holds_objects(policy: Policy, ref: str) -> bool:
    """Whether the items of ``ref`` (``system.collection``, or a system's name) are objects: rows own them by
    key, and conditions on them name object tags."""
    return _capabilities(store_class(policy.systems[ref.partition(".")[0]]))[1]
