"""Walking many versions through the mount: does it cost the change between them?

One dataset, ``--rows`` rows (file layout ``{label}/{name}``), then ``--versions`` commits
of one row each (an append, or an upsert of the row the commit before appended), so
consecutive versions share all but one or two index files. Through a real daemon
(``spacefs mount``) it lists ``rows/`` (``os.listdir``) and walks ``files/`` (``os.walk``:
readdir only) of every version, twice, against the peer: the newest version listed as
many times (what the walk would cost if every version were the one already built), and
for ``files/`` the same tree copied to local disk. Equal seconds per listing mean the walk
costs the change, not the versions' size. Also prints the daemon's resident memory.

    .venv/bin/python scripts/bench/walk_versions.py [--versions 300] [--rows 2000]

Run it with ``PYTHONPATH`` pointing at another checkout to measure that one (the daemon
inherits the environment).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

import pyarrow as pa

import spacefs
from spacefs import DirCatalog
from spacefs.mount import launch

SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.string()), ("name", pa.string()), ("img", pa.binary())])
LAYOUT = {"path": "{label}/{name}", "content": "img"}


def rows(ids: list[int], tag: int) -> dict:
    return {"id": ids, "label": [f"l{(i + tag) % 10}" for i in ids], "name": [f"{i:06d}.bin" for i in ids],
            "img": [b"%d:%d" % (i, tag) for i in ids]}


def build(root: str, n_rows: int, versions: int) -> str:
    cat = DirCatalog(os.path.join(root, "catalog"))
    ds = cat.create_dataset("walk", SCHEMA, ["id"], ["img"], file_layout=LAYOUT)
    runner = ds.local()
    runner.append(rows(list(range(n_rows)), 0))
    for c in range(2, versions + 1):
        if c % 2:
            runner.upsert(rows([n_rows + c - 1], c))
        else:
            runner.append(rows([n_rows + c], c))
    return cat.location


def walk_files(top: str) -> int:
    return sum(len(names) for _, _, names in os.walk(top))


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn()
    return time.perf_counter() - t0, n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--versions", type=int, default=300)
    p.add_argument("--rows", type=int, default=2000)
    args = p.parse_args(argv)
    root = tempfile.mkdtemp(prefix="spacefs-walk-")
    try:
        t0 = time.perf_counter()
        catalog = build(root, args.rows, args.versions)
        print(f"built {args.versions} versions of {args.rows}+ rows in {time.perf_counter() - t0:.1f} s "
              f"(spacefs from {os.path.dirname(spacefs.__file__)})")
        mnt = os.path.join(root, "mnt")
        os.makedirs(mnt)
        vers = os.path.join(mnt, "walk", "versions")
        last = args.versions
        local = os.path.join(root, "local")
        out: list[tuple[str, str, float, int, float]] = []
        with launch.mounted(catalog, mnt) as info:
            shutil.copytree(os.path.join(vers, str(last), "files"), local)
            for what, lister in (("rows/", lambda d: len(os.listdir(os.path.join(d, "rows")))),
                                 ("files/", lambda d: walk_files(os.path.join(d, "files")))):
                every = [os.path.join(vers, str(v)) for v in range(1, last + 1)]
                head = [os.path.join(vers, str(last))] * last
                runs = [("every version, pass 1", every), ("every version, pass 2", every),
                        (f"newest version x{last}", head)]
                if what == "files/":
                    runs.append((f"local disk copy x{last}", [None] * last))
                for label, dirs in runs:
                    fn = (lambda ds=dirs: sum(walk_files(local) for _ in ds)) if dirs[0] is None else \
                        (lambda ds=dirs, ls=lister: sum(ls(d) for d in ds))
                    secs, n = timed(fn)
                    out.append((what, label, secs, n, rss_mib(info.pid)))
        print()
        print("| listing | run | seconds | entries | ms per version | vs newest x N | daemon RSS MiB |")
        print("| ------- | --- | ------- | ------- | -------------- | ------------- | -------------- |")
        for what, label, secs, n, rss in out:
            peer = next(s for w, lab, s, _, _ in out if w == what and lab.startswith("newest"))
            print(f"| {what} | {label} | {secs:.2f} | {n} | {secs / last * 1e3:.2f} | {secs / peer:.2f}x | {rss:.0f} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
