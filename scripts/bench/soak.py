"""Soak: a mount serving a catalog for minutes while a writer commits and readers read.

A real daemon (``spacefs mount``) serves a catalog with one dataset. A writer upserts
the same 20 rows through the mount's control socket (``spacefs.connect``) about once a
second (the live data stays the same size), while reader threads read the record
file of a random row of the newest version or of a random older one through the mount.
Every minute it prints the daemon's open descriptors (``/proc/PID/fd``), its resident
memory (``VmRSS``), the commits and reads of that minute and the read latency
percentiles; at the end a verdict per resource: *flat* or *growing*, from the least-
squares slope over the minutes after the first (the warm-up).

    .venv/bin/python scripts/bench/soak.py --minutes 10
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import spacefs  # noqa: E402
from spacefs import DirCatalog  # noqa: E402
from spacefs.mount import launch  # noqa: E402

SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.string()), ("blob", pa.binary())])
KEYS = 2000
BLOB = 4096
# The writer rewrites the same rows every commit, so the live data (rows, files of the
# newest version) stays the same size: a line that grows is a leak, not more data.
HOT = list(range(20))


def rows(ids: list[int], tag: int) -> dict:
    return {"id": ids, "label": [f"l{i % 10}" for i in ids],
            "blob": [(f"{i}:{tag}:".encode() * BLOB)[:BLOB] for i in ids]}


def daemon_fds(pid: int) -> tuple[int, int]:
    """The daemon's open descriptors, and how many of them are record files (the pool's)."""
    total = records = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        total += 1
        try:
            records += os.readlink(f"/proc/{pid}/fd/{fd}").endswith(".array_record")
        except OSError:
            pass  # closed meanwhile
    return total, records


def daemon_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Soak:
    def __init__(self, mnt: str, pid: int, commit_every: float, readers: int):
        self.mnt, self.pid = mnt, pid
        self.commit_every = commit_every
        self.readers = readers
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.commits = 0
        self.errors: list[str] = []
        self.latest = 1

    def writer(self) -> None:
        with spacefs.connect(self.mnt) as client:
            tag = 0
            while not self.stop.is_set():
                t0 = time.monotonic()
                tag += 1
                try:
                    sid = client.upsert("soak", rows(HOT, tag)).snapshot_id
                    with self.lock:
                        self.commits += 1
                        self.latest = max(self.latest, sid or self.latest)
                except Exception as e:  # noqa: BLE001 - reported at the end
                    self.errors.append(f"commit: {e}")
                self.stop.wait(max(0.0, self.commit_every - (time.monotonic() - t0)))

    def reader(self, seed: int) -> None:
        rnd = random.Random(seed)
        versions = os.path.join(self.mnt, "soak", "versions")
        while not self.stop.is_set():
            latest = self.latest
            sid = latest if rnd.random() < 0.5 else rnd.randrange(1, latest + 1)
            path = os.path.join(versions, str(sid), "rows", str(rnd.randrange(KEYS)), "blob")
            t0 = time.perf_counter()
            try:
                with open(path, "rb") as f:
                    n = len(f.read())
                if n != BLOB:
                    self.errors.append(f"{path}: {n} bytes")
            except OSError as e:
                self.errors.append(f"{path}: {e}")
                continue
            with self.lock:
                self.latencies.append(time.perf_counter() - t0)

    def sample(self) -> tuple[int, int, list[float]]:
        with self.lock:
            lat, self.latencies = self.latencies, []
            commits, self.commits = self.commits, 0
        return commits, len(lat), lat


def slope(ys: list[float]) -> float:
    """Least-squares slope per minute."""
    if len(ys) < 2:
        return 0.0
    x = np.arange(len(ys), dtype=float)
    return float(np.polyfit(x, np.asarray(ys, dtype=float), 1)[0])


def verdict(name: str, ys: list[float], tolerance: float) -> str:
    """Flat when the fitted growth over the measured minutes stays within ``tolerance``."""
    body = ys[1:] if len(ys) > 2 else ys  # the first minute is the warm-up
    s = slope(body)
    grown = s * max(len(body) - 1, 1)
    state = "flat" if grown <= tolerance else "GROWING"
    return f"{name}: {state} (slope {s:+.2f}/min, fitted change {grown:+.1f} over {len(body)} minutes, tolerance {tolerance:g})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--commit-every", type=float, default=1.0, help="seconds between commits")
    p.add_argument("--readers", type=int, default=2)
    p.add_argument("--dir", default=None, help="scratch directory (default: a fresh one)")
    args = p.parse_args(argv)
    root = args.dir or tempfile.mkdtemp(prefix="spacefs-soak-")
    try:
        return run(root, args)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


def run(root: str, args: argparse.Namespace) -> int:
    cat = DirCatalog(os.path.join(root, "catalog"))
    ds = cat.create_dataset("soak", SCHEMA, ["id"], ["blob"])
    ds.local().append(rows(list(range(KEYS)), 0))
    mnt = os.path.join(root, "mnt")
    os.makedirs(mnt, exist_ok=True)
    with launch.mounted(cat.location, mnt) as info:
        soak = Soak(mnt, info.pid, args.commit_every, args.readers)
        threads = [threading.Thread(target=soak.writer, daemon=True)]
        threads += [threading.Thread(target=soak.reader, args=(i,), daemon=True) for i in range(args.readers)]
        for t in threads:
            t.start()
        minutes = max(1, round(args.minutes))
        fds, recs, rss = [], [], []
        print(f"soak: daemon pid {info.pid}, {minutes} minutes, a commit every {args.commit_every:g} s, "
              f"{args.readers} readers, {KEYS} rows of {BLOB} B")
        print("| minute | commits | reads | daemon fds | of them record files | daemon RSS MiB | read p50 ms | p95 ms | p99 ms |")
        print("| ------ | ------- | ----- | ---------- | -------------------- | -------------- | ----------- | ------ | ------ |")
        started = time.monotonic()
        try:
            for m in range(1, minutes + 1):
                soak.stop.wait(max(0.0, started + 60 * m * args.minutes / minutes - time.monotonic()))
                commits, reads, lat = soak.sample()
                n, r = daemon_fds(info.pid)
                fds.append(n)
                recs.append(r)
                rss.append(daemon_rss_mib(info.pid))
                q = np.percentile(np.asarray(lat) * 1e3, [50, 95, 99]) if lat else [float("nan")] * 3
                print(f"| {m:6d} | {commits:7d} | {reads:5d} | {fds[-1]:10d} | {recs[-1]:20d} | {rss[-1]:14.1f} | {q[0]:11.2f} | "
                      f"{q[1]:6.2f} | {q[2]:6.2f} |", flush=True)
        finally:  # readers out of the mount before it is unmounted (also on Ctrl-C)
            soak.stop.set()
            for t in threads:
                t.join(timeout=60)
    print()
    print(verdict("daemon fds", fds, 16))
    print(verdict("daemon RSS MiB", rss, 50))
    if soak.errors:
        print(f"{len(soak.errors)} errors, first: {soak.errors[:3]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
