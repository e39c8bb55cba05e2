"""Demo objects in S3: the CVs and inquiry attachments CRM rows reference, and server access logs.

Buckets follow ``config/policy.yaml`` (system ``objects``):

- ``crm-cvs``: versioned; every CV has two versions (draft and final), so deleting a CV
  shows that every version goes;
- ``crm-attachments``: plain; one attachment per inquiry that names one;
- ``crm-exports``: versioned; the CRM's nightly contact export for reporting, one Parquet object per day for the
  last ``EXPORT_DAYS`` days (``exports/contacts/dt=yyyy-mm-dd/part-0.parquet``: every contact's e-mail, its
  segment and when it was exported), so an erasure removes a person's records inside these objects;
- ``server-logs``: plain; one access-log object per day for the last 14 months
  (``logs/yyyy/mm/dd/...``), lines with IPv4 and IPv6 addresses. Logs older than
  ``anonymized_after_days`` are seeded as the daily sweeps before would have left them
  (addresses truncated, marked ``retention-anonymized``), so a first demo sweep has a few
  days' backlog to anonymize and two months to delete, within the safety brake.

    python -m include.retention.demo.s3_seed --endpoint-url http://127.0.0.1:5055 --crm-url sqlite:///crm.db
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import random
from collections.abc import Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from include.retention.masking import truncate_ips
from include.retention.stores.s3 import ANONYMIZED_META, make_client

if TYPE_CHECKING:
    from include.retention.policy import Policy

log = logging.getLogger(__name__)

CV_BUCKET = "crm-cvs"
ATTACHMENT_BUCKET = "crm-attachments"
LOG_BUCKET = "server-logs"
EXPORTS_BUCKET = "retention-exports"  # config/policy.yaml objects.exports
CRM_EXPORT_BUCKET = "crm-exports"  # config/policy.yaml reporting.crm_exports (records inside objects)
EXPORT_DAYS = 3
DEFAULT_SEED = 20260101
LOG_DAYS = 14 * 31  # more than a year and a month of daily logs
ANONYMIZED_AFTER_DAYS = 40  # older logs were anonymized by earlier sweeps (the rule's period is 30 days)

_AGENTS = ("Mozilla/5.0 (X11; Linux x86_64)", "curl/8.4.0", "aws-cli/2.15.0 Python/3.11", "Googlebot/2.1")
_OPERATIONS = (("REST.GET.OBJECT", "GET", 200), ("REST.HEAD.OBJECT", "HEAD", 200), ("REST.PUT.OBJECT", "PUT", 200),
               ("REST.GET.OBJECT", "GET", 404))
_PATHS = ("index.html", "assets/app.js", "assets/site.css", "blog/retention.html", "careers.html", "contact.html")


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return f"2001:db8:{rng.randint(0, 0xffff):x}:{rng.randint(0, 0xffff):x}::{rng.randint(1, 0xffff):x}"
    return f"{rng.choice(('192.0.2', '198.51.100', '203.0.113'))}.{rng.randint(1, 254)}"


def access_log(rng: random.Random, day: dt.date, lines: int = 20) -> bytes:
    """One object of S3 server access logs for ``day`` (the format S3 itself writes)."""
    out = []
    for _ in range(lines):
        at = dt.datetime(day.year, day.month, day.day, rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59))
        operation, method, status = rng.choice(_OPERATIONS)
        path = rng.choice(_PATHS)
        request_id = f"{rng.getrandbits(64):016X}"
        out.append(
            f"79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be www-site "
            f"[{at:%d/%b/%Y:%H:%M:%S} +0000] {_ip(rng)} - {request_id} {operation} {path} "
            f'"{method} /{path} HTTP/1.1" {status} - {rng.randint(200, 90000)} {rng.randint(200, 90000)} '
            f'{rng.randint(1, 80)} {rng.randint(1, 40)} "-" "{rng.choice(_AGENTS)}" - '
            f"{rng.getrandbits(96):024x} SigV4 ECDHE-RSA-AES128-GCM-SHA256 AuthHeader www.example.com TLSv1.2 - -"
        )
    return ("\n".join(out) + "\n").encode()


def contact_export(rng: random.Random, emails: list[str], day: dt.date) -> bytes:
    """One night's export of the CRM's contacts as Parquet (zstd, row groups of 100)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    at = dt.datetime(day.year, day.month, day.day, 2, 30, tzinfo=dt.UTC)
    table = pa.table({"email": pa.array(emails, pa.string()),
                      "segment": pa.array([rng.choice(("newsletter", "sales", "support")) for _ in emails]),
                      "exported_at": pa.array([at] * len(emails), pa.timestamp("us", tz="UTC"))})
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=100, compression="zstd")
    return out.getvalue()


VERSIONED_BUCKETS = frozenset({CV_BUCKET, CRM_EXPORT_BUCKET})  # the demo's versioned buckets; no Object Lock


def policy_buckets(policy: Policy) -> list[str]:
    """Every bucket the data map's S3 collections name (access packages' included), sorted."""
    return sorted({coll.bucket for system in policy.systems.values() if system.kind == "s3"
                   for coll in system.collections.values()})


def ensure_buckets(s3: Any, policy: Policy | None = None, *,
                   versioned: bool | Collection[str] = VERSIONED_BUCKETS) -> list[str]:
    """Create every bucket the data map names (default: the one RETENTION_POLICY_PATH points at), versioned as
    the demo has them (``versioned``: True for all, or the buckets to version); an existing bucket is kept.
    A world built for the default data map needs every bucket: a subject request reads every collection."""
    if policy is None:
        from include.retention.connections import policy_path
        from include.retention.policy import load_policy

        policy = load_policy(policy_path())
    buckets = policy_buckets(policy)
    for bucket in buckets:
        _create_bucket(s3, bucket, versioned=versioned is True or (versioned is not False and bucket in versioned))
    return buckets


def _create_bucket(s3: Any, bucket: str, *, versioned: bool = False) -> None:
    region = s3.meta.region_name
    extra = {"CreateBucketConfiguration": {"LocationConstraint": region}} if region != "us-east-1" else {}
    try:
        s3.create_bucket(Bucket=bucket, **extra)
    except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        pass
    if versioned:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})


def seed_objects(s3: Any, now: dt.datetime, *, cv_keys: Iterable[str], attachment_keys: Iterable[str],
                 cv_bucket: str = CV_BUCKET, attachment_bucket: str = ATTACHMENT_BUCKET,
                 log_bucket: str = LOG_BUCKET, log_days: int = LOG_DAYS,
                 anonymized_after_days: int | None = ANONYMIZED_AFTER_DAYS,
                 seed: int = DEFAULT_SEED, export_emails: Iterable[str] = (),
                 policy: Policy | None = None) -> dict[str, int]:
    """Create every bucket of the data map (``policy``, default: the configured one) and put the objects;
    returns how many objects per collection (contact exports only for ``export_emails``)."""
    rng = random.Random(seed)
    made = ensure_buckets(s3, policy)  # those left empty too: a subject request reads every collection
    for bucket, versioned in ((cv_bucket, True), (attachment_bucket, False), (log_bucket, False)):
        if bucket not in made:
            _create_bucket(s3, bucket, versioned=versioned)

    puts: list[dict[str, Any]] = []
    cvs = list(cv_keys)
    for key in cvs:
        puts.append({"Bucket": cv_bucket, "Key": key, "Body": b"%PDF-1.7 draft CV\n", "ContentType": "application/pdf"})
    # Second versions go after all first ones: versions of one key must not race each other.
    finals = [{"Bucket": cv_bucket, "Key": key, "Body": b"%PDF-1.7 final CV\n", "ContentType": "application/pdf"}
              for key in cvs]
    attachments = list(attachment_keys)
    for key in attachments:
        puts.append({"Bucket": attachment_bucket, "Key": key, "Body": b"%PDF-1.7 attachment\n",
                     "ContentType": "application/pdf"})
    today = now.astimezone(dt.UTC).date()
    for age in range(1, log_days + 1):
        day = today - dt.timedelta(days=age)
        body = access_log(rng, day)
        extra: dict[str, Any] = {}
        if anonymized_after_days is not None and age > anonymized_after_days:
            body = truncate_ips(body.decode("latin-1")).encode("latin-1")
            marked = dt.datetime.combine(day + dt.timedelta(days=31), dt.time(3), dt.UTC)
            extra["Metadata"] = {ANONYMIZED_META: marked.strftime("%Y-%m-%dT%H:%M:%SZ")}
        key = f"logs/{day:%Y/%m/%d}/{day:%Y-%m-%d}-00-00-00-{rng.getrandbits(64):016X}"
        puts.append({"Bucket": log_bucket, "Key": key, "Body": body, "ContentType": "text/plain", **extra})

    emails = list(export_emails)
    if emails:
        for age in range(1, EXPORT_DAYS + 1):
            day = today - dt.timedelta(days=age)
            puts.append({"Bucket": CRM_EXPORT_BUCKET, "Key": f"exports/contacts/dt={day:%Y-%m-%d}/part-0.parquet",
                         "Body": contact_export(rng, emails, day), "ContentType": "application/vnd.apache.parquet"})

    # One request per object is what S3 offers for uploads; a few threads make it quick.
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda kwargs: s3.put_object(**kwargs), puts))
        list(pool.map(lambda kwargs: s3.put_object(**kwargs), finals))
    counts = {"cvs": len(cvs), "inquiry_attachments": len(attachments), "access_logs": log_days,
              "crm_exports": EXPORT_DAYS if emails else 0}
    log.info("seeded S3: %d CVs (2 versions each), %d attachments, %d daily access logs, %d nightly contact exports",
             *counts.values())
    return counts


def contact_emails(crm: sa.Engine) -> list[str]:
    """The CRM contacts' e-mail addresses, in id order (what the nightly export holds)."""
    from include.retention.demo import schema

    with crm.connect() as conn:
        return list(conn.execute(sa.select(schema.contacts.c.email).where(schema.contacts.c.email.is_not(None))
                                 .order_by(schema.contacts.c.id)).scalars())


def seed_demo_objects(info: Any, crm: sa.Engine, now: dt.datetime, seed: int = DEFAULT_SEED) -> dict[str, int]:
    """Objects for the seeded CRM (the keys its rows reference) and the access logs."""
    from include.retention.demo.seed import crm_object_keys

    keys = crm_object_keys(crm)
    s3, _ = make_client(info)
    try:
        return seed_objects(s3, now, cv_keys=keys["applicants.cv_key"],
                            attachment_keys=keys["inquiries.attachment_key"], seed=seed,
                            export_emails=contact_emails(crm))
    finally:
        s3.close()


def main(argv: list[str] | None = None) -> int:
    from include.retention.runtime import ConnInfo
    from include.retention.stores.sql import make_engine

    parser = argparse.ArgumentParser(description="Put the demo objects into S3 (or an S3-compatible server).")
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint, e.g. http://127.0.0.1:5055")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--access-key", default="demo")
    parser.add_argument("--secret-key", default="demo-secret")
    parser.add_argument("--crm-url", required=True, help="SQLAlchemy URL of the seeded CRM database")
    parser.add_argument("--now", help="ISO 8601 instant the ages count back from (default: now, UTC)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    now = dt.datetime.fromisoformat(args.now) if args.now else dt.datetime.now(dt.UTC)
    info = ConnInfo("aws", login=args.access_key, password=args.secret_key,
                    extra={"endpoint_url": args.endpoint_url, "region_name": args.region})
    crm = make_engine(args.crm_url)
    try:
        seed_demo_objects(info, crm, now)
    finally:
        crm.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
