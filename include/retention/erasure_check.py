"""The retention sweep's independent check of erasures: an erased person found again (ADR 0022).

A request's own verification finds the person the way the request did: through the ``lookup: indexed`` digest
index where the data map declares one. What that index cannot see (a row loaded with the triggers off, a digest
written by hand) this check sees, because it shares nothing with the index: it reads every identity of every SQL
identity collection in primary-key batches (``Store.scan``), normalises each value with ``normalise`` (the judge
everywhere), computes its keyed digests (every active key) and looks them up among the suppression list's entries
of erasures, one query per 500 digests. An item of an erased person that may not stay (``left_of``: not kept as
an exception such as a legal hold or a statutory lock) reopens the erasure's request (``Registry.reopen``) and is
recorded in the ledger; the sweep's task then fails and alerts the DPO.

Memory is one scan batch and its digests; nothing here logs, records or returns an identity: request ids,
collection refs and counts only.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from include.retention.stores.base import Claims, Subject

if TYPE_CHECKING:
    from include.retention.ledger import Ledger, RunRef
    from include.retention.registry import Registry
    from include.retention.stores.sql import SqlStore

log = logging.getLogger(__name__)

REOPEN_ERROR = "erased data found again by the retention sweep's check"


def found_again(store: SqlStore, registry: Registry, name: str) -> dict[str, int]:
    """Per erasure request id: the items of collection ``name`` that carry its erased person and may not stay."""
    left: dict[str, int] = {}
    for batch in store.scan(name):
        keys_of: dict[tuple[str, str], list[Any]] = defaultdict(list)  # (kind, normalised value) -> item keys
        for key, found in batch:
            for kind, values in found.items():
                for value in values:
                    keys_of[(kind, value)].append(key)
        claims, identities = Claims(), defaultdict(dict)
        for kind in sorted({k for k, _ in keys_of}):
            value_of = {
                digest: value for k, value in keys_of if k == kind for digest in registry.digests(kind, value)
            }  # every active key's digest
            for digest, request_id in registry.suppression.erased_by(kind, value_of).items():
                identities[request_id][kind] = value_of[digest]
                for key in keys_of[(kind, value_of[digest])]:
                    claims.add(key, request_id)
        if claims:
            subjects = [Subject(rid, ids) for rid, ids in sorted(identities.items())]
            for rid, n in store.left_of(name, claims, subjects, "erase").items():
                left[rid] = left.get(rid, 0) + n
    return left


def check_system(store: SqlStore, registry: Registry) -> tuple[list[str], dict[str, dict[str, int]]]:
    """(collection refs checked, request id -> collection ref -> items found again) of one SQL system."""
    checked: list[str] = []
    found: dict[str, dict[str, int]] = defaultdict(dict)
    for name in store.subject_collections():
        ref = store.ref(name)
        checked.append(ref)
        for rid, n in found_again(store, registry, name).items():
            found[rid][ref] = n
    return checked, dict(found)


def record(
    registry: Registry,
    ledger: Ledger,
    run: RunRef,
    system: str,
    checked: list[str],
    found: dict[str, dict[str, int]],
    *,
    dry_run: bool,
    policy_digest: str | None = None,
) -> list[str]:
    """Reopen the requests of ``found`` (not in a dry run) and record the check in the ledger: one entry for the
    system, one per reopened request. Returns the reopened request ids."""
    items = sum(n for per in found.values() for n in per.values())
    reopened = [] if dry_run else registry.reopen(found, system, REOPEN_ERROR)
    entries = [
        dict(
            run=run,
            action="erasure_check",
            outcome="found_again" if found else "none_found",
            count=items,
            system=system,
            policy_digest=policy_digest,
            details={"collections": checked, "requests": found, "reopened": reopened, "dry_run": dry_run},
        )
    ]
    entries += [
        dict(
            run=run,
            action="erasure_check",
            outcome="reopened",
            count=sum(found[rid].values()),
            request_id=rid,
            system=system,
            policy_digest=policy_digest,
            details={"found": found[rid]},
        )
        for rid in reopened
    ]
    ledger.append_many(entries)
    if found:
        log.error(
            "%s: %d item(s) of %d erased request(s) found again; reopened: %s",
            system,
            items,
            len(found),
            ", ".join(reopened) or "none",
        )
    else:
        log.info("%s: no erased person found again in %d collection(s)", system, len(checked))
    return reopened
