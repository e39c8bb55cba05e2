"""What the SQL store's collaborators use of it (``SqlStore`` is the one implementation).

Each collaborator (``SqlPredicates``, ``SqlActs``, ``SqlCascade``, ``SqlOrphans``, ``SqlAccess``, ``SqlSubjects``, the
walks of ``sql_walks``) holds the store as its one reference, typed by this protocol: the system's tables and keys,
key ranges and digests, and the other collaborators (``predicates``, ``acts``, ``cascade``, ``orphans``). None of them
imports ``sql.py``, which imports them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import sqlalchemy as sa

    from include.retention.policy import Collection, Policy, Reference
    from include.retention.stores.base import Claims, Store, Subject


class SqlCore(Protocol):
    name: str
    policy: Policy
    engine: sa.Engine
    mask_key: bytes
    before_delete: Callable[..., dict[str, int]] | None
    stores: Callable[[str], Store] | None
    predicates: Any
    acts: Any
    cascade: Any
    orphans: Any

    def ref(self, collection_name: str) -> str: ...

    def coll(self, name: str) -> Collection: ...

    def table(self, name: str) -> sa.Table: ...

    def check(self, collection_name: str) -> None: ...

    def key_cols(self, name: str, t: sa.Table | None = None) -> list[sa.Column]: ...

    def target_cols(self, name: str, ref: Reference, t: sa.Table | None = None) -> list[sa.Column]: ...

    def source_cols(self, child: sa.Table, ref: Reference) -> list[sa.Column]: ...

    def walk_order(self, collection_name: str, walk: str | None) -> list[sa.Column]: ...

    def keys_after(self, order: list[Any], last: tuple | None) -> list[Any]: ...

    def keys_upto(self, order: list[Any], bound: tuple) -> list[Any]: ...

    def pk_digest(self, keys: list[Any]) -> str: ...

    def digest_text(self, text: str) -> str: ...

    def digest_in_db(self, col: sa.Column) -> bool: ...

    def returned_digest(self, conn: Any, stmt: Any, cols: list[sa.Column]) -> tuple[int, str]: ...

    def find(self, collection_name: str, subjects: list[Subject], *, exhaustive: bool = False) -> Claims: ...
