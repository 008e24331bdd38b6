"""Version-control benchmark: merge, any-version diff, compaction, expiry.

Side by side in one run on the SPEC data (200,000 rows of int64 id, string label, 4 KiB
random blob; ``--rows`` for smaller runs, ``--quick`` for a smoke run), each spacefs
operation against the plain write it should cost about as much as:

- merge of two branches that each changed 1% of the rows (disjoint keys) vs an upsert
  of the same rows (target <= 2x);
- diff of two sibling branches (each 1% changed) vs the ancestor diff of the same
  change (both upserts on one branch, diffed from the fork point) (target <= 2x);
- compaction of 1,000 one-row appends vs appending those 1,000 rows at once (<= 2x);
- bytes on disk of a dataset rewritten 20 times, before and after compact + expire,
  vs the raw data (after <= 1.2x). Each rewrite upserts every row with new blobs; it
  uses ``--rewrite-rows`` rows (default a tenth of ``--rows``: twenty full rewrites of
  800 MB would take most of a shared disk).

Figures are medians of timed repeats after a warm-up, page cache warm, dirty pages
written back untimed after each write.

    .venv/bin/python scripts/bench/versioning.py            # full size
    .venv/bin/python scripts/bench/versioning.py --quick    # smoke run
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    SCHEMA,
    Result,
    base_parser,
    flush_dirty_pages,
    fmt_ratio,
    fmt_seconds,
    load_average,
    make_table,
    measure_side_by_side,
    ratio,
    raw_bytes,
    render_table,
    resolve_size,
    rows_with_ids,
    say,
    scratch,
    time_once,
    warm,
    write_json,
)

from spacefs import Dataset  # noqa: E402

SYSTEMS = ["spacefs", "peer"]
SMALL_WRITES = 1_000
# ``--only`` names -> methods of VersioningBench.
PARTS = {"merge-diff": "merge_and_diff", "compaction": "compaction", "space": "space"}
REWRITES = 20


def disk_bytes(path: str) -> int:
    """Bytes the file system allocated under ``path`` (what ``du`` counts)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def consume(changes) -> int:
    return sum(c.data.num_rows for c in changes)


class VersioningBench:
    def __init__(self, root: str, rows: int, repeats: int, rewrite_rows: int):
        self.root = root
        self.rows = rows
        self.repeats = repeats
        self.rewrite_rows = rewrite_rows
        self.results: list[Result] = []
        self.info: dict[str, Any] = {"rows": rows, "repeats": repeats, "rewrite_rows": rewrite_rows}
        self.rng = np.random.default_rng(7)

    def add(self, result: Result) -> None:
        self.results.append(result)
        vals = ", ".join(f"{k} {fmt_seconds(v) if result.unit == 's' else v}" for k, v in result.values.items() if v is not None)
        say(f"  {result.operation}: {vals}")

    def _branch(self, ds: Dataset, name: str, at: int) -> Dataset:
        ds.add_branch(name, at)
        h = Dataset.load(ds.location)
        h.set_current_branch(name)
        return h

    def _two_changes(self) -> tuple[np.ndarray, np.ndarray]:
        k = max(1, self.rows // 100)
        ids = self.rng.choice(self.rows, size=2 * k, replace=False)
        return np.sort(ids[:k]), np.sort(ids[k:])

    # -- merge and diff --------------------------------------------------------
    def merge_and_diff(self) -> None:
        say(f"base dataset of {self.rows:,} rows ...")
        ds = Dataset.create(os.path.join(self.root, "vc"), SCHEMA, ["id"], ["blob"])
        ds.local().append(make_table(self.rows))
        base = ds.snapshot_id()
        flush_dirty_pages()
        say("merge of two 1% branches vs an upsert of the same rows ...")
        rounds: list[dict[str, Any]] = []

        def setup(i: int) -> None:
            if len(rounds) > i:
                return  # the other system of this round set it up
            a_ids, b_ids = self._two_changes()
            a, b, c = (self._branch(ds, f"{x}{i}", base) for x in ("a", "b", "c"))
            a.local().upsert(rows_with_ids(a_ids, "a", seed=10 + i))
            rows_b = rows_with_ids(b_ids, "b", seed=100 + i)
            b.local().upsert(rows_b)
            flush_dirty_pages()
            rounds.append({"a": a, "b": b, "c": c, "rows_b": rows_b})

        t = measure_side_by_side(
            {"spacefs": lambda i: rounds[i]["a"].merge(f"b{i}"),
             "peer": lambda i: rounds[i]["c"].local().upsert(rounds[i]["rows_b"])},
            self.repeats, setup={"spacefs": setup, "peer": setup}, teardown={"spacefs": lambda _: flush_dirty_pages(),
                                                               "peer": lambda _: flush_dirty_pages()})
        m = {k: v.median for k, v in t.items()}
        r = ratio(m["spacefs"], m["peer"])
        self.add(Result(f"merge 1% + 1% (peer: upsert of those {self.rows // 100:,} rows)", m, fmt_ratio(r, "upsert"),
                        "<= 2x upsert", r <= 2.0, samples={k: v.times for k, v in t.items()}))
        # Check the merge did the work.
        got = rounds[-1]["a"].local().read_all(filter_=f"id = {int(rounds[-1]['rows_b'].column('id')[0].as_py())}",
                                               fields=["label"])
        assert got.column("label").to_pylist() == ["b"], got

        say("diff of sibling branches vs the ancestor diff of the same change ...")
        pairs = []
        for i in range(self.repeats + 1):
            a_ids, b_ids = self._two_changes()
            a, b, lin = (self._branch(ds, f"{x}d{i}", base) for x in ("a", "b", "lin"))
            rows_a, rows_b = rows_with_ids(a_ids, "a", seed=200 + i), rows_with_ids(b_ids, "b", seed=300 + i)
            a.local().upsert(rows_a)
            b.local().upsert(rows_b)
            lin.local().upsert(rows_a)
            lin.local().upsert(rows_b)
            pairs.append((f"ad{i}", f"bd{i}", f"lind{i}"))
        flush_dirty_pages()
        counts: dict[str, int] = {}

        def sib(i: int) -> None:
            counts["spacefs"] = consume(ds.local().diff(pairs[i][0], pairs[i][1]))

        def anc(i: int) -> None:
            counts["peer"] = consume(ds.local().diff(base, pairs[i][2]))

        rewarm = {n: (lambda _: warm(ds.location)) for n in SYSTEMS}  # untimed, before each call
        t = measure_side_by_side({"spacefs": sib, "peer": anc}, self.repeats, setup=rewarm)
        m = {k: v.median for k, v in t.items()}
        r = ratio(m["spacefs"], m["peer"])
        self.add(Result("diff of sibling branches (peer: ancestor diff)", m, fmt_ratio(r, "ancestor diff"),
                        "<= 2x ancestor diff", r <= 2.0, samples={k: v.times for k, v in t.items()},
                        note=f"rows yielded: sibling {counts['spacefs']:,}, ancestor {counts['peer']:,}"))

    # -- compaction ------------------------------------------------------------
    def compaction(self) -> None:
        n = SMALL_WRITES
        say(f"{n:,} one-row appends ...")
        table = make_table(n, first_id=10 ** 9, seed=5)
        ds = Dataset.create(os.path.join(self.root, "small"), SCHEMA, ["id"], ["blob"])
        r = ds.local()
        started = time.perf_counter()
        for i in range(n):
            r.append(table.slice(i, 1))
        t_appends = time.perf_counter() - started
        flush_dirty_pages()
        files_before = len(ds.index_files())
        disk_small = disk_bytes(ds.location)
        self.info["small_appends_s"] = t_appends
        self.info["small_appends_disk_bytes"] = disk_small
        say("compaction vs writing the same rows at once ...")
        peers: list[Dataset] = []
        copies: list[Dataset] = []

        def copy(i: int) -> None:
            # A fresh copy of the 1,000-append dataset for each compaction (untimed).
            dst = os.path.join(self.root, f"small{i}")
            shutil.copytree(ds.location, dst)
            copies.append(Dataset.load(dst))
            flush_dirty_pages()

        def new_peer(i: int) -> None:
            peers.append(Dataset.create(os.path.join(self.root, f"once{i}"), SCHEMA, ["id"], ["blob"]))

        t = measure_side_by_side({"spacefs": lambda i: copies[-1].compact(), "peer": lambda i: peers[-1].local().append(table)},
                                 self.repeats, setup={"spacefs": copy, "peer": new_peer},
                                 teardown={"spacefs": lambda _: flush_dirty_pages(), "peer": lambda _: flush_dirty_pages()})
        m = {k: v.median for k, v in t.items()}
        ratio_c = ratio(m["spacefs"], m["peer"])
        assert len(copies[-1].index_files()) == 1 and copies[-1].num_rows() == n
        self.add(Result(f"compact {n:,} one-row appends (peer: append them at once)", m, fmt_ratio(ratio_c, "append"),
                        "<= 2x append", ratio_c <= 2.0, samples={k: v.times for k, v in t.items()},
                        note=f"{files_before:,} index files -> 1; {n:,} one-row appends took {fmt_seconds(t_appends)} and "
                             f"used {disk_small / (1 << 20):.1f} MiB on disk for {raw_bytes(table) / (1 << 20):.1f} MiB of rows"))

    # -- space -----------------------------------------------------------------
    def space(self) -> None:
        n = self.rewrite_rows
        say(f"dataset of {n:,} rows rewritten {REWRITES} times ...")
        ds = Dataset.create(os.path.join(self.root, "rewritten"), SCHEMA, ["id"], ["blob"])
        data = make_table(n)
        ds.local().append(data)
        for k in range(REWRITES):
            ds.local().upsert(make_table(n, seed=1000 + k))
        flush_dirty_pages()
        raw = raw_bytes(data)
        before = disk_bytes(ds.location)
        t_compact, _ = time_once(ds.compact)
        t_expire, rep = time_once(lambda: ds.expire_snapshots("0s", apply=True))
        flush_dirty_pages()
        after = disk_bytes(ds.location)
        assert ds.num_rows() == n
        r = ratio(after, raw)
        self.add(Result(f"bytes on disk, {n:,} rows rewritten {REWRITES}x, after compact + expire (peer: raw data)",
                        {"spacefs": after, "peer": raw}, fmt_ratio(r, "raw"), "<= 1.2x raw", r <= 1.2, unit="bytes",
                        note=f"before: {before / (1 << 20):.0f} MiB ({ratio(before, raw):.1f}x raw); compact "
                             f"{fmt_seconds(t_compact)}, expire {fmt_seconds(t_expire)} ({len(rep.snapshot_ids)} "
                             f"snapshots, {len(rep.files)} files)"))


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--rewrite-rows", type=int, default=None,
                   help="rows of the dataset rewritten 20 times (default: a tenth of --rows)")
    p.add_argument("--only", choices=PARTS, action="append", default=None,
                   help="run only this part (repeatable; default: all of them)")
    args = p.parse_args(argv)
    parts = args.only or list(PARTS)
    rows, repeats = resolve_size(args, full_repeats=5, quick_repeats=2)
    rewrite_rows = args.rewrite_rows if args.rewrite_rows is not None else max(100, rows // 10)
    started = time.perf_counter()
    load_before = load_average()
    with scratch(args, "spacefs-bench-versioning-") as root:
        bench = VersioningBench(root, rows, repeats, rewrite_rows)
        for part in PARTS:
            if part in parts:
                getattr(bench, PARTS[part])()
    total = time.perf_counter() - started
    print(f"\nspacefs versioning benchmark: {rows:,} rows (int64 id, string label, 4 KiB blob), median of "
          f"{repeats} timed repeats after a warm-up; {load_before} at the start, {load_average()} at the end; "
          f"total {fmt_seconds(total)}\n")
    print(render_table(bench.results, SYSTEMS))
    if args.json:
        write_json(args.json, bench.results, {**bench.info, "total_s": total})
    return 0


if __name__ == "__main__":
    sys.exit(main())
