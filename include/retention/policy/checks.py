"""Cross-checks of a validated data map: what a field-by-field check cannot see. Each kind of collection and
each concern has its module (``check_sql``, ``check_s3``, ``check_references``, ``check_requests``); this one
walks the map in the order the problems are reported (the first one is the message ``load_policy`` raises)."""

from __future__ import annotations

from collections.abc import Iterator

from include.retention.identity import IDENTITY_KINDS
from include.retention.policy.base import NAME
from include.retention.policy.check_references import check_cycle, check_orphaned, check_references
from include.retention.policy.check_requests import check_consent_and_exports, check_identities, check_recipients
from include.retention.policy.check_s3 import check_s3
from include.retention.policy.check_sql import check_sql
from include.retention.policy.model import Policy

Problems = Iterator[tuple[str, str]]


def cross_check(policy: Policy) -> Problems:
    """Yield (path, problem) for what a field-by-field check cannot see."""
    for s_name, system in policy.systems.items():
        if not NAME.match(s_name):
            yield f"systems.{s_name}", "system names must be letters, digits and underscores"
        for c_name, coll in system.collections.items():
            base = f"systems.{s_name}.collections.{c_name}"
            if not NAME.match(c_name):
                yield base, "collection names must be letters, digits and underscores"
            for kind in coll.identities:
                if kind not in IDENTITY_KINDS:
                    yield (
                        f"{base}.identities.{kind}",
                        (f"unknown identity kind {kind!r}; known: {', '.join(IDENTITY_KINDS)}"),
                    )
            yield from (check_sql(policy, base, coll) if system.kind == "sql" else check_s3(base, coll))
            if system.kind == "sql" and coll.format is not None:
                yield f"{base}.format", "'format' describes records inside S3 objects; SQL rows are records already"
            yield from check_orphaned(policy, s_name, c_name)
            yield from check_references(policy, system, base, coll)
    yield from check_identities(policy)
    yield from check_consent_and_exports(policy)
    yield from check_recipients(policy)
    yield from check_cycle(policy)


def policy_warnings(policy: Policy) -> list[tuple[str, str]]:
    """(path, warning) for what is valid but deprecated or has no effect: ``cli validate`` prints them."""
    out = []
    for s_name, system in policy.systems.items():
        for c_name, coll in system.collections.items():
            if coll.suppress_on_delete:
                out.append(
                    (
                        f"systems.{s_name}.collections.{c_name}.suppress_on_delete",
                        "deprecated: it suppresses every deleted row (inactive ones too); say 'suppress: "
                        f"[{', '.join(coll.suppress_on_delete)}]' on the rules or stages whose deletes must "
                        "suppress (erasures always do)",
                    )
                )
            lookups = {f.lookup for _, f in coll.identity_fields()}
            if system.kind == "sql" and lookups == {"scan", "indexed"}:
                out.append(
                    (
                        f"systems.{s_name}.collections.{c_name}.identities",
                        "only some fields declare 'lookup: indexed': the collection is still read in full for "
                        "every request (ADR 0022); declare it on every identity field",
                    )
                )
    return out
