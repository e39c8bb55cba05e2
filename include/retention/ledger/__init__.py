"""The audit ledger: append-only, keyed hash-chained entries that prove what was done.

Each entry holds time, DAG run, rule, policy digest, action, counts and digests;
subjects and primary keys appear only as keyed HMAC digests. ``entry_hash`` is the
HMAC-SHA256 (under a key derived from ``Ledger.key``) of the entry's canonical JSON
including the previous entry's hash, so someone with write access to the database but
without the key cannot edit, insert, remove, reorder or renumber entries and rehash the
rest: ``verify`` reports the first entry that does not match. A one-row head table
(locked with SELECT ... FOR UPDATE; ``BEGIN IMMEDIATE`` on SQLite) serialises writers.
The head is also anchored outside the database (``anchor``: a file, or an S3 object
under Object Lock), so a truncated tail with a moved head is found as well; an anchor is keyed,
names the anchor before it, and is recorded in the chain, so one rewritten or deleted is named.

The chain is under one key at a time: a ``rotate_keys`` entry co-signed by the new key hands it
over (``Ledger.rotate``); ``verify`` refuses a retired key after it and a chain that does not end
under the current key (docs/adr/0007-key-rotation.md).

A change to a store is written as an *intent* before it commits and *settled* with the
real count after; an intent without outcome (a crash in between) is reported by
``verify`` and settled later by ``reconcile``. See docs/adr/0006-keyed-anchored-ledger.md.

``schema`` holds the tables and entry fields, ``hashing`` the keys and hashes, ``chain`` the ``Ledger`` (append,
intents, rotation, anchoring, reading), ``anchors`` the places anchors are kept, ``verify`` the walk over the
chain, ``queries`` what the data-retention page reads.
"""

from __future__ import annotations

from include.retention.ledger.anchors import (
    DIRECTORY_LIMIT,
    Anchor,
    AnchorSink,
    DirectorySink,
    ReadAnchors,
    S3Sink,
    anchor_sink,
    anchor_sinks,
    read_anchors,
)
from include.retention.ledger.chain import Ledger
from include.retention.ledger.hashing import anchor_key, canonical, chain_key, entry_hash, key_change, rotation_key
from include.retention.ledger.schema import (
    ANCHOR_ACTION,
    ANCHOR_FORMAT,
    ANCHORS_DEMO_ENV,
    CHAIN_FORMAT,
    CHART_ACTIONS,
    CHART_OUTCOMES,
    GENESIS,
    HASHED_FIELDS,
    INTENT,
    RECONCILED,
    ROTATE_KEYS,
    EntryFields,
    RunRef,
    create_schema,
    entries,
    head,
    metadata,
    verifications,
)
from include.retention.ledger.verify import VerifyResult

__all__ = [
    "ANCHORS_DEMO_ENV",
    "ANCHOR_ACTION",
    "ANCHOR_FORMAT",
    "CHAIN_FORMAT",
    "CHART_ACTIONS",
    "CHART_OUTCOMES",
    "DIRECTORY_LIMIT",
    "GENESIS",
    "HASHED_FIELDS",
    "INTENT",
    "RECONCILED",
    "ROTATE_KEYS",
    "Anchor",
    "AnchorSink",
    "DirectorySink",
    "EntryFields",
    "Ledger",
    "ReadAnchors",
    "RunRef",
    "S3Sink",
    "VerifyResult",
    "anchor_key",
    "anchor_sink",
    "anchor_sinks",
    "canonical",
    "chain_key",
    "create_schema",
    "entries",
    "entry_hash",
    "head",
    "key_change",
    "metadata",
    "read_anchors",
    "rotation_key",
    "verifications",
]
