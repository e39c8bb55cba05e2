"""Command line: ``python -m include.retention.cli {validate,verify,export,replay,submit,rotate-keys,concept,
forecast,diff,verify-receipt,extend,index-identities}``.

Connections come from the same ``AIRFLOW_CONN_*`` variables Airflow uses. Every refusal is one
line on stderr naming the file (and the CSV row), with exit status 2; no traceback, no personal data.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from include.retention.errors import RetentionError
from include.retention.policy import Policy, load_policy
from include.retention.requests.submit_csv import read_bytes, read_requests
from include.retention.runtime import LEDGER_CONN_ID, env_resolver, hmac_key, policy_path, sqlalchemy_url
from include.retention.settings import settings
from include.retention.values import Outcome


def _ledger():
    from include.retention.ledger import Ledger
    from include.retention.stores.sql import make_engine

    return Ledger(make_engine(sqlalchemy_url(env_resolver(LEDGER_CONN_ID))), hmac_key(env_resolver))


def cmd_validate(args) -> int:
    policy = load_policy(args.policy or policy_path())
    print(f"{policy.source}: valid; {len(policy.rule_ids())} rules in {len(policy.systems)} systems; "
          f"digest {policy.digest}")
    from include.retention.concept import categories_without_end, personal_without_rule

    for ref, note in personal_without_rule(policy):  # a warning, not a refusal: the file is valid
        print(f"warning: {policy.source}: {ref} holds personal data (identities) but no rule ends it{note}",
              file=sys.stderr)
    for ref, cats in categories_without_end(policy):
        print(f"warning: {policy.source}: {ref} holds {', '.join(cats)} data but nothing ends it (no rule, and no "
              "row it belongs to)", file=sys.stderr)
    from include.retention.policy import policy_warnings

    for where, note in policy_warnings(policy):
        print(f"warning: {policy.source}: {where}: {note}", file=sys.stderr)
    if getattr(args, "live", False):
        return _validate_live(policy)
    return 0


def _validate_live(policy) -> int:
    """Discovery against every system's connection (read-only, nothing stored): exit 1 when a finding is not
    decided 'ignored' or 'not_personal' in the registry (names only on stderr; for CI of the data map)."""
    from include.retention.connections import env_resolver, make_engine, sqlalchemy_url
    from include.retention.discovery import discover_sql
    from include.retention.discovery_s3 import discover_s3
    from include.retention.findings import FindingStore

    decided: set[str] = set()
    try:
        ledger = _ledger()
        decided = {r["finding_id"] for r in FindingStore(ledger.engine).listing(statuses=("ignored", "not_personal"))}
        ledger.engine.dispose()
    except RetentionError as exc:
        print(f"warning: no decisions from the registry ({exc}): every finding counts", file=sys.stderr)
    found = []
    for name, spec in policy.systems.items():
        info = env_resolver(spec.connection)
        if spec.kind == "sql":
            engine = make_engine(sqlalchemy_url(info))
            try:
                report = discover_sql(policy, name, engine)
            finally:
                engine.dispose()
        else:
            from include.retention.stores.s3_objects import make_client

            report = discover_s3(policy, name, make_client(info)[0])
        found += [f for f in report.findings if f.finding_id not in decided]
    for f in found:
        print(f"finding: {f.name}: {f.kind}" + (f" ({f.classifier}, hit rate {f.hit_rate:.2f} of {f.sample_size})"
                                               if f.classifier else "") + (f"; {f.detail}" if f.detail else ""),
              file=sys.stderr)
    print(f"live: {len(found)} open discovery finding(s) in {len(policy.systems)} systems")
    return 1 if found else 0


def cmd_verify(args) -> int:
    """Walk the chain (and the anchors, if any); exit 1 when broken. Unreconciled intents are listed."""

    from include.retention.ledger import anchor_sinks

    where = args.anchors or settings().ledger_anchors
    ledger = _ledger()
    sinks = anchor_sinks(where) if where else None
    result = ledger.verify(anchors=sinks)
    print(result)
    if result.ok and args.anchor:
        if not sinks:
            raise RetentionError("--anchor needs --anchors DIR_OR_S3URL (or RETENTION_LEDGER_ANCHORS)")
        for sink in sinks:  # just verified, anchors included
            anchor = ledger.anchor(sink, check=False)
            print(f"anchored head {anchor.seq} at {anchor.where}")
    return 0 if result.ok else 1


def cmd_export(args) -> int:
    """Write the ledger as CSV for the data-protection officer (it holds no personal data)."""
    from include.retention.ledger import HASHED_FIELDS

    ledger = _ledger()
    out = open(args.out, "w", newline="") if args.out != "-" else sys.stdout
    writer = csv.DictWriter(out, fieldnames=[*HASHED_FIELDS, "entry_hash"])
    writer.writeheader()
    rows = 0
    for row in ledger.rows():
        writer.writerow({k: row[k] for k in writer.fieldnames})
        rows += 1
    if out is not sys.stdout:
        out.close()
    print(f"exported {rows} ledger entries; {ledger.verify()}", file=sys.stderr)
    return 0


def _runtime(policy: Policy | None = None):
    from include.retention.runtime import Runtime

    return Runtime(policy or load_policy(policy_path()), env_resolver)


def _replayable(policy: Policy, system: str) -> None:
    """Refuse a system that replay cannot act on, before anything is opened."""
    if system not in policy.systems:
        raise RetentionError(f"{policy.source}: systems: unknown system {system!r}; known: "
                             f"{', '.join(policy.systems)}")
    spec = policy.systems[system]
    if not any(coll.identities for coll in spec.collections.values()):
        raise RetentionError(f"{policy.source}: systems.{system}: nothing to replay: no collection of {system!r} "
                             "declares identities")


def cmd_replay(args) -> int:
    """Re-apply every completed erasure to a store restored from a backup."""
    from include.retention.ledger import RunRef
    from include.retention.requests.scanner import SubjectScanner
    from include.retention.requests.suppression import enforce_system

    policy = load_policy(policy_path())
    _replayable(policy, args.system)
    runtime = _runtime(policy)
    try:
        scanner = SubjectScanner(runtime.policy, runtime.store(args.system))
        counts = enforce_system(scanner, runtime.registry(), replay=True, dry_run=args.dry_run)
        runtime.ledger().append(run=RunRef("cli", "replay"), action="replay",
                                outcome=Outcome.DRY_RUN if args.dry_run else Outcome.DONE, count=sum(counts.values()),
                                system=args.system, policy_digest=runtime.policy.digest, details=counts)
    finally:
        runtime.close()
    for coll, n in counts.items():
        print(f"{coll}: {n} row(s) of erased subjects {'found' if args.dry_run else 'removed again'}")
    return 0


def cmd_rotate_keys(args) -> int:
    """Move the registry to the current key (first of RETENTION_HMAC_KEYS), audited by one ledger entry.

    The ledger must verify first (under every active key; it may still be under an older key): the
    ``rotate_keys`` entry, co-signed by the new key, hands the chain over to it and seals what came
    before, and a broken chain is not sealed.
    """
    from include.retention.ledger import RunRef
    from include.retention.masking import keys_of
    from include.retention.registry import Registry

    ledger = _ledger()
    result = ledger.verify(record=False, current_key=False)
    if not result.ok:
        raise RetentionError(f"not rotating keys: {result}")
    ring = keys_of(ledger.key)
    done = Registry(ledger.engine, ledger.key).keys.rotate()
    older = [kid for kid, _ in ring[1:]]
    ledger.rotate(run=RunRef("cli", "rotate-keys"), count=done["requests"] + done["suppression"],
                  details={**done, "older_keys": older})
    print(f"rotated to key {done['key_id']!r}: {done['requests']} request(s) re-encrypted and re-digested, "
          f"{done['suppression']} suppression entr(y/ies) re-digested ({done['merged']} merged); ledger entry written")
    for kid, n in sorted(done["kept"].items()):
        print(f"key {kid!r}: {n} suppression digest(s) of deleted rows stay under it (no plaintext to re-digest)")
    if older:
        print(f"keep {', '.join(map(repr, older))} in RETENTION_HMAC_KEYS: ledger entries and digests made "
              "under them verify and match only with them (docs/adr/0007-key-rotation.md)")
    return 0


def _at(text: str | None):
    """``--now``: an ISO 8601 date or time (UTC unless it says otherwise); default: now."""
    import datetime as dt

    if not text:
        return dt.datetime.now(dt.UTC)
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise RetentionError(f"--now: {text[:40]!r} is not an ISO 8601 date or time such as 2026-11-24T12:00") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _store_runtime(policy: Policy):
    """Stores for read-only planning: the keyed digest is not needed, so a missing key is no refusal."""
    from include.retention.runtime import Runtime

    try:
        key = hmac_key(env_resolver)
    except RetentionError:
        key = b""
    return Runtime(policy, env_resolver, key=key)


def cmd_index_identities(args) -> int:
    """``lookup: indexed`` (ADR 0022): print the DDL a DBA runs (default), or fill the digest columns."""
    from include.retention.stores.kinds import holds_rows
    from include.retention.stores.sql_index import ddl

    if args.suppression_list:
        return _backfill_suppression_lookups()
    policy = load_policy(args.policy or policy_path())
    targets = [(s_name, c_name, coll, fld.column) for s_name, system in policy.systems.items()
               if holds_rows(policy, s_name)
               for c_name, coll in system.collections.items() for _kind, fld in coll.identity_fields()
               if fld.lookup == "indexed"]
    if not targets:
        print(f"{policy.source}: no identity field declares 'lookup: indexed'")
        return 0
    engines = {}
    for s_name in dict.fromkeys(s for s, *_ in targets):
        if args.backfill or args.dialect is None:
            from include.retention.connections import make_engine

            engines[s_name] = make_engine(sqlalchemy_url(env_resolver(policy.systems[s_name].connection)))
    try:
        if args.backfill:
            from include.retention.stores.sql import SqlStore

            for s_name, engine in engines.items():
                store = SqlStore(s_name, policy, engine)
                for c_name in dict.fromkeys(c for s, c, *_ in targets if s == s_name):
                    print(f"{s_name}.{c_name}: {store.backfill_index(c_name)} row(s) digested")
            return 0
        for s_name, c_name, coll, column in targets:
            dialect = args.dialect or engines[s_name].dialect.name
            print(f"-- {s_name}.{c_name}.{column}: lookup: indexed ({dialect}); run once, then "
                  "`index-identities --backfill`")
            for statement in ddl(dialect, coll.table, column, coll.key_columns()):
                print(statement + ";")
        return 0
    finally:
        for engine in engines.values():
            engine.dispose()


def _backfill_suppression_lookups() -> int:
    """``index-identities --suppression-list`` (ADR 0022): old entries get their index digest where the registry
    still holds the value (an erasure's request); a delete's cannot."""
    from include.retention.registry import Registry

    ledger = _ledger()
    try:
        done = Registry(ledger.engine, ledger.key).suppression.backfill_lookups()
    finally:
        ledger.engine.dispose()
    print(f"suppression list: {done['filled']} entr(y/ies) given their index digest, {done['left']} without one "
          "(deletes, erasures whose request is gone: no value left); enforcement of their kinds reads in full")
    return 0


def cmd_concept(args) -> int:
    """The deletion concept (Markdown on stdout, or .md/.csv/.html in --out), with the ledger's evidence."""
    from include.retention.concept import ledger_evidence, write_concept

    policy = load_policy(args.policy or policy_path())
    findings = []
    try:
        ledger = _ledger()
        evidence = ledger_evidence(ledger)
        note = f"audit ledger, {sum(e.get('entries', 0) for e in evidence.values())} rule entries"
        from include.retention.findings import FindingStore

        findings = FindingStore(ledger.engine).open_findings(list(policy.systems))
        ledger.engine.dispose()
    except RetentionError as exc:
        evidence, note = {}, f"none (the ledger is not available: {exc})"
        print(f"warning: no evidence from the ledger: {exc}", file=sys.stderr)
    written = write_concept(policy, args.out, evidence, note, findings=findings)
    if args.out is None:
        sys.stdout.write(written["md"])
    else:
        for path in written.values():
            print(f"wrote {path}")
    return 0


def cmd_forecast(args) -> int:
    """What each rule will lock / anonymize / delete within the given days (read-only); exit 1 if a rule failed."""
    import json

    from include.retention.forecast import forecast, forecast_table, parse_days

    days = parse_days(args.days)
    policy = load_policy(args.policy or policy_path())
    runtime = _store_runtime(policy)
    try:
        result = forecast(policy, runtime.store, _at(args.now), days, per_day=args.json)
    finally:
        runtime.close()
    print(json.dumps(result, indent=2) if args.json else forecast_table(result))
    for r in result["rules"]:
        if r["error"]:
            print(f"error: {r['rule_id']}: {r['error']}", file=sys.stderr)
    return 1 if result["errors"] else 0


DIFF_REFUSED = 3


def cmd_diff(args) -> int:
    """Compare OLD and NEW record by record against the same stores; exit 3 when NEW would newly lock, anonymize
    or delete more than --threshold records (now or within 30 days)."""
    import json

    from include.retention.policy_diff import diff_records, records_table

    if args.threshold < 0:
        raise RetentionError(f"--threshold: {args.threshold} is negative; give a number of records (0: none)")
    old, new = load_policy(args.old), load_policy(args.new)
    now = _at(args.now)
    r_old, r_new = _store_runtime(old), _store_runtime(new)
    try:
        diff = diff_records(old, new, r_old.store, r_new.store, now)
    finally:
        r_old.close()
        r_new.close()
    print(json.dumps(diff, indent=2) if args.json else records_table(diff))
    if diff["errors"]:
        failed = [e["collection"] for e in diff["errors"]]
        raise RetentionError(f"{len(failed)} collection(s) could not be compared ({', '.join(failed[:5])}): "
                             "the diff is incomplete")
    if diff["gate"] > args.threshold:
        print(f"refused: {args.new} would newly lock, anonymize or delete {diff['gate']} record(s) (now or within "
              f"30 days, dependents and owned objects included), more than the threshold {args.threshold}",
              file=sys.stderr)
        return DIFF_REFUSED
    return 0


def cmd_verify_receipt(args) -> int:
    """Check a receipt (JSON) against the ledger and its anchors; exit 1 when it does not hold."""
    import json

    from include.retention.ledger import anchor_sinks
    from include.retention.requests.receipts import verify_receipt

    path = Path(args.file)
    try:
        receipt = json.loads(read_bytes(path).decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError):
        raise RetentionError(f"{path}: not a JSON receipt") from None
    where = args.anchors or settings().ledger_anchors
    ledger = _ledger()
    check = verify_receipt(receipt, ledger, anchors=anchor_sinks(where) if where else None)
    print(check)
    for note in check.notes:
        print(f"note: {note}")
    return 0 if check.ok else 1


def cmd_submit(args) -> int:
    """Queue erasure requests for erasure_intake from a CSV (see ``read_requests``): all rows or none."""
    from include.retention.requests.scanner import check_request_kinds

    reqs = read_requests(args.csv)
    runtime = _runtime()
    try:
        check_request_kinds(runtime.policy, {kind for req in reqs for kind in req.identities.given()})
        from include.retention.registry import INTAKE_VERIFIED

        verified = bool(getattr(args, "identity_verified", False))
        ids = runtime.registry().register_many(reqs, source=INTAKE_VERIFIED if verified else "intake")
    finally:
        runtime.close()
    print(f"queued {len(ids)} request(s) for erasure_intake" + (" (identity verified)" if verified else ""))
    return 0


def cmd_extend(args) -> int:
    """GDPR Art. 12(3): extend an open request's due date by one or two months, once, and tell the requester why."""
    import sqlalchemy as sa

    from include.retention.ledger import RunRef
    from include.retention.requests import notify

    runtime = _runtime()
    try:
        registry = runtime.registry()
        try:
            registry.get(args.request_id)
        except sa.exc.NoResultFound:
            raise RetentionError(f"unknown request {args.request_id}") from None
        out = registry.extend(args.request_id, args.months, args.reason)
        req = registry.get(args.request_id)
        subject, body = notify.extension_notice(req, args.months, args.reason.strip(), out["new_due_at"])
        from include.retention.requests.notices import tell_requester
        from include.retention.requests.senders import EnvSender  # the AIRFLOW_CONN_* connections, by smtplib

        outcome = tell_requester(registry, EnvSender(), args.request_id, subject, body, "extension")
        # the reason stays in the registry (encrypted): it may name the person's circumstances
        runtime.ledger().append(run=RunRef("cli", "extend"), action="extend", outcome=Outcome.EXTENDED, count=1,
                                request_id=args.request_id, details={"months": args.months,
                                                                    "new_due_at": out["new_due_at"].isoformat()})
    finally:
        runtime.close()
    print(f"request {args.request_id}: due {out['old_due_at']:%Y-%m-%d} -> {out['new_due_at']:%Y-%m-%d} "
          f"(+{args.months} month(s)); notice to the requester: {outcome}")
    return 0


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a wrong command line is one line on stderr and status 2 (``main`` prints it)."""

    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message}")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="retention", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="validate a policy file")
    p.add_argument("policy", nargs="?")
    p.add_argument("--live", action="store_true",
                   help="also run discovery on every system's connection: exit 1 on a finding nobody decided")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("verify", help="verify the audit ledger's hash chain")
    p.add_argument("--anchors", metavar="DIR_OR_S3URL",
                   help="anchors to check the chain against, several separated by commas "
                        "(default: $RETENTION_LEDGER_ANCHORS)")
    p.add_argument("--anchor", action="store_true", help="after a good verification, anchor the head there")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("export", help="export the ledger as CSV")
    p.add_argument("--out", default="-")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("replay", help="re-apply completed erasures to a restored backup of a system")
    p.add_argument("--system", required=True)
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(func=cmd_replay)
    p = sub.add_parser("rotate-keys", help="re-encrypt the registry and re-digest the suppression list under "
                                           "the current key (first of RETENTION_HMAC_KEYS); one ledger entry")
    p.set_defaults(func=cmd_rotate_keys)
    p = sub.add_parser("index-identities", help="print the DDL 'lookup: indexed' needs (for a DBA; nothing is run), "
                                                "or --backfill its digest columns")
    p.add_argument("--policy", help="policy file (default: $RETENTION_POLICY_PATH or config/policy.yaml)")
    p.add_argument("--dialect", choices=("postgresql", "mariadb", "sqlite"),
                   help="print the DDL for this database without connecting (default: each system's own)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--ddl", action="store_true", help="print the DDL (the default)")
    mode.add_argument("--backfill", action="store_true", help="fill the digest columns that are NULL")
    mode.add_argument("--suppression-list", action="store_true",
                      help="give the suppression list's entries from before index digests theirs, where the registry "
                           "still holds the value (suppression enforcement and replay then use the index)")
    p.set_defaults(func=cmd_index_identities)
    p = sub.add_parser("concept", help="the deletion concept (Markdown, CSV, HTML) with the ledger's evidence")
    p.add_argument("--out", metavar="DIR", help="write deletion-concept.md/.csv/.html here (default: Markdown on "
                                                 "stdout)")
    p.add_argument("--policy", help="policy file (default: $RETENTION_POLICY_PATH or config/policy.yaml)")
    p.set_defaults(func=cmd_concept)
    p = sub.add_parser("forecast", help="what each rule will lock/anonymize/delete in the next days (read-only)")
    p.add_argument("--days", default="7,30,90", help="horizons in days, comma-separated (default 7,30,90)")
    p.add_argument("--now", help="forecast from this ISO 8601 time (default: now)")
    p.add_argument("--policy", help="policy file (default: $RETENTION_POLICY_PATH or config/policy.yaml)")
    p.add_argument("--json", action="store_true", help="JSON with the per-day series")
    p.set_defaults(func=cmd_forecast)
    p = sub.add_parser("diff", help="which records a policy change would newly lock/anonymize/delete; exit 3 above "
                                    "--threshold")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--threshold", type=int, default=0,
                   help="records the change may newly lock, anonymize or delete (now or within 30 days) before it "
                        "is refused (default 0)")
    p.add_argument("--now", help="compare as of this ISO 8601 time (default: now)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_diff)
    p = sub.add_parser("verify-receipt", help="check a receipt (JSON) against the audit ledger and its anchors")
    p.add_argument("file")
    p.add_argument("--anchors", metavar="DIR_OR_S3URL",
                   help="anchors to check the chain against, several separated by commas "
                        "(default: $RETENTION_LEDGER_ANCHORS)")
    p.set_defaults(func=cmd_verify_receipt)
    p = sub.add_parser("submit", help="queue erasure requests from a CSV for erasure_intake")
    p.add_argument("csv")
    p.add_argument("--identity-verified", action="store_true",
                   help="every requester's identity was verified before queueing: erasure_intake takes the rows "
                        "without the identity check (without it, types listed in RETENTION_VERIFY_IDENTITY wait)")
    p.set_defaults(func=cmd_submit)
    p = sub.add_parser("extend", help="extend a request's due date by 1 or 2 months (once, Art. 12(3)) and tell "
                                      "the requester")
    p.add_argument("request_id")
    p.add_argument("--months", type=int, choices=(1, 2), required=True)
    p.add_argument("--reason", required=True, help="why more time is needed (sent to the requester)")
    p.set_defaults(func=cmd_extend)
    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except (_UsageError, RetentionError) as exc:
        return _fail(str(exc))
    except OSError as exc:  # e.g. export --out into a missing directory
        name = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{name}{exc.strerror or type(exc).__name__}")
    except Exception as exc:  # noqa: BLE001 - one line, no traceback: driver messages can hold personal data
        if settings().debug:
            raise
        return _fail(f"unexpected {type(exc).__name__} (set RETENTION_DEBUG=1 for the traceback)", status=1)


def _fail(message: str, status: int = 2) -> int:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
