"""Anonymize server access logs: addresses truncated, every other byte kept, streamed, marked, skipped next time."""

from __future__ import annotations

import datetime as dt

import pytest
from dateutil.relativedelta import relativedelta

from include.retention.masking import parse_ip_prefixes, truncate_ips
from include.retention.stores.s3 import ANONYMIZED_META, S3Store
from tests.s3.conftest import NOW, PLAIN, VERSIONED, keys, put, s3_policy, snapshot, tags, versions

# Lines as S3 server access logs write them, plus the awkward cases: CRLF, UTF-8, no final newline.
LOG = (
    b'79a59df9 plain-bucket [06/Feb/2026:00:00:38 +0000] 192.0.2.17 arn:aws:iam::123456789012:user/x '
    b'3E57427F REST.GET.OBJECT cv.pdf "GET /cv.pdf HTTP/1.1" 200 - 113 113 7 - "-" "curl/8.4.0" -\n'
    b'79a59df9 plain-bucket [06/Feb/2026:00:01:02 +0000] 2001:db8:abcd:12::5 - 891CE47D REST.GET.OBJECT - '
    b'"GET /?x=198.51.100.250 HTTP/1.1" 200 - - - 1 - "-" "Mozilla/5.0 (J\xc3\xbcrgen)" -\r\n'
    b"no address here, just 12:30:45, aa:bb:cc:dd:ee:ff and v1.2.3.4.5\n"
    b"\n"
    b"bracketed [2001:DB8:1234:5678::abcd]:443, mapped ::ffff:203.0.113.9, port 198.51.100.7:8080.\n"
    b"last line 203.0.113.77 without newline"
)
# The independent oracle: each full address and what it must become.
TRUNCATED = {
    b"192.0.2.17": b"192.0.2.0",
    b"2001:db8:abcd:12::5": b"2001:db8:abcd::",
    b"198.51.100.250": b"198.51.100.0",
    b"2001:DB8:1234:5678::abcd": b"2001:db8:1234::",
    b"::ffff:203.0.113.9": b"::ffff:203.0.113.0",  # an IPv4-mapped address is masked as the IPv4 it is
    b"198.51.100.7": b"198.51.100.0",
    b"203.0.113.77": b"203.0.113.0",
}


def expected(content: bytes) -> bytes:
    for full, short in TRUNCATED.items():
        content = content.replace(full, short)
    return content


LOGS = """\
access_logs:
  bucket: {bucket}
  prefix: logs/
  key_template: "logs/{{yyyy}}/{{mm}}/{{dd}}/..."
  categories: []
  rules:
    - name: server_logs
      start: {{basis: key_date}}
      stages:
        - {{action: anonymize, after: P30D, mask: {{ip: {{strategy: truncate_ip}}}}}}
        - {{action: delete, after: P12M}}
"""


def logs_policy(bucket: str = PLAIN):
    return s3_policy(LOGS.format(bucket=bucket))


def log_keys(start: dt.date, months: int) -> list[str]:
    return [f"logs/{d:%Y/%m/%d}/access-{d:%Y-%m-%d}.log"
            for d in (start + relativedelta(months=i) for i in range(months))]


class Records(list):
    def __call__(self, action, count, pk_digest, details):
        self.append((action, count))


def _run(store: S3Store, action: str, now: dt.datetime = NOW, collection: str = "access_logs"):
    rule = store.policy.rule(f"objects.{collection}.server_logs")[2]
    stage = next(s for s in rule.stages if s.action == action)
    return store.apply_stage(collection, rule, stage, now, 1000, "retention:test", Records())


def test_truncate_ips_oracle_agrees():
    assert truncate_ips(LOG.decode("latin-1")).encode("latin-1") == expected(LOG)
    assert truncate_ips("10.1.2.3 2001:db8:1:2::1", parse_ip_prefixes("16/32")) == "10.1.0.0 2001:db8::"
    with pytest.raises(ValueError, match="24/48"):
        parse_ip_prefixes("24/abc")


@pytest.mark.parametrize(("text", "prefixes", "masked"), [
    ("::ffff:192.0.2.33", "24/48", "::ffff:192.0.2.0"),
    ("::FFFF:192.0.2.33", "24/48", "::ffff:192.0.2.0"),
    ("::ffff:c000:221", "24/48", "::ffff:192.0.2.0"),            # the same address in hex
    ("[::ffff:198.51.100.7]:443 ok", "24/48", "[::ffff:198.51.100.0]:443 ok"),
    ("client ::ffff:203.0.113.200.", "16/48", "client ::ffff:203.0.0.0."),
    ("::ffff:10.9.8.7", "32/0", "::ffff:10.9.8.7"),                # the IPv4 prefix applies, not the IPv6 one
    ("::ffff:0:192.0.2.33", "24/48", "::"),                       # IPv4-translated (not mapped): plain IPv6
    ("64:ff9b::192.0.2.33", "24/48", "64:ff9b::"),
])
def test_ipv4_mapped_ipv6_is_masked_as_ipv4(text, prefixes, masked):
    assert truncate_ips(text, parse_ip_prefixes(prefixes)) == masked


def test_logs_are_rewritten_exactly_and_marked(s3, make_store):
    store = make_store(logs_policy())
    all_keys = log_keys(dt.date(2025, 4, 1), 15) + ["logs/2026/06/14/access-2026-06-14.log"]
    for key in all_keys:
        put(s3, PLAIN, key, LOG, ContentType="text/plain", Tagging="source=s3-access-log",
            Metadata={"origin": "cdn"})
    rule = store.policy.rule("objects.access_logs.server_logs")[2]
    # NOW is 2026-06-15: logs before 2025-06-15 are past 12 months, those before 2026-05-16 past 30 days.
    deleted = [k for k in all_keys if k < "logs/2025/06/15"]
    anonymized = [k for k in all_keys if "logs/2025/06/15" <= k < "logs/2026/05/16"]
    young = [k for k in all_keys if k >= "logs/2026/05/16"]
    assert (len(deleted), len(anonymized), len(young)) == (3, 11, 2)

    plan = store.plan("access_logs", rule, NOW)
    assert (plan.total, plan.eligible) == (16, {"anonymize": 11, "delete": 3})

    assert _run(store, "delete").changed == 3
    result = _run(store, "anonymize")

    assert (result.changed, result.batches) == (11, 1)
    assert keys(s3, PLAIN) == sorted(anonymized + young)
    for key in anonymized:
        obj = s3.get_object(Bucket=PLAIN, Key=key)
        body = obj["Body"].read()
        assert body == expected(LOG)  # every byte but the addresses' own is unchanged
        assert not any(full in body or full.lower() in body for full in TRUNCATED)
        assert obj["ContentType"] == "text/plain"
        assert obj["Metadata"]["origin"] == "cdn" and obj["Metadata"][ANONYMIZED_META] == "2026-06-15T12:00:00Z"
        assert tags(s3, PLAIN, key) == {"source": "s3-access-log"}
    for key in young:
        assert s3.get_object(Bucket=PLAIN, Key=key)["Body"].read() == LOG

    # The next run skips what is already anonymized.
    state = snapshot(s3, PLAIN)
    again = store.plan("access_logs", rule, NOW)
    assert (again.eligible, again.already) == ({"anonymize": 0, "delete": 0}, 11)
    assert _run(store, "anonymize").changed == 0
    assert snapshot(s3, PLAIN) == state


def test_large_log_streams_through_a_multipart_upload(s3, make_store):
    part = 5 * 1024 * 1024  # S3's smallest part
    store = make_store(logs_policy(), part_size=part)
    big = LOG.replace(b"without newline", b"with newline\n") * (3 * part // 2 // len(LOG)) + LOG
    put(s3, PLAIN, "logs/2026/01/10/big.log", big)
    uploads: list[str] = []
    store.client.meta.events.register("before-call.s3.UploadPart", lambda **_: uploads.append("part"))
    store.client.meta.events.register("before-call.s3.PutObject", lambda **_: uploads.append("put"))

    assert _run(store, "anonymize").changed == 1

    assert uploads == ["part", "part"]  # no PutObject: never whole in memory
    body = s3.get_object(Bucket=PLAIN, Key="logs/2026/01/10/big.log")["Body"].read()
    assert body == expected(big)


def test_versioned_log_keeps_no_version_with_full_addresses(s3, make_store):
    store = make_store(logs_policy(VERSIONED))
    put(s3, VERSIONED, "logs/2026/01/10/a.log", LOG.replace(b"192.0.2.17", b"192.0.2.99"))
    put(s3, VERSIONED, "logs/2026/01/10/a.log", LOG)
    put(s3, VERSIONED, "logs/2026/01/10/a.log.bak", LOG)  # another key sharing the prefix: its own rule run

    assert _run(store, "anonymize").changed == 2

    left = [(k, v) for k, v, _ in versions(s3, VERSIONED)]
    assert [k for k, _ in left] == ["logs/2026/01/10/a.log", "logs/2026/01/10/a.log.bak"]
    for key, vid in left:
        assert s3.get_object(Bucket=VERSIONED, Key=key, VersionId=vid)["Body"].read() == expected(LOG)


def test_failed_rewrite_leaves_the_object_unchanged(s3, make_store):
    part = 5 * 1024 * 1024
    store = make_store(logs_policy(), part_size=part)
    put(s3, PLAIN, "logs/2026/01/10/big.log", LOG * (3 * part // 2 // len(LOG)))
    before = snapshot(s3, PLAIN)

    def fail(**_):
        raise RuntimeError("network gone mid-upload")

    store.client.meta.events.register("before-call.s3.CompleteMultipartUpload", fail)
    with pytest.raises(RuntimeError):
        _run(store, "anonymize")

    assert snapshot(s3, PLAIN) == before
    assert s3.list_multipart_uploads(Bucket=PLAIN).get("Uploads", []) == []  # aborted, not left behind
