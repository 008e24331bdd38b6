"""Object-storage benchmark: spacefs's S3 path against Lance, on one local S3 server.

Both systems talk to the same S3-compatible server (moto's, started here on 127.0.0.1,
or any endpoint given with ``--endpoint`` such as a local MinIO) and every figure comes
with the number of HTTP requests it cost, read from the server's request log:

- write: N records of ``--record-bytes`` packed into one object (how a record file
  reaches the bucket) vs ``lance.write_dataset`` of the same rows;
- cold random reads of ``--take`` records: through a fresh chunk cache (engine/chunkcache.py),
  straight through ``read_ranges`` (coalesced, parallel, no cache), and Lance's ``take`` on a
  freshly opened dataset;
- warm random reads: the same records again through the filled cache (no request at all).

moto is an in-process Python server, far slower per request than S3 and with no network
latency: the request counts are what carries over to a real store, the times much less.

    .venv/bin/python scripts/bench/objectstore.py            # 10,000 records of 4 KiB
    .venv/bin/python scripts/bench/objectstore.py --quick    # smoke run, seconds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import lance
import numpy as np
import pyarrow as pa

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests"))

from common import make_blobs  # noqa: E402
from s3_util import MotoServer  # noqa: E402

from spacefs import Dataset, RandomAccessDataSource  # noqa: E402
from spacefs.engine.backend import backend_for  # noqa: E402
from spacefs.engine.chunkcache import ChunkCache  # noqa: E402


class Requests:
    """Counts the HTTP requests an operation cost, from the moto server's log."""

    def __init__(self, server: MotoServer | None):
        self.server = server

    def settle(self) -> int:
        # The server logs a request after answering it: wait (bounded) for the log to stop growing.
        if self.server is None:
            return 0
        last, deadline = -1, time.monotonic() + 5
        while time.monotonic() < deadline:
            size = self.server.mark()
            if size == last:
                return size
            last = size
            time.sleep(0.1)
        return last

    def count(self, fn):
        start = self.settle()
        t = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - t
        self.settle()
        reqs = self.server.requests(start) if self.server else {}
        return out, elapsed, reqs


def fmt_reqs(r: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(r.items())) or "none"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=10_000)
    ap.add_argument("--record-bytes", type=int, default=4096)
    ap.add_argument("--take", type=int, default=2_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk-size", type=int, default=1 << 20)
    ap.add_argument("--endpoint", help="an S3 endpoint to use instead of starting moto (credentials from AWS_*)")
    ap.add_argument("--bucket", help="an existing bucket (with --endpoint)")
    ap.add_argument("--quick", action="store_true", help="2,000 records, 500 taken, one repeat")
    a = ap.parse_args()
    if a.quick:
        a.records, a.take, a.repeats = 2_000, 500, 1

    server = None
    if a.endpoint:
        os.environ["AWS_ENDPOINT_URL"] = a.endpoint
        bucket = a.bucket or sys.exit("--endpoint needs --bucket")
    else:
        server = MotoServer()
        server.start()
        os.environ.update(server.env)
        bucket = server.create_bucket("bench")
    req = Requests(server)
    try:
        run(a, bucket, req)
    finally:
        if server:
            server.stop()


def run(a, bucket: str, req: Requests) -> None:
    n, size = a.records, a.record_bytes
    blobs = make_blobs(n, size)
    payload = blobs.buffers()[2].to_pybytes()[: n * size]
    offsets = np.arange(n, dtype=np.int64) * size
    rng = np.random.default_rng(0)
    rows: list[tuple[str, str, str]] = []

    sp = backend_for(f"s3://{bucket}/spacefs")
    _, t_put, r_put = req.count(lambda: sp.put("data/records/blob/0.array_record", payload))
    storage_options = {"aws_endpoint": os.environ["AWS_ENDPOINT_URL"], "allow_http": "true",
                       "aws_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID", ""),
                       "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
                       "aws_region": os.environ.get("AWS_REGION", "us-east-1")}
    table = pa.table({"id": pa.array(np.arange(n)), "blob": blobs})
    lance_uri = f"s3://{bucket}/lance"
    _, t_lw, r_lw = req.count(lambda: lance.write_dataset(table, lance_uri, storage_options=storage_options))
    rows.append((f"write {n:,} x {size} B", f"{t_put:.3f}s ({fmt_reqs(r_put)})", f"{t_lw:.3f}s ({fmt_reqs(r_lw)})"))

    cold, direct, warm, lance_t = [], [], [], []
    r_cold = r_direct = r_warm = r_lance = {}
    for rep in range(a.repeats):
        ids = np.sort(rng.choice(n, a.take, replace=False))
        ranges = [(int(offsets[i]), size) for i in ids]
        want = [payload[s:s + ln] for s, ln in ranges]
        with tempfile.TemporaryDirectory(prefix="spacefs-cache-") as cdir:
            cache = ChunkCache(cdir, cache_size=4 * n * size + a.chunk_size, chunk_size=a.chunk_size)
            got, t, r_cold = req.count(lambda c=cache, r=ranges: c.read_ranges(sp, "data/records/blob/0.array_record", r))
            assert got == want, "cached read returned wrong bytes"
            cold.append(t)
            got, t, r_warm = req.count(lambda c=cache, r=ranges: c.read_ranges(sp, "data/records/blob/0.array_record", r))
            assert got == want
            warm.append(t)
        got, t, r_direct = req.count(lambda r=ranges: sp.read_ranges("data/records/blob/0.array_record", r))
        assert got == want
        direct.append(t)
        taken, t, r_lance = req.count(
            lambda i=ids: lance.dataset(lance_uri, storage_options=storage_options).take(i, columns=["blob"]))
        assert taken.column("blob").to_pylist() == want, "lance returned other rows"
        lance_t.append(t)
        print(f"repeat {rep + 1}/{a.repeats} done", file=sys.stderr)

    med = statistics.median
    rows.append((f"cold take {a.take:,} (chunk cache)", f"{med(cold):.3f}s ({fmt_reqs(r_cold)})",
                 f"{med(lance_t):.3f}s ({fmt_reqs(r_lance)})"))
    rows.append((f"cold take {a.take:,} (read_ranges, no cache)", f"{med(direct):.3f}s ({fmt_reqs(r_direct)})", ""))
    rows.append((f"warm take {a.take:,} (chunk cache)", f"{med(warm):.4f}s ({fmt_reqs(r_warm)})", ""))
    w = max(len(r[0]) for r in rows)
    print(f"\n{'operation':<{w}}  {'spacefs':<40}  lance")
    for name, s, ln in rows:
        print(f"{name:<{w}}  {s:<40}  {ln}")
    print(f"\nratios (spacefs / lance, < 1 is faster): write {t_put / t_lw:.2f}x, "
          f"cold take via cache {med(cold) / med(lance_t):.2f}x, via read_ranges {med(direct) / med(lance_t):.2f}x; "
          f"warm/cold {med(warm) / med(cold):.3f}x")
    run_dataset(a, bucket, req, table, lance_uri, storage_options, t_lw, r_lw)


def run_dataset(a, bucket: str, req: Requests, table: pa.Table, lance_uri: str, storage_options: dict,
                t_lw: float, r_lw: dict) -> None:
    """The same rows through the whole engine: a spacefs dataset in the bucket (create +
    append, full scan, RandomAccessDataSource cold and warm, a one-row commit) against
    the Lance dataset written above."""
    n = table.num_rows
    uri = f"s3://{bucket}/spacefs-ds"

    def write():
        ds = Dataset.create(uri, table.schema, primary_keys=["id"], record_fields=["blob"])
        ds.local().append(table)

    _, t_w, r_w = req.count(write)
    want = table.sort_by("id")
    rng = np.random.default_rng(1)
    scan, lscan, cold, warm, ltake, commit, lcommit = [], [], [], [], [], [], []
    r = {}
    for rep in range(a.repeats):
        got, t, r["scan"] = req.count(lambda: Dataset.load(uri).local().read_all())
        # Each repeat commits one more row (id >= n) below.
        assert got.sort_by("id").slice(0, n).equals(want) and got.num_rows == n + rep, "spacefs scan: other rows"
        scan.append(t)
        got, t, r["lscan"] = req.count(lambda: lance.dataset(lance_uri, storage_options=storage_options).to_table())
        assert got.num_rows == n + rep
        lscan.append(t)
        ids = rng.choice(n, a.take, replace=False)
        expect = table.column("blob").take(pa.array(ids)).to_pylist()
        with tempfile.TemporaryDirectory(prefix="spacefs-cache-") as cdir:
            def cold_take(i=ids, c=cdir):
                src = RandomAccessDataSource({"blob": uri}, cache_dir=c)
                return src, src.__getitems__(i)

            (src, got), t, r["cold"] = req.count(cold_take)
            assert got == expect, "spacefs take returned other rows"
            cold.append(t)
            got, t, r["warm"] = req.count(lambda s=src, i=ids: s.__getitems__(i))
            assert got == expect
            warm.append(t)
            src.close()
        taken, t, r["ltake"] = req.count(
            lambda i=ids: lance.dataset(lance_uri, storage_options=storage_options).take(i, columns=["blob"]))
        assert taken.column("blob").to_pylist() == expect, "lance returned other rows"
        ltake.append(t)
        one = pa.table({"id": pa.array([n + rep], pa.int64()), "blob": pa.array([b"x"], table.schema.field("blob").type)})
        _, t, r["commit"] = req.count(lambda o=one: Dataset.load(uri).local().append(o))
        commit.append(t)
        _, t, r["lcommit"] = req.count(
            lambda o=one: lance.write_dataset(o, lance_uri, mode="append", storage_options=storage_options))
        lcommit.append(t)
        print(f"dataset repeat {rep + 1}/{a.repeats} done", file=sys.stderr)

    med = statistics.median
    rows = [
        (f"create + append {n:,} rows", t_w, r_w, t_lw, r_lw),
        ("full scan (open + read_all / to_table)", med(scan), r["scan"], med(lscan), r["lscan"]),
        (f"random access {a.take:,} rows, cold (open + take)", med(cold), r["cold"], med(ltake), r["ltake"]),
        (f"random access {a.take:,} rows, warm cache", med(warm), r["warm"], med(ltake), r["ltake"]),
        ("commit of one row (open + append)", med(commit), r["commit"], med(lcommit), r["lcommit"]),
    ]
    w = max(len(x[0]) for x in rows)
    print(f"\n{'dataset operation':<{w}}  {'spacefs':<34}  {'lance':<34}  spacefs/lance")
    for name, ts, rs, tl, rl in rows:
        print(f"{name:<{w}}  {f'{ts:.3f}s ({fmt_reqs(rs)})':<34}  {f'{tl:.3f}s ({fmt_reqs(rl)})':<34}  {ts / tl:.2f}x")


if __name__ == "__main__":
    main()
