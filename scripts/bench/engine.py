"""Engine benchmark: spacefs against plain Parquet, Lance and a packed-file pread.

SPEC section 7, side by side in one run on the same data (200,000 rows of int64 id,
string label, 4 KiB random blob; ``--rows`` for smaller runs, ``--quick`` for a CI smoke
run): write, full scan, filtered scans, random access to 2,000 rows, an upsert of 1,000
updates and 1,000 inserts, a delete of 2,000 scattered ids, size on disk after those
mutations, and commit and version-open cost with 10 and with 10,000 snapshots of history.

All reads are warm: every system's files sit in the page cache (a warm-up run precedes
the timed repeats), and each system opens its own files inside the timed call, except
random access where every system reads through an already open handle. Figures are
medians of the timed repeats. Dirty pages are written back (untimed) after each write.

    .venv/bin/python scripts/bench/engine.py            # full size, a few minutes
    .venv/bin/python scripts/bench/engine.py --quick    # smoke run, seconds
    .venv/bin/python scripts/bench/engine.py --only relabel,mutations   # the write paths only
"""

from __future__ import annotations

import mmap
import os
import sys
import time
from typing import Any

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    SCHEMA,
    Result,
    base_parser,
    dir_size,
    flush_dirty_pages,
    fmt_ratio,
    fmt_seconds,
    fresh,
    load_average,
    make_table,
    measure_side_by_side,
    progress,
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
from spacefs.engine.records import RecordReader  # noqa: E402

SYSTEMS = ["spacefs", "parquet", "lance", "pread"]
RANDOM_ROWS = 2_000
UPSERT_KEYS = 1_000  # updates; as many inserts again
DELETE_KEYS = 2_000
HISTORY_SMALL = 10
HISTORY_LARGE = 10_000
HISTORY_KEY = 1 << 40  # far above every data id, so stats prune the data files away


class EngineBench:
    """Holds the data, the four systems' copies of it, and the results."""

    def __init__(self, root: str, rows: int, repeats: int, history: int, quick: bool):
        self.rows = rows
        self.repeats = repeats
        self.history = history
        self.quick = quick
        self.sp = os.path.join(root, "spacefs")
        self.pq = os.path.join(root, "data.parquet")
        self.ln = os.path.join(root, "lance")
        self.pk = os.path.join(root, "blobs.bin")
        self.paths = {"spacefs": self.sp, "parquet": self.pq, "lance": self.ln, "pread": self.pk}
        self.results: list[Result] = []
        self._samples: dict[str, list[float]] = {}  # timed repeats of the last measurement
        self.info: dict[str, Any] = {"rows": rows, "repeats": repeats, "history": history}
        say(f"generating {rows:,} rows ...")
        self.data = make_table(rows)
        blob = self.data.column("blob").chunk(0)
        self.blob_offsets = np.frombuffer(blob.buffers()[1], dtype=np.int32, count=rows + 1).astype(np.int64)
        self.blob_buffer = blob.buffers()[2]

    # -- helpers ---------------------------------------------------------------
    def add(self, result: Result, samples: dict[str, list[float]] | None = None) -> None:
        result.samples = samples if samples is not None else self._samples
        self._samples = {}
        self.results.append(result)
        vals = ", ".join(f"{k} {fmt_seconds(v) if result.unit == 's' else v}" for k, v in result.values.items() if v is not None)
        say(f"  {result.operation}: {vals}")

    def _same_rows(self, what: str) -> int:
        """All three tables hold the same number of rows: the work was the same."""
        n_sp = Dataset.load(self.sp).num_rows()
        n_pq = pq.ParquetFile(self.pq).metadata.num_rows
        n_ln = lance.dataset(self.ln).count_rows()
        if not n_sp == n_pq == n_ln:
            raise AssertionError(f"{what}: row counts differ: spacefs {n_sp}, parquet {n_pq}, lance {n_ln}")
        return n_sp

    # -- write -----------------------------------------------------------------
    def write(self) -> None:
        say("write ...")
        data = self.data
        reps = max(1, min(self.repeats, 3))  # each repeat writes the whole data set again

        def sp_setup(_: int) -> None:
            self._sp_new = Dataset.create(fresh(self.sp), SCHEMA, ["id"], ["blob"])

        def pk_write(_: int) -> None:
            with open(self.pk, "wb") as f:
                f.write(self.blob_buffer)

        flush = {n: (lambda _: flush_dirty_pages()) for n in SYSTEMS}
        t = measure_side_by_side(
            {
                "spacefs": lambda _: self._sp_new.local().append(data),
                "parquet": lambda _: pq.write_table(data, self.pq),
                "lance": lambda _: lance.write_dataset(data, self.ln),
                "pread": pk_write,
            },
            reps,
            setup={"spacefs": sp_setup, "parquet": lambda _: fresh(self.pq), "lance": lambda _: fresh(self.ln),
                   "pread": lambda _: fresh(self.pk)},
            teardown=flush,
        )
        m = {k: v.median for k, v in t.items()}
        self._samples = {k: v.times for k, v in t.items()}
        r_pq, r_ln = ratio(m["spacefs"], m["parquet"]), ratio(m["spacefs"], m["lance"])
        self.add(Result("write (append)", m, f"{fmt_ratio(r_pq, 'parquet')}, {fmt_ratio(r_ln, 'lance')}",
                        "<= 1.2x parquet, < lance", r_pq <= 1.2 and r_ln < 1.0))
        self._same_rows("write")

    # -- scans -----------------------------------------------------------------
    def scan(self) -> None:
        say("full scan ...")
        n = self.rows
        nbytes = int(self.blob_offsets[-1])

        def sp(_: int) -> None:
            assert Dataset.load(self.sp).local().read_all().num_rows == n

        # The physical limit: 32 MiB preads into a buffer allocated and touched once, outside
        # the clock (first-touch page faults of fresh memory are slow and erratic in this VM).
        buf = np.ones(nbytes, dtype=np.uint8)
        view = memoryview(buf)

        def pk(_: int) -> None:
            fd = os.open(self.pk, os.O_RDONLY)
            try:
                got = sum(os.preadv(fd, [view[o : o + (32 << 20)]], o) for o in range(0, nbytes, 32 << 20))
            finally:
                os.close(fd)
            assert got == nbytes
            pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(self.blob_offsets.astype(np.int32)), pa.py_buffer(buf)])

        m = self._median_all({
            "spacefs": sp,
            "parquet": lambda _: pq.read_table(self.pq),
            "lance": lambda _: lance.dataset(self.ln).to_table(),
            "pread": pk,
        })
        r = ratio(m["spacefs"], m["parquet"])
        self.add(Result("full scan, default options", m, fmt_ratio(r, "parquet"), "<= 1.0x parquet", r <= 1.0,
                        note="pread reads the blob bytes only: the packed file in 32 MiB preads into a reused buffer"))

    def filtered_scans(self) -> None:
        say("filtered scans ...")
        label = "label_7"
        lo = self.rows // 2
        hi = lo + max(1, self.rows // 100)
        cases = [
            (f"filtered scan, label == '{label}' (1%)", pc.field("label") == label, f"label = '{label}'"),
            (f"filtered scan, id in [{lo:,}, {hi:,}) (1%)", (pc.field("id") >= lo) & (pc.field("id") < hi),
             f"id >= {lo} AND id < {hi}"),
        ]
        for name, expr, sql in cases:
            want = self.data.filter(expr).num_rows

            def sp(_: int, expr: pc.Expression = expr, want: int = want) -> None:
                assert Dataset.load(self.sp).local().read_all(filter_=expr).num_rows == want

            m = self._median_all({
                "spacefs": sp,
                "parquet": lambda _, expr=expr: pq.read_table(self.pq, filters=expr),
                "lance": lambda _, sql=sql: lance.dataset(self.ln).to_table(filter=sql),
            })
            r, r_ln = ratio(m["spacefs"], m["parquet"]), ratio(m["spacefs"], m["lance"])
            by_key = name.startswith("filtered scan, id")
            self.add(Result(name, m, f"{fmt_ratio(r, 'parquet')}, {fmt_ratio(r_ln, 'lance')}",
                            "<= 1.5x lance" if by_key else "", (r_ln <= 1.5) if by_key else None,
                            note="key range: index files and row groups pruned by their statistics" if by_key else ""))

    # -- relabel -----------------------------------------------------------------
    def relabel(self) -> None:
        """A labelling round: new labels for 1% of the rows, sent without the records.

        The peer is the same upsert on a dataset that has no record field at all (ids
        and labels only): what keeping the stored records by reference costs on top.
        """
        say("relabel 1% of rows (index fields only) ...")
        plain = os.path.join(os.path.dirname(self.sp), "spacefs-labels")
        ds = Dataset.create(fresh(plain), pa.schema([SCHEMA.field("id"), SCHEMA.field("label")]), ["id"], [])
        ds.local().append(self.data.select(["id", "label"]))
        k = max(1, self.rows // 100)
        rounds = self.repeats + 1
        perm = np.random.default_rng(11).permutation(self.rows)
        runners = {"spacefs": Dataset.load(self.sp).local(), "labels only": ds.local()}
        times: dict[str, list[float]] = {}
        for r in range(rounds):
            ids = np.sort(perm[(r * k) % self.rows : (r * k) % self.rows + k])
            batch = pa.table({"id": pa.array(ids, pa.int64()), "label": pa.array([f"relabel_{r}"] * len(ids))})
            order = list(runners)[r % 2:] + list(runners)[: r % 2]
            for name in order:
                warm(self.sp if name == "spacefs" else plain)
                dt, _ = time_once(lambda b=batch, run=runners[name]: run.upsert(b))
                flush_dirty_pages()
                if r > 0:
                    times.setdefault(name, []).append(dt)
        got = runners["spacefs"].read_all(filter_=pc.field("id") == int(ids[0]))
        if got.column("label")[0].as_py() != f"relabel_{rounds - 1}" or len(got.column("blob")[0].as_py()) != len(
                self.data.column("blob")[int(ids[0])].as_py()):
            raise AssertionError("relabel: the relabelled row did not keep its record")
        m = {"spacefs": float(np.median(times["spacefs"])), "lance": None}
        base = float(np.median(times["labels only"]))
        r_l = ratio(m["spacefs"], base)
        self.info["relabel_labels_only_s"] = base
        self.add(Result(f"relabel {k:,} rows (id + label, no records)", m, f"{r_l:.2f}x of labels-only dataset",
                        "<= 2x labels-only", r_l <= 2.0,
                        note=f"the same upsert on a dataset of ids and labels only takes {fmt_seconds(base)}; "
                             "spacefs keeps each relabelled row's stored record by reference"),
                 {"spacefs": times["spacefs"], "labels only": times["labels only"]})

    # -- random access -----------------------------------------------------------
    def random_access(self) -> None:
        say("random access ...")
        k = min(RANDOM_ROWS, self.rows)
        rng = np.random.default_rng(42)
        sets = [rng.choice(self.rows, k, replace=False) for _ in range(self.repeats + 1)]
        get, how = self._spacefs_random_source()
        lds = lance.dataset(self.ln)
        pqd = pds.dataset(self.pq, format="parquet")
        fd = os.open(self.pk, os.O_RDONLY)
        off, end = self.blob_offsets[:-1], self.blob_offsets[1:]
        try:
            def pk(i: int) -> list[bytes]:
                pread = os.pread
                return [pread(fd, int(e - o), int(o)) for o, e in zip(off[sets[i]], end[sets[i]], strict=True)]

            # The same rows must come back from every system (row i is id i here).
            want = pk(0)
            got_sp = get(sets[0])
            got_ln = lds.take(sets[0], columns=["blob"]).column("blob").to_pylist()
            if list(got_sp) != want or got_ln != want:
                raise AssertionError("random access: systems returned different records")
            m = self._median_all({
                "spacefs": lambda i: get(sets[i]),
                "parquet": lambda i: pqd.take(pa.array(sets[i]), columns=["blob"]),
                "lance": lambda i: lds.take(sets[i], columns=["blob"]),
                "pread": pk,
            })
            samples = self._samples
            # A second floor: slices of a memory map of the packed file (no syscall per record).
            with open(self.pk, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
                def mm_take(i: int) -> list[bytes]:
                    return [mm[o:e] for o, e in zip(off[sets[i]].tolist(), end[sets[i]].tolist(), strict=True)]

                mm_time = self._median_all({"pread": mm_take})["pread"]
            self._samples = {**samples, "mmap": self._samples["pread"]}
            self.info["random_mmap_s"] = mm_time
        finally:
            os.close(fd)
        r_pk, r_ln = ratio(m["spacefs"], m["pread"]), ratio(m["spacefs"], m["lance"])
        self.add(Result(f"random access, {k:,} rows (warm)", m, f"{fmt_ratio(r_pk, 'pread')}, {fmt_ratio(r_ln, 'lance')}",
                        "<= 1.5x pread, < lance", r_pk <= 1.5 and r_ln < 1.0,
                        note=f"spacefs via {how}; lance take on an open dataset; parquet via pyarrow.dataset take; "
                             "pread one os.pread per record with offsets in memory; "
                             f"slices of an mmap of the packed file take {fmt_seconds(mm_time)}"))

    def _spacefs_random_source(self) -> tuple[Any, str]:
        try:
            from spacefs.random_access import RandomAccessDataSource
        except ImportError:
            RandomAccessDataSource = None  # noqa: N806
        if RandomAccessDataSource is not None:
            t, src = time_once(lambda: RandomAccessDataSource({"blob": self.sp}))
            self.info["random_source_open_s"] = t
            return src.__getitems__, f"RandomAccessDataSource.__getitems__ (source opened once, {fmt_seconds(t)})"
        ds = Dataset.load(self.sp)
        refs = ds.local().read_all(fields=["blob"], reference_read=True).column("blob").combine_chunks()
        reader = RecordReader(ds.location)

        def get(idx: np.ndarray) -> list[bytes]:
            return reader.read_refs(refs.take(pa.array(idx))).to_pylist()

        return get, "references read once, then RecordReader.read_refs"

    # -- mutations -------------------------------------------------------------
    def mutations(self) -> None:
        """Rounds of (upsert, delete) on disjoint keys; round 0 warms up and is the state
        whose size on disk is reported; the later rounds are timed."""
        say("upsert and delete ...")
        rounds = self.repeats + 1
        n_up = min(UPSERT_KEYS, self.rows // (4 * rounds))
        n_del = min(DELETE_KEYS, 2 * n_up)
        perm = np.random.default_rng(7).permutation(self.rows)
        sp = Dataset.load(self.sp).local()
        lds = lance.dataset(self.ln)
        times: dict[str, dict[str, list[float]]] = {"upsert": {}, "delete": {}}
        sizes: dict[str, float] = {}
        for r in range(rounds):
            base = r * (n_up + n_del)
            upd = perm[base : base + n_up]
            dele = np.sort(perm[base + n_up : base + n_up + n_del])
            ins = self.rows + r * n_up + np.arange(n_up)
            batch = rows_with_ids(np.concatenate([upd, ins]), "upserted", seed=100 + r)
            expr = pc.field("id").isin(pa.array(dele))
            sql = f"id IN ({', '.join(map(str, dele.tolist()))})"
            ops = {
                "upsert": {
                    "spacefs": lambda b=batch: sp.upsert(b),
                    "lance": lambda b=batch: lds.merge_insert("id").when_matched_update_all()
                    .when_not_matched_insert_all().execute(b),
                    "parquet": lambda b=batch: self._parquet_rewrite(keep=lambda t, b=b: pc.invert(pc.is_in(t["id"], value_set=b["id"])), add=b),
                },
                "delete": {
                    "spacefs": lambda e=expr: sp.delete(e),
                    "lance": lambda s=sql: lds.delete(s),
                    "parquet": lambda e=expr: self._parquet_rewrite(keep=lambda t, e=e: pc.invert(pds.dataset(t).to_table(columns={"m": e}).column("m").combine_chunks()), add=None),
                },
            }
            for op, fns in ops.items():
                order = list(fns)
                order = order[r % len(order):] + order[: r % len(order)]  # rotate: shared-machine noise falls alike
                for system in order:
                    fn = fns[system]
                    warm(self.paths[system])
                    dt, _ = time_once(fn)
                    flush_dirty_pages()
                    if r > 0:
                        times[op].setdefault(system, []).append(dt)
            n = self._same_rows(f"mutation round {r}")
            if r == 0:
                raw = raw_bytes(pq.read_table(self.pq))
                sizes = {"spacefs": dir_size(self.sp), "parquet": dir_size(self.pq), "lance": dir_size(self.ln)}
                self.info.update(raw_bytes_after_round0=raw, rows_after_round0=n, sizes_after_round0=sizes)
        med = {op: {s: float(np.median(v)) for s, v in by.items()} for op, by in times.items()}
        used = rounds * (n_up + n_del)
        factor = min(10, (self.rows - used) // n_up)
        big = {}
        if factor >= 2:
            # Linear in the keys changed: the same upsert with ``factor`` times the keys.
            reps = max(1, min(3, (self.rows - used) // (factor * n_up)))
            k = factor * n_up
            for r in range(reps):
                upd = perm[used + r * k : used + (r + 1) * k]
                ins = self.rows + rounds * n_up + r * k + np.arange(k)
                batch = rows_with_ids(np.concatenate([upd, ins]), "upserted-big", seed=200 + r)
                fns = {
                    "spacefs": lambda b=batch: sp.upsert(b),
                    "lance": lambda b=batch: lds.merge_insert("id").when_matched_update_all()
                    .when_not_matched_insert_all().execute(b),
                    "parquet": lambda b=batch: self._parquet_rewrite(keep=lambda t, b=b: pc.invert(pc.is_in(t["id"], value_set=b["id"])), add=b),
                }
                order = list(fns)[r % 3:] + list(fns)[: r % 3]
                for system in order:
                    warm(self.paths[system])
                    dt, _ = time_once(fns[system])
                    flush_dirty_pages()
                    big.setdefault(system, []).append(dt)
                self._same_rows(f"large upsert {r}")
            big_samples = dict(big)
            big = {k2: float(np.median(v)) for k2, v in big.items()}
        r_up = ratio(med["upsert"]["spacefs"], med["upsert"]["lance"])
        self.add(Result(f"upsert {n_up:,} updates + {n_up:,} inserts", med["upsert"], fmt_ratio(r_up, "lance"),
                        "<= 2x lance", r_up <= 2.0, note="parquet: read-modify-write of the whole file"), times["upsert"])
        r_del = ratio(med["delete"]["spacefs"], med["delete"]["lance"])
        self.add(Result(f"delete {n_del:,} scattered ids", med["delete"], fmt_ratio(r_del, "lance"),
                        "<= 3x lance", r_del <= 3.0, note="parquet: read-modify-write of the whole file"), times["delete"])
        if big:
            r_big = ratio(big["spacefs"], med["upsert"]["spacefs"])
            r_big_ln = ratio(big["lance"], med["upsert"]["lance"])
            self.add(Result(f"upsert {factor}x the keys ({factor * n_up:,} + {factor * n_up:,})", big,
                            f"{r_big:.2f}x of {n_up:,} + {n_up:,} (lance {r_big_ln:.2f}x)",
                            f"<= {factor}x (linear in keys)", r_big <= factor), big_samples)
        raw = self.info["raw_bytes_after_round0"]
        r_sz = ratio(sizes["spacefs"], raw)
        self.add(Result("size on disk after 1 upsert + 1 delete", {**sizes, "pread": None}, fmt_ratio(r_sz, "raw"),
                        "<= 1.1x raw", r_sz <= 1.1, unit="bytes",
                        note=f"raw data {raw / (1 << 20):.0f} MiB ({self.info['rows_after_round0']:,} rows: "
                             f"id + label + blob bytes); all history kept by spacefs and lance"))

    def _parquet_rewrite(self, keep: Any, add: pa.Table | None) -> None:
        """The naive peer of an in-place change: read the file, change it, write it back."""
        t = pq.read_table(self.pq)
        t = t.filter(keep(t))
        if add is not None:
            t = pa.concat_tables([t, add])
        tmp = self.pq + ".tmp"
        pq.write_table(t, tmp)
        os.replace(tmp, self.pq)

    # -- history ---------------------------------------------------------------
    def history_cost(self) -> None:
        """Commit and version-open cost at ``HISTORY_SMALL`` and at ``self.history`` snapshots.

        The history is made of one-row upserts of a key outside the data's id range, so
        the data does not grow (each commit replaces the previous row) and the data files
        are pruned by their stats: what is left is the cost of the metadata.
        """
        say("commit and version-open cost vs history ...")
        sp_ds = Dataset.load(self.sp)
        sp = sp_ds.local()
        lds = lance.dataset(self.ln)
        counter = iter(range(10**9))

        def row() -> pa.Table:
            return rows_with_ids(np.array([HISTORY_KEY]), f"h{next(counter)}", blob_bytes=64, seed=0)

        def sp_commit() -> None:
            sp.upsert(row())

        def ln_commit() -> None:
            lds.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(row())

        def sp_head() -> int:
            return sp_ds.storage.head().last_snapshot_id

        commits = max(5, 2 * self.repeats + 1)

        def measure_at(label: str) -> dict[str, dict[str, float]]:
            h_sp, h_ln = sp_head(), lds.version
            warm(self.sp)  # the measured calls take well under a minute: they stay warm
            warm(self.ln)
            vs_sp = np.unique(np.linspace(1, h_sp, commits).astype(int))
            vs_ln = np.unique(np.linspace(1, h_ln, commits).astype(int))
            commit = measure_side_by_side({"spacefs": lambda _: sp_commit(), "lance": lambda _: ln_commit()}, commits)
            opened = measure_side_by_side({
                "spacefs": lambda i: Dataset.load(self.sp).index_files(version=int(vs_sp[i % len(vs_sp)])),
                "lance": lambda i: lance.dataset(self.ln, version=int(vs_ln[i % len(vs_ln)])).get_fragments(),
            }, commits)
            out = {
                "commit": {k: v.median for k, v in commit.items()},
                "open": {k: v.median for k, v in opened.items()},
                "history": {"spacefs": h_sp, "lance": h_ln},
                "samples": {"commit": {k: v.times for k, v in commit.items()},
                            "open": {k: v.times for k, v in opened.items()}},
            }
            say(f"  at {label}: spacefs commit {fmt_seconds(out['commit']['spacefs'])}, open {fmt_seconds(out['open']['spacefs'])}; "
                f"lance commit {fmt_seconds(out['commit']['lance'])}, open {fmt_seconds(out['open']['lance'])}")
            return out

        def grow_to(target: int) -> dict[str, float]:
            spent = {}
            t0 = time.perf_counter()
            for _ in progress(range(max(0, target - sp_head())), desc="spacefs history"):
                sp_commit()
            spent["spacefs"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in progress(range(max(0, target - lds.version)), desc="lance history"):
                ln_commit()
            spent["lance"] = time.perf_counter() - t0
            return spent

        grow_to(HISTORY_SMALL)
        small = measure_at(f"{HISTORY_SMALL} snapshots")
        build = grow_to(self.history)
        self.info["history_build_s"] = build
        say(f"  built {self.history:,} snapshots: spacefs {fmt_seconds(build['spacefs'])}, lance {fmt_seconds(build['lance'])}")
        large = measure_at(f"{self.history:,} snapshots")
        for what, title in (("commit", "commit (1-row upsert)"), ("open", "version open (metadata)")):
            for h, res in ((HISTORY_SMALL, small), (self.history, large)):
                hs = res["history"]
                name = f"{title}, {hs['spacefs']:,} snapshots"
                if h == self.history:
                    r = ratio(res[what]["spacefs"], small[what]["spacefs"])
                    r_ln = ratio(res[what]["lance"], small[what]["lance"])
                    self.add(Result(name, res[what], f"{fmt_ratio(r, 'of ' + format(small['history']['spacefs'], ','))} (lance {r_ln:.2f}x)",
                                    f"<= 2x of ~{HISTORY_SMALL}", r <= 2.0,
                                    note=f"measured from spacefs snapshot {hs['spacefs']:,}, lance version {hs['lance']:,}"),
                             res["samples"][what])
                else:
                    self.add(Result(name, res[what], note=f"measured from spacefs snapshot {hs['spacefs']:,}, lance version {hs['lance']:,}"),
                             res["samples"][what])
        self.add(Result(f"build a {self.history:,}-snapshot history", {**build, "parquet": None, "pread": None},
                        note="one-row upserts through the public API, one process"))

    # -- shared ----------------------------------------------------------------
    def _median_all(self, fns: dict[str, Any]) -> dict[str, float]:
        """Medians of warm runs: each system's files are read into the page cache (untimed)
        right before each of its timed calls."""
        setup = {name: (lambda _, p=self.paths[name]: warm(p)) for name in fns}
        timings = measure_side_by_side(fns, self.repeats, setup=setup)
        self._samples = {name: t.times for name, t in timings.items()}
        return {name: t.median for name, t in timings.items()}


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--history", type=int, default=None,
                   help=f"snapshots of history for the commit-cost rows (default {HISTORY_LARGE:,}; 200 with --quick)")
    p.add_argument("--only", default=None, metavar="PARTS",
                   help="comma-separated parts to run after the write: scan, filtered, random, relabel, "
                        "mutations, history (default all)")
    args = p.parse_args(argv)
    rows, repeats = resolve_size(args)
    history = args.history if args.history is not None else (200 if args.quick else HISTORY_LARGE)
    if history <= HISTORY_SMALL:
        raise SystemExit(f"--history must be above {HISTORY_SMALL}")
    started = time.perf_counter()
    load_before = load_average()
    with scratch(args, "spacefs-bench-engine-") as root:
        bench = EngineBench(root, rows, repeats, history, args.quick)
        parts = {"scan": bench.scan, "filtered": bench.filtered_scans, "random": bench.random_access,
                 "relabel": bench.relabel, "mutations": bench.mutations, "history": bench.history_cost}
        only = args.only.split(",") if args.only else list(parts)
        unknown = set(only) - set(parts)
        if unknown:
            raise SystemExit(f"--only: unknown parts {sorted(unknown)}")
        bench.write()
        for name in parts:  # always in this order: later parts start from the state earlier ones leave
            if name in only:
                parts[name]()
    total = time.perf_counter() - started
    print(f"\nspacefs engine benchmark: {rows:,} rows (int64 id, string label, 4 KiB blob), median of "
          f"{repeats} timed repeats after a warm-up, systems interleaved, warm page cache for every system; "
          f"{load_before} at the start, {load_average()} at the end; total {fmt_seconds(total)}\n")
    print(render_table(bench.results, SYSTEMS))
    if args.json:
        write_json(args.json, bench.results, {**bench.info, "total_s": total, "load_before": load_before,
                                              "load_after": load_average()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
