"""Command line: ``python -m include.retention.cli {validate,verify,export}``.

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
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except RetentionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
