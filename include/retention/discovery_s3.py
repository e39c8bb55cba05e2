"""Discovery for an S3 system: prefixes the connection can list that no collection covers, and what sampled
objects hold (metadata and tag keys, the first kilobytes of text), classified as SQL columns are. No Airflow.

Listing is bounded (``MAX_KEYS_PER_BUCKET``), so is sampling (``OBJECTS_PER_PREFIX`` objects, ``HEAD_BYTES`` of
each); a finding names bucket, prefix and field, never a key below the prefix or a value.
"""

from __future__ import annotations

import time
from typing import Any

from include.retention.classify import classify, name_hint
from include.retention.discovery import SECONDS_PER_SYSTEM, Finding, Report, unsearched_identities
from include.retention.policy import Collection, Policy, s3_prefix
from include.retention.progress import Steps

MAX_KEYS_PER_BUCKET = 10_000
OBJECTS_PER_PREFIX = 5
HEAD_BYTES = 4096
TEXT_TYPES = ("text/", "application/json", "application/x-ndjson", "application/csv")


def covering(policy: Policy, system: str) -> dict[str, list[tuple[str, str, Collection]]]:
    """bucket -> [(prefix, collection name, collection)] of an S3 system."""
    out: dict[str, list[tuple[str, str, Collection]]] = {}
    for name, coll in policy.systems[system].collections.items():
        if coll.bucket:
            out.setdefault(coll.bucket, []).append((s3_prefix(coll), name, coll))
    return out


def _others(policy: Policy, system: str) -> dict[str, list[str]]:
    """bucket -> prefixes the data map's other S3 systems cover (their discovery reads them, not this one's)."""
    out: dict[str, list[str]] = {}
    for name, other in policy.systems.items():
        if name != system and other.kind == "s3":
            for bucket, covered in covering(policy, name).items():
                out.setdefault(bucket, []).extend(prefix for prefix, _, _ in covered)
    return out


def _group(key: str) -> str:
    """The prefix a key is reported under: its first path segment (``exports/2026/a.csv`` -> ``exports/``)."""
    head, sep, _ = key.partition("/")
    return head + sep if sep else ""


def _lines(body: bytes) -> list[str]:
    text = body.decode("utf-8", "replace")
    lines = text.splitlines()
    if len(body) >= HEAD_BYTES and lines:
        lines = lines[:-1]  # the cut-off last line
    return [line for line in lines if line.strip()]


def _declared_metadata(coll: Collection) -> set[str]:
    return {fld.column.split(":", 1)[1].lower() for _, fld in coll.identity_fields()
            if fld.column.startswith(("metadata:", "tag:"))}


def discover_s3(policy: Policy, system: str, client: Any, *, buckets: list[str] | None = None,
                seconds: float = SECONDS_PER_SYSTEM) -> Report:
    """Compare what ``client`` can list with the S3 system's collections; sample what none covers."""
    report = Report(system)
    cover, others = covering(policy, system), _others(policy, system)
    if buckets is None:
        try:
            listed_buckets = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        except client.exceptions.ClientError:  # ListAllMyBuckets denied: the data map's buckets
            listed_buckets = set()
        # a bucket only another S3 system of the data map names is that system's (often the same connection)
        buckets = sorted((listed_buckets - set(others)) | set(cover))
    started = time.monotonic()
    steps = Steps(f"discovery of {system}", len(buckets), "buckets")
    for bucket in buckets:
        unmapped: dict[str, list[str]] = {}
        mapped: dict[str, list[str]] = {}
        listed = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                listed += 1
                owner = next((name for prefix, name, _ in cover.get(bucket, []) if obj["Key"].startswith(prefix)),
                             None)
                if owner is None and any(obj["Key"].startswith(prefix) for prefix in others.get(bucket, ())):
                    continue  # another system's collection
                target = mapped.setdefault(owner, []) if owner else unmapped.setdefault(_group(obj["Key"]), [])
                if len(target) < OBJECTS_PER_PREFIX:
                    target.append(obj["Key"])
            if listed >= MAX_KEYS_PER_BUCKET:
                report.not_sampled.append(f"{bucket}: listing stopped after {listed} keys")
                break
        report.columns_seen += listed
        for prefix, keys in sorted(unmapped.items()):
            if time.monotonic() - started > seconds:
                report.not_sampled.append(f"{bucket}/{prefix}")
                continue
            report.findings += _sample_prefix(client, system, bucket, prefix, keys, report, declared=set(),
                                              content=True)
        for name, keys in sorted(mapped.items()):
            if time.monotonic() - started > seconds:
                report.not_sampled.append(f"{bucket}/{name}")
                continue
            coll = policy.systems[system].collections[name]
            report.findings += _sample_prefix(client, system, bucket, s3_prefix(coll), keys, report,
                                              declared=_declared_metadata(coll), content=False)
        steps.step(bucket, f"{listed} object(s) listed")
    report.findings += unsearched_identities(policy, system)
    return report


def _sample_prefix(client: Any, system: str, bucket: str, prefix: str, keys: list[str], report: Report, *,
                   declared: set[str], content: bool) -> list[Finding]:
    """Findings for one prefix: ``content`` (an unmapped prefix: the objects' text and the prefix itself) and
    metadata / tag keys a collection does not declare."""
    fields: dict[str, list[str]] = {}
    lines: list[str] = []
    for key in keys:
        head = client.head_object(Bucket=bucket, Key=key)
        for name, value in (head.get("Metadata") or {}).items():
            fields.setdefault(f"metadata:{name.lower()}", []).append(value)
        for tag in client.get_object_tagging(Bucket=bucket, Key=key).get("TagSet", []):
            fields.setdefault(f"tag:{tag['Key'].lower()}", []).append(tag["Value"])
        if content and (head.get("ContentType", "").startswith(TEXT_TYPES) or
                        key.endswith((".csv", ".json", ".jsonl", ".ndjson", ".txt", ".log"))):
            body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{HEAD_BYTES - 1}")["Body"].read()
            lines += _lines(body)
        report.columns_sampled += 1
    where = f"{bucket}/{prefix}"
    out: list[Finding] = []
    kind = "unmapped_prefix" if content else "unmapped_metadata"
    for fname, values in sorted(fields.items()):
        if fname.split(":", 1)[1] in declared:
            continue
        hit = classify(fname.split(":", 1)[1], values)
        if hit:
            out.append(Finding(system, where, fname, kind, hit.classifier, hit.hit_rate, hit.sample_size))
    if content and lines:
        hit = classify("", lines)
        del lines
        if hit:
            out.append(Finding(system, where, "content", kind, hit.classifier, hit.hit_rate, hit.sample_size))
    if content and not out and name_hint(prefix.strip("/")):
        out.append(Finding(system, where, "", kind, f"name:{name_hint(prefix.strip('/'))}"))
    return out
