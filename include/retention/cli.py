"""Command line: ``python -m include.retention.cli {validate,verify,export,replay,submit}``.

Connections come from the same ``AIRFLOW_CONN_*`` variables Airflow uses.
"""

from __future__ import annotations

import argparse
import csv
import sys

from include.retention.errors import RetentionError
from include.retention.policy import load_policy
from include.retention.runtime import LEDGER_CONN_ID, env_resolver, hmac_key, policy_path, sqlalchemy_url


def _ledger():
    from include.retention.ledger import Ledger
    from include.retention.stores.sql import make_engine

    return Ledger(make_engine(sqlalchemy_url(env_resolver(LEDGER_CONN_ID))), hmac_key(env_resolver))


def cmd_validate(args) -> int:
    policy = load_policy(args.policy or policy_path())
    print(f"{policy.source}: valid; {len(policy.rule_ids())} rules in {len(policy.systems)} systems; "
          f"digest {policy.digest}")
    return 0


def cmd_verify(args) -> int:
    result = _ledger().verify()
    print(result)
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


def _runtime():
    from include.retention.runtime import Runtime

    return Runtime(load_policy(policy_path()), env_resolver)


def cmd_replay(args) -> int:
    """Re-apply every completed erasure to a store restored from a backup."""
    from include.retention.erasure import SubjectScanner
    from include.retention.ledger import RunRef
    from include.retention.suppression import enforce_system

    runtime = _runtime()
    try:
        scanner = SubjectScanner(runtime.policy, runtime.store(args.system))
        counts = enforce_system(scanner, runtime.registry(), replay=True, dry_run=args.dry_run)
        runtime.ledger().append(run=RunRef("cli", "replay"), action="replay",
                                outcome="dry_run" if args.dry_run else "done", count=sum(counts.values()),
                                system=args.system, policy_digest=runtime.policy.digest, details=counts)
    finally:
        runtime.close()
    for coll, n in counts.items():
        print(f"{coll}: {n} row(s) of erased subjects {'found' if args.dry_run else 'removed again'}")
    return 0


def cmd_submit(args) -> int:
    """Queue erasure requests for erasure_intake: a CSV with columns email, phone, customer_ref, mode."""
    from include.retention.registry import Identities, NewRequest

    runtime = _runtime()
    try:
        with open(args.csv, newline="") as handle:
            reqs = [NewRequest(Identities(email=r.get("email") or None, phone=r.get("phone") or None,
                                          customer_ref=r.get("customer_ref") or None),
                               mode=r.get("mode") or "erase", source="intake")
                    for r in csv.DictReader(handle)]
        ids = runtime.registry().register_many(reqs)
    finally:
        runtime.close()
    print(f"queued {len(ids)} request(s) for erasure_intake")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="retention", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="validate a policy file")
    p.add_argument("policy", nargs="?")
    p.set_defaults(func=cmd_validate)
    sub.add_parser("verify", help="verify the audit ledger's hash chain").set_defaults(func=cmd_verify)
    p = sub.add_parser("export", help="export the ledger as CSV")
    p.add_argument("--out", default="-")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("replay", help="re-apply completed erasures to a restored backup of a system")
    p.add_argument("--system", required=True)
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(func=cmd_replay)
    p = sub.add_parser("submit", help="queue erasure requests from a CSV for erasure_intake")
    p.add_argument("csv")
    p.set_defaults(func=cmd_submit)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except RetentionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
