"""`make bench`, issue 26: erase people from Parquet inside S3 objects against a raw pyarrow loop, in the same run.

    scripts/bench_records.py [MEGABYTES] [--people 100] [--objects N] [--row-group ROWS]

Starts moto's server in its own process (real HTTP; the objects live there, not in a measured process) and
uploads MEGABYTES (default 100; 1024 at BENCH_SIZE=full) of Parquet, zstd, under ``events/dt=.../part-0.parquet``:
event records of 50,000 people (e-mail, time, event, page, session id, amount), row groups of ROW_GROUP rows.
PEOPLE of them (default 100) have records in every object. Then, each in a child process whose peak RSS the
child reports (its ``VmHWM``):

- **raw**: the loop a script would run: per object ``get_object``, per row group ``pc.is_in`` on the e-mail
  column and ``filter``, a ``ParquetWriter`` with the same codec, ``put_object``;
- **product**: one erasure of the PEOPLE (``SubjectScanner.act(..., "erase")``: find by reading the e-mail
  column of every object, then per object one download to disk, the rewrite from there to a local file,
  judged and checked against ``Expected`` in the same pass, the check's re-read of that file, its upload
  (ETag compared with the checked bytes' MD5), the copy over the original);
- **baseline**: the same erasure of one of them from one object of 50 records in another bucket (the constant
  the RSS target allows: the interpreter, the modules the erasure loads, its clients).

After each of raw and product every object is read back and compared with what was generated minus the
PEOPLE's records (``Table.equals``: 0 records of anyone else changed, or the script exits 1); the originals
are uploaded again in between.

Targets: product bytes/s (the objects' size over the erasure's seconds) >= 0.7x the raw loop's; the product's
peak RSS above the baseline's < 2x the largest row group (its Arrow size in memory). ``--results FILE``: both
ratios as JSON for scripts/bench_summary.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.bench_summary import result, verdict, write_results  # noqa: E402

SPEED_TARGET = 0.7
RSS_TARGET = 2.0
BUCKET, TINY = "bench-lake", "bench-tiny"
PREFIX = "events/"
USERS = 50_000
KEY = b"k" * 32
DAY0 = dt.date(2026, 5, 1)
POLICY = """
defaults: {{max_fraction: 1.0, batch_size: 1000}}
systems:
  lake:
    kind: s3
    connection: lake_s3
    collections:
      events:
        bucket: {bucket}
        key_template: "events/dt={{yyyy}}-{{mm}}-{{dd}}/..."
        format: parquet
        identities: {{email: "record:email"}}
"""


def email(user: int) -> str:
    return f"user{user}@example.org"


def people(n: int) -> list[str]:
    """The people to erase: every 500th user (their records are in every object)."""
    return [email(u) for u in range(0, USERS, USERS // n)][:n]


def object_key(i: int) -> str:
    return f"{PREFIX}dt={DAY0 + dt.timedelta(days=i):%Y-%m-%d}/part-0.parquet"


def generate(i: int, rows: int) -> Any:
    """Object ``i``'s table (deterministic: the check regenerates it)."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(i)
    users = rng.integers(0, USERS, rows)
    start = np.datetime64(f"{DAY0 + dt.timedelta(days=i)}T00:00:00", "us")
    emails = pa.array(np.char.add(np.char.add("user", users.astype(str)), "@example.org"))
    sessions = pa.array(np.char.mod("%016x", rng.integers(0, 2**62, rows)))
    return pa.table({
        "email": emails,
        "ts": pa.array(start + np.sort(rng.integers(0, 86_400_000_000, rows)).astype("timedelta64[us]")),
        "event": pa.array(np.array(["view", "click", "cart", "buy"])[rng.integers(0, 4, rows)]),
        "page": pa.array(np.char.add("/p/", rng.integers(0, 5000, rows).astype(str))),
        "session": sessions,
        "amount": pa.array(np.round(rng.random(rows) * 200, 2)),
    })


def encode(table: Any, row_group: int) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group, compression="zstd")
    return buf.getvalue()


def client(url: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="bench",
                        aws_secret_access_key="bench")


# ---- the children (each measured in its own process) ---------------------------------------------------
def child_raw(url: str, wanted: list[str]) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    s3 = client(url)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX)
            for o in page.get("Contents", [])]
    values = pa.array(wanted)
    t0 = time.perf_counter()
    size = removed = 0
    for key in keys:
        data = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        size += len(data)
        pf = pq.ParquetFile(io.BytesIO(data))
        out = io.BytesIO()
        codec = pf.metadata.row_group(0).column(0).compression.lower()
        with pq.ParquetWriter(out, pf.schema_arrow, compression=codec) as writer:
            for g in range(pf.metadata.num_row_groups):
                table = pf.read_row_group(g)
                kept = table.filter(pc.invert(pc.is_in(table["email"], value_set=values)))
                removed += table.num_rows - kept.num_rows
                writer.write_table(kept, row_group_size=max(kept.num_rows, 1))
        s3.put_object(Bucket=BUCKET, Key=key, Body=out.getvalue())
    return {"seconds": time.perf_counter() - t0, "bytes": size, "removed": removed}


def child_product(url: str, wanted: list[str], profile: str | None, bucket: str = BUCKET) -> dict[str, Any]:
    import pyarrow.compute  # noqa: F401 - imported before the clock starts, as the raw loop's are
    import pyarrow.parquet  # noqa: F401

    from include.retention.policy import parse_policy
    from include.retention.requests.scanner import SubjectScanner
    from include.retention.runtime import ConnInfo
    from include.retention.stores.base import Subject
    from include.retention.stores.s3 import S3Store

    policy = parse_policy(POLICY.format(bucket=bucket))
    info = ConnInfo("aws", login="bench", password="bench", extra={"endpoint_url": url, "region_name": "us-east-1"})
    store = S3Store.from_conn("lake", policy, info, key=KEY)
    s3 = client(url)
    size = sum(o["Size"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX)
               for o in page.get("Contents", []))
    subjects = [Subject(f"r{i}", {"email": address}) for i, address in enumerate(wanted)]
    scanner = SubjectScanner(policy, store)
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    t0 = time.perf_counter()
    outcome = scanner.act(subjects, "erase", dry_run=False)
    seconds = time.perf_counter() - t0
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    removed = sum(counts.get("deleted", 0) for per in outcome.per_request.values() for counts in per.values())
    store.close()
    return {"seconds": seconds, "bytes": size, "removed": removed}


def peak_kib() -> int:
    """This process's peak RSS (VmHWM: since its exec, so not the parent's pages it was forked with)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measured(url: str, mode: str, wanted: list[str], profile: str | None = None) -> tuple[dict[str, Any], float]:
    """Run a child; its result and peak RSS in MiB."""
    args = [sys.executable, __file__, "--child", mode, "--url", url, "--wanted", json.dumps(wanted)]
    proc = subprocess.Popen(args + (["--profile", profile] if profile else []), stdout=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None
    out = proc.stdout.read()
    if proc.wait():
        raise SystemExit(f"the {mode} child failed (status {proc.returncode})")
    data = json.loads(out)
    return data, data["peak_kib"] / 1024


# ---- the parent ------------------------------------------------------------------------------------
class MotoProcess:
    """moto's server in its own process: the objects it holds count against no measured process."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/").close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise SystemExit("moto's server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def upload(url: str, blobs: list[bytes]) -> None:
    import pyarrow as pa

    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST")).close()
    s3 = client(url)
    s3.create_bucket(Bucket=BUCKET)
    for i, blob in enumerate(blobs):
        s3.put_object(Bucket=BUCKET, Key=object_key(i), Body=blob)
    s3.create_bucket(Bucket=TINY)
    tiny = generate(0, 50)
    tiny = tiny.set_column(0, "email", pa.array([email(0)] + tiny["email"].to_pylist()[1:]))
    s3.put_object(Bucket=TINY, Key=object_key(0), Body=encode(tiny, 50))
    s3.close()


def check(url: str, count: int, rows: int, wanted: list[str], removed: int, who: str) -> list[str]:
    """Every object equals what was generated minus the people's records; the count removed is theirs."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    s3 = client(url)
    problems, theirs = [], 0
    values = pa.array(wanted)
    for i in range(count):
        table = generate(i, rows)
        mask = pc.is_in(table["email"], value_set=values)
        theirs += pc.sum(mask).as_py() or 0
        expected = table.filter(pc.invert(mask))
        got = pq.read_table(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=object_key(i))["Body"].read()))
        if not got.equals(expected):
            problems.append(f"{who}: object {i} differs from the original without their records "
                            f"({got.num_rows} rows, {expected.num_rows} meant)")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])]
    if len(keys) != count:
        problems.append(f"{who}: {len(keys)} objects in the bucket, {count} meant")
    if removed != theirs:
        problems.append(f"{who}: {removed} records removed, {theirs} are theirs")
    s3.close()
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("megabytes", nargs="?", type=float, default=100.0)
    ap.add_argument("--people", type=int, default=100)
    ap.add_argument("--objects", type=int, default=0, help="objects to spread the data over (default: 10 MB each)")
    ap.add_argument("--row-group", type=int, default=128_000, help="rows per row group")
    ap.add_argument("--profile", help="cProfile the product's erasure into this file")
    ap.add_argument("--results")
    ap.add_argument("--child", choices=["raw", "product", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--wanted", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        wanted = json.loads(args.wanted or "[]")
        out = (child_raw(args.url, wanted) if args.child == "raw" else
               child_product(args.url, wanted, args.profile) if args.child == "product" else
               child_product(args.url, wanted[:1], None, TINY))
        print(json.dumps({**out, "peak_kib": peak_kib()}))
        return 0

    started = time.time()
    import pyarrow.parquet as pq

    bytes_per_row = 23.5  # zstd Parquet of these columns, measured
    total_rows = int(args.megabytes * 2**20 / bytes_per_row)
    count = args.objects or max(1, round(args.megabytes / 10))
    rows = max(1, total_rows // count)
    wanted = people(args.people)
    blobs = [encode(generate(i, rows), args.row_group) for i in range(count)]
    size = sum(map(len, blobs))
    meta = pq.ParquetFile(io.BytesIO(blobs[0])).metadata
    largest = max(pq.ParquetFile(io.BytesIO(blobs[0])).read_row_group(g).nbytes for g in range(meta.num_row_groups))
    print(f"{count} Parquet objects, {size / 2**20:,.1f} MiB, {count * rows:,} records in row groups of "
          f"{args.row_group:,} rows (largest {largest / 2**20:,.1f} MiB in memory); erasing {len(wanted)} people "
          "(their records in every object)", flush=True)
    moto = MotoProcess()
    problems: list[str] = []
    try:
        upload(moto.url, blobs)
        base, base_rss = measured(moto.url, "baseline", wanted)
        raw, raw_rss = measured(moto.url, "raw", wanted)
        problems += check(moto.url, count, rows, wanted, raw["removed"], "raw loop")
        upload(moto.url, blobs)
        product, product_rss = measured(moto.url, "product", wanted, args.profile)
        problems += check(moto.url, count, rows, wanted, product["removed"], "erasure")
    finally:
        moto.stop()
    del blobs
    raw_bps, product_bps = raw["bytes"] / raw["seconds"], product["bytes"] / product["seconds"]
    speed = product_bps / raw_bps
    above = max(product_rss - base_rss, 0.0) * 2**20
    rss_ratio = above / largest
    print(f"{'':9} {'seconds':>8} {'MiB/s':>7} {'removed':>8} {'peak RSS MiB':>12}")
    print(f"{'raw loop':9} {raw['seconds']:8.2f} {raw_bps / 2**20:7.1f} {raw['removed']:8,} {raw_rss:12.1f}")
    print(f"{'erasure':9} {product['seconds']:8.2f} {product_bps / 2**20:7.1f} {product['removed']:8,} "
          f"{product_rss:12.1f}")
    print(f"{'baseline':9} {'':8} {'':7} {'':8} {base_rss:12.1f}  (one of them erased from 50 records)")
    print(f"erasure bytes/s / raw loop bytes/s: {verdict(speed, '>=', SPEED_TARGET)}")
    print(f"erasure peak RSS above the baseline / largest row group: {verdict(rss_ratio, '<', RSS_TARGET)}")
    for problem in problems:
        print(f"OUTCOME: {problem}")
    print(f"outcome check: {'FAILED' if problems else 'OK'} (every object read back: nobody else's record changed)")
    mb = f"{size / 2**20:,.0f} MiB"
    write_results(args.results, "bench_records.py", [
        result(f"Parquet erasure bytes/s vs raw pyarrow loop, {mb}", speed, ">=", SPEED_TARGET,
               raw_s=round(raw["seconds"], 2), product_s=round(product["seconds"], 2)),
        result(f"Parquet erasure peak RSS / largest row group, {mb}", rss_ratio, "<", RSS_TARGET,
               rss_mb=round(product_rss, 1), baseline_mb=round(base_rss, 1))], started)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
