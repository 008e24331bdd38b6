"""Shared helpers of the benchmarks in ``scripts/bench/``.

Every benchmark compares spacefs with its peers side by side in one run, on the same
data, with the same method: a warm-up run that is not counted, then the median of several
timed repeats, the garbage collector paused during each timed call, and dirty pages
flushed (``os.sync``, untimed) after each write so one system's write-back never lands on
the next system's clock. These helpers hold that method in one place: the data SPEC
section 7 prescribes, the timing loop, the verdicts and the result table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# SPEC section 7: 200,000 rows of int64 id, string label, 4 KiB random blob.
FULL_ROWS = 200_000
QUICK_ROWS = 4_000
BLOB_BYTES = 4096
LABELS = 100

SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.string()), ("blob", pa.binary())])


# -- data ----------------------------------------------------------------------
def label_of(i: int | np.ndarray) -> Any:
    """The label of row ``i``: ``LABELS`` distinct values, so one label selects 1%."""
    return np.char.add("label_", (np.asarray(i) % LABELS).astype(str))


def make_blobs(n: int, blob_bytes: int = BLOB_BYTES, seed: int = 0) -> pa.Array:
    """``n`` random blobs as one binary array built over a single buffer (no copies)."""
    data = np.random.default_rng(seed).bytes(n * blob_bytes)
    offsets = np.arange(n + 1, dtype=np.int64) * blob_bytes
    typ = pa.large_binary() if n * blob_bytes >= (1 << 31) else pa.binary()
    odt = np.int64 if typ == pa.large_binary() else np.int32
    arr = pa.Array.from_buffers(typ, n, [None, pa.py_buffer(offsets.astype(odt)), pa.py_buffer(data)])
    return arr.cast(pa.binary()) if typ != pa.binary() else arr


def make_table(rows: int, blob_bytes: int = BLOB_BYTES, seed: int = 0, first_id: int = 0,
               label: str | None = None) -> pa.Table:
    """The benchmark data: ids ``first_id..first_id+rows``, labels, random blobs."""
    ids = np.arange(first_id, first_id + rows, dtype=np.int64)
    labels = pa.array([label] * rows, pa.string()) if label is not None else pa.array(label_of(ids), pa.string())
    return pa.table([pa.array(ids), labels, make_blobs(rows, blob_bytes, seed)], schema=SCHEMA)


def rows_with_ids(ids: np.ndarray, label: str, blob_bytes: int = BLOB_BYTES, seed: int = 1) -> pa.Table:
    """Rows with the given ids, one label, and fresh random blobs (for upserts)."""
    ids = np.asarray(ids, dtype=np.int64)
    return pa.table([pa.array(ids), pa.array([label] * len(ids), pa.string()),
                     make_blobs(len(ids), blob_bytes, seed)], schema=SCHEMA)


def raw_bytes(table: pa.Table) -> int:
    """The payload of a table: fixed-width values plus the bytes of strings and binaries,
    without offsets or validity bitmaps (what a user would call "the data")."""
    total = 0
    for col in table.columns:
        t = col.type
        if pa.types.is_binary(t) or pa.types.is_string(t) or pa.types.is_large_binary(t) or pa.types.is_large_string(t):
            total += int(pc.sum(pc.binary_length(col)).as_py() or 0)
        else:
            total += len(col) * (t.bit_width // 8)
    return total


def warm(path: str, chunk: int = 16 << 20) -> int:
    """Read a file, or every file under a directory, so its pages are in the page cache.

    Called (untimed) right before each warm timed call: a machine may page out file
    pages it deems cold (this one runs a DAMON reclaim scheme that pages out what was not
    touched for about a minute), and a "warm" figure must not quietly include disk reads.
    """
    buf = bytearray(chunk)
    view = memoryview(buf)
    files = [path] if os.path.isfile(path) else [os.path.join(r, f) for r, _d, fs in os.walk(path) for f in fs]
    total = 0
    for name in files:
        try:
            with open(name, "rb", buffering=0) as f:
                while n := f.readinto(view):
                    total += n
        except FileNotFoundError:
            pass  # removed since listed (a concurrent vacuum, a temp file)
    return total


def dir_size(path: str) -> int:
    """Apparent size of a file, or of every file under a directory."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass
    return total


# -- timing --------------------------------------------------------------------
@dataclass
class Timing:
    """Seconds of each timed repeat (warm-ups excluded)."""

    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    def __str__(self) -> str:
        return fmt_seconds(self.median)


def measure(fn: Callable[[int], Any], repeats: int, warmup: int = 1,
            setup: Callable[[int], Any] | None = None, teardown: Callable[[int], Any] | None = None) -> Timing:
    """Time ``fn(i)`` for ``i`` in ``range(warmup + repeats)``; the first ``warmup`` runs
    are not counted. ``setup(i)`` and ``teardown(i)`` run untimed around each call."""
    timing = Timing()
    for i in range(warmup + repeats):
        if setup is not None:
            setup(i)
        dt, _ = time_once(lambda i=i: fn(i))
        if teardown is not None:
            teardown(i)
        if i >= warmup:
            timing.times.append(dt)
    return timing


def measure_side_by_side(fns: dict[str, Callable[[int], Any]], repeats: int, warmup: int = 1,
                         setup: dict[str, Callable[[int], Any]] | None = None,
                         teardown: dict[str, Callable[[int], Any]] | None = None) -> dict[str, Timing]:
    """Like ``measure`` for several systems at once, interleaved: each round runs every
    system once, in an order rotated from round to round. On a shared machine a burst of
    background load then falls on all systems alike instead of on whichever ran last."""
    setup, teardown = setup or {}, teardown or {}
    names = list(fns)
    out = {n: Timing() for n in names}
    for i in range(warmup + repeats):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            if name in setup:
                setup[name](i)
            dt, _ = time_once(lambda name=name, i=i: fns[name](i))
            if name in teardown:
                teardown[name](i)
            if i >= warmup:
                out[name].times.append(dt)
    return out


def load_average() -> str:
    """The 1-minute load average and CPU count, to print beside results from a shared machine."""
    try:
        return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    except OSError:
        return f"{os.cpu_count()} CPUs"


def time_once(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds taken by one call of ``fn`` (collector paused, as in ``measure``) and its result."""
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out
    finally:
        gc.enable()


def flush_dirty_pages() -> None:
    """Write back dirty pages now (untimed), so the next timed step does not pay for them."""
    os.sync()


def drop_page_cache() -> bool:
    """Drop the page cache for a cold run (needs root and a writable /proc/sys); False if
    that is not possible here, in which case callers must say their runs were warm."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def progress(iterable: Iterable[Any], **kwargs: Any) -> Iterator[Any]:
    """tqdm on a terminal, silent otherwise (CI logs stay readable)."""
    from tqdm import tqdm

    return iter(tqdm(iterable, disable=not sys.stderr.isatty(), leave=False, **kwargs))


def say(msg: str) -> None:
    """A progress line on stderr (the result table goes to stdout)."""
    print(msg, file=sys.stderr, flush=True)


# -- verdicts and the result table ------------------------------------------
@dataclass
class Result:
    """One row of a benchmark table.

    ``values`` maps a system (``spacefs``, ``parquet``, ``lance``, ``pread``, ...) to its
    figure (seconds unless ``unit`` says otherwise); ``ratio`` is spacefs against the peer
    SPEC names, ``target`` the SPEC figure, ``ok`` the verdict (None: no target).
    """

    operation: str
    values: dict[str, float | None]
    ratio: str = ""
    target: str = ""
    ok: bool | None = None
    unit: str = "s"
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)  # every timed repeat, for the JSON


def ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or b == 0 or a != a or b != b:
        return float("nan")
    return a / b


def fmt_seconds(s: float | None) -> str:
    if s is None or s != s:
        return "-"
    if s >= 10:
        return f"{s:.1f} s"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 0.01:
        return f"{s * 1e3:.0f} ms"
    if s >= 0.001:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} us"


def fmt_value(v: float | None, unit: str) -> str:
    if v is None or v != v:
        return "-"
    if unit == "s":
        return fmt_seconds(v)
    if unit == "bytes":
        return f"{v / (1 << 20):.0f} MiB"
    if unit == "x":
        return f"{v:.2f}x"
    return f"{v:g} {unit}"


def fmt_ratio(r: float, peer: str = "") -> str:
    if r != r:
        return "-"
    return f"{r:.2f}x {peer}".strip()


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("pass" if ok else "MISS")


def render_table(results: Sequence[Result], systems: Sequence[str]) -> str:
    """A Markdown table (readable as plain text too): one row per operation."""
    headers = ["operation", *systems, "ratio", "target", "result"]
    rows = [[r.operation, *(fmt_value(r.values.get(s), r.unit) for s in systems), r.ratio or "-",
             r.target or "-", verdict(r.ok)] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(headers), "| " + " | ".join("-" * w for w in widths) + " |"]
    out += [line(row) for row in rows]
    notes = [f"- {r.operation}: {r.note}" for r in results if r.note]
    if notes:
        out += ["", *notes]
    return "\n".join(out)


def write_json(path: str, results: Sequence[Result], extra: dict[str, Any] | None = None) -> None:
    with open(path, "w") as f:
        json.dump({"results": [asdict(r) for r in results], **(extra or {})}, f, indent=2, default=str)


# -- command line and scratch space ----------------------------------------
def base_parser(description: str) -> argparse.ArgumentParser:
    """Options every benchmark shares: size, repeats, scratch directory, JSON output."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--rows", type=int, default=None, help=f"rows of data (default {FULL_ROWS:,}; {QUICK_ROWS:,} with --quick)")
    p.add_argument("--quick", action="store_true", help="a small, fast smoke run (CI): tiny data, few repeats")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (median reported)")
    p.add_argument("--workdir", default=None, help="scratch directory (default: a fresh one under $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    return p


def resolve_size(args: argparse.Namespace, full_repeats: int = 5, quick_repeats: int = 2) -> tuple[int, int]:
    """(rows, repeats) from the shared options."""
    rows = args.rows if args.rows is not None else (QUICK_ROWS if args.quick else FULL_ROWS)
    repeats = args.repeats if args.repeats is not None else (quick_repeats if args.quick else full_repeats)
    if rows <= 0 or repeats <= 0:
        raise SystemExit("--rows and --repeats must be positive")
    return rows, repeats


@contextmanager
def scratch(args: argparse.Namespace, prefix: str) -> Iterator[str]:
    """A fresh scratch directory, removed afterwards unless ``--keep``."""
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        path = tempfile.mkdtemp(prefix=prefix, dir=args.workdir)
    else:
        path = tempfile.mkdtemp(prefix=prefix)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield path
    finally:
        signal.signal(signal.SIGTERM, previous)
        if args.keep:
            say(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through ``scratch``, which removes its directory


def fresh(path: str) -> str:
    """Remove whatever is at ``path`` and return it."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)
    return path
