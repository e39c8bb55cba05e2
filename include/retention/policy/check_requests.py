"""Cross-checks of what subject requests rely on: identity fields a request can find, request fields, consents,
the exports collection, and the recipients told of a request (Art. 19)."""

from __future__ import annotations

from collections.abc import Iterator

from include.retention.identity import IDENTITY_KINDS
from include.retention.policy.base import NAME, template_fields
from include.retention.policy.model import (
    NOTICE_FIELDS,
    S3_IDENTITY_SOURCES,
    Collection,
    IdentityField,
    Policy,
    Recipient,
)

Problems = Iterator[tuple[str, str]]


def check_consent_and_exports(policy: Policy) -> Problems:
    """Consent columns a SQL collection has; an exports collection that is an S3 collection of the map."""
    for s_name, system in policy.systems.items():
        for c_name, coll in system.collections.items():
            for i, consent in enumerate(coll.consent):
                where = f"systems.{s_name}.collections.{c_name}.consent[{i}]"
                if system.kind != "sql":
                    yield where, "consents are SQL columns"
                elif consent.column not in coll.columns:
                    yield (
                        f"{where}.column",
                        f"unknown column {consent.column!r} (columns of {coll.table}: {', '.join(coll.columns)})",
                    )
                elif not coll.identities:
                    yield where, "a consent needs a collection with identities (whose consent it is)"
    if policy.exports is not None:
        s_name, _, c_name = policy.exports.partition(".")
        if s_name not in policy.systems or c_name not in policy.systems[s_name].collections:
            yield "exports", f"unknown collection {policy.exports!r} (write system.collection)"
        elif policy.systems[s_name].kind != "s3":
            yield "exports", f"{policy.exports} is not an S3 collection: access packages are S3 objects"
        elif not policy.systems[s_name].collections[c_name].rules:
            yield "exports", f"{policy.exports} needs a retention rule: an access package must not stay forever"


def check_recipients(policy: Policy) -> Problems:
    """Recipients named in ``notify:`` exist; each channel has what it needs; identities only where allowed."""
    for name, rcp in policy.recipients.items():
        where = f"recipients.{name}"
        if not NAME.match(name):
            yield where, "recipient names must be letters, digits and underscores"
        yield from _check_channel(where, rcp)
        if rcp.identity == "plain" and rcp.channel != "email":
            yield (
                f"{where}.identity",
                (
                    "plaintext identities go only by e-mail (never in webhook payloads or "
                    "the Airflow UI); use 'digest' or 'none'"
                ),
            )
        if rcp.identity == "digest" and not rcp.digest_key:
            yield f"{where}.digest_key", "identity 'digest' needs 'digest_key': the connection holding the shared key"
        if rcp.digest_key and rcp.identity != "digest":
            yield f"{where}.digest_key", "'digest_key' applies only with 'identity: digest'"
    yield from _check_notify(policy)


def _check_channel(where: str, rcp: Recipient) -> Problems:
    """What the recipient's channel needs (and nothing another channel's)."""
    if rcp.channel == "email":
        if not rcp.address:
            yield f"{where}.address", "an e-mail recipient needs 'address' (an address or address template)"
        else:
            unknown = [f for f in template_fields(rcp.address) if f not in NOTICE_FIELDS]
            if unknown:
                yield (
                    f"{where}.address",
                    (f"unknown field {{{unknown[0]}}} in the address template (known: {', '.join(NOTICE_FIELDS)})"),
                )
            elif "@" not in rcp.address or any(c in rcp.address for c in " ,;<>\r\n"):
                yield f"{where}.address", "not one e-mail address (write local@domain, one per recipient)"
        if rcp.endpoint:
            yield f"{where}.endpoint", "'endpoint' is for webhook recipients"
    elif rcp.channel == "webhook":
        if not rcp.connection:
            yield f"{where}.connection", "a webhook recipient needs 'connection' (an Airflow HTTP connection id)"
        if rcp.address:
            yield f"{where}.address", "'address' is for e-mail recipients"
        if rcp.endpoint and (rcp.endpoint.startswith(("http:", "https:")) or "//" in rcp.endpoint):
            yield f"{where}.endpoint", ("a path below the connection's host, not a URL (the host is the connection's)")
    else:
        for field in ("address", "connection", "endpoint"):
            if getattr(rcp, field):
                yield f"{where}.{field}", (f"a manual recipient has no {field!r}: a person confirms in the Airflow UI")


def _check_notify(policy: Policy) -> Problems:
    """Names in ``notify:`` are declared recipients, once each; every declared recipient is named somewhere."""
    used: set[str] = set()
    for s_name, system in policy.systems.items():
        places = [(f"systems.{s_name}.notify", system.notify)] + [
            (f"systems.{s_name}.collections.{c}.notify", coll.notify) for c, coll in system.collections.items()
        ]
        for where, names in places:
            for i, name in enumerate(names):
                used.add(name)
                if name not in policy.recipients:
                    known = ", ".join(policy.recipients) or "none declared"
                    yield f"{where}[{i}]", f"unknown recipient {name!r} (recipients: {known})"
                elif names.index(name) != i:
                    yield f"{where}[{i}]", f"recipient {name!r} is listed twice"
    for name in policy.recipients:
        if name not in used:
            yield f"recipients.{name}", "declared but no system or collection names it in 'notify'"


def check_identities(policy: Policy) -> Problems:
    """Identity kinds the request fields know, fields that exist, request fields something holds."""
    for s_name, system in policy.systems.items():
        for c_name, coll in system.collections.items():
            base = f"systems.{s_name}.collections.{c_name}.identities"
            for kind, fld in coll.identity_fields():
                if kind not in IDENTITY_KINDS:
                    yield (
                        f"{base}.{kind}",
                        (
                            f"identity kind {kind!r} is not a field a request can carry "
                            f"(request fields: {', '.join(IDENTITY_KINDS)})"
                        ),
                    )
                if system.kind == "s3":
                    yield from _check_s3_identity(f"{base}.{kind}", coll, fld)
                else:
                    yield from _check_sql_identity(f"{base}.{kind}", coll, kind, fld)
    declared = policy.declared_kinds()
    for i, kind in enumerate(policy.request_fields or []):
        if kind not in IDENTITY_KINDS:
            yield f"request_fields[{i}]", f"unknown request field {kind!r} (known: {', '.join(IDENTITY_KINDS)})"
        elif kind not in declared:
            yield (
                f"request_fields[{i}]",
                (
                    f"request field {kind!r} matches no collection's identities: a request "
                    "could never find anything by it"
                ),
            )


def _check_s3_identity(where: str, coll: Collection, fld: IdentityField) -> Problems:
    """An S3 identity: a key field, metadata, a tag or a record field, erased with the object."""
    source, _, name = fld.column.partition(":")
    if source not in S3_IDENTITY_SOURCES or not name:
        yield (
            where,
            (
                f"S3 identities are 'key:<template field>', 'metadata:<name>' or "
                f"'tag:<name>' (or 'record:<field>' with a 'format'), got "
                f"{fld.column!r}"
            ),
        )
    elif source == "key" and name not in template_fields(coll.key_template or ""):
        yield where, f"the key template has no field {{{name}}}"
    elif source == "record" and coll.format is None:
        yield (
            where,
            (
                f"identity {fld.column!r} is a field of records, but the collection "
                "declares no 'format' (csv, jsonl or parquet): its objects have no "
                "fields"
            ),
        )
    elif source != "record" and coll.format is not None:
        yield (
            where,
            (
                f"a collection of {coll.format} records holds its identities in "
                f"records ('record:<field>'), got {fld.column!r}"
            ),
        )
    if fld.erase != "row" and source != "record":
        yield where, ("S3 objects are erased whole ('erase: mask' is for SQL columns and record fields)")
    if fld.lookup != "scan":
        yield where, "'lookup: indexed' is for SQL columns (S3 identities are listed)"


def _check_sql_identity(where: str, coll: Collection, kind: str, fld: IdentityField) -> Problems:
    """A SQL identity column: not a masked primary key; an indexed one holds one kind and is no digest column."""
    if fld.erase == "mask" and fld.column in coll.key_columns():
        yield where, "the primary key cannot be masked"
    if fld.lookup == "indexed":
        others = sorted({k for k, f in coll.identity_fields() if f.column == fld.column} - {kind})
        if others:
            yield (
                where,
                (
                    f"'lookup: indexed': column {fld.column!r} also holds "
                    f"{', '.join(others)}; its digest column names one kind"
                ),
            )
        if fld.column.endswith("_ndigest") or f"{fld.column}_ndigest" in coll.columns:
            yield (
                where,
                (
                    f"'lookup: indexed': {fld.column}_ndigest is the product's digest "
                    "column; do not declare it in the data map"
                ),
            )
