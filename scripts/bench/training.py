"""Training reads: spacefs against Lance, a packed file read with pread, and HuggingFace.

Data (SPEC section 7): ROWS rows of int64 id, string label, 4 KiB random blob, written
once to a spacefs dataset, a Lance dataset and one packed file of the blobs back to back.

Measured side by side in this run:
- random access of 2,000 random rows, warm (best of --repeat rounds, all taking turns):
  spacefs ``RandomAccessDataSource.__getitems__``, Lance ``take``, one ``os.pread`` per
  blob of the packed file (the physical limit of a syscall per record), and slices of a
  memory map of the packed file (the floor without syscalls, which spacefs uses for
  small records);
- one PyTorch DataLoader epoch (4 workers, batch 64, shuffled) over a map-style dataset
  of (id, label, blob) rows backed by each of the three;
- the HuggingFace export ``ds.to_huggingface()`` against ``datasets.Dataset.from_dict``
  of the same rows.

    python scripts/bench/training.py [--rows 200000] [--take 2000] [--repeat 30]

Targets: random access <= 1.5x of pread and faster than Lance.
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

BLOB = 4096


def make_table(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    blobs = pa.py_buffer(rng.bytes(rows * BLOB))
    offsets = pa.py_buffer((np.arange(rows + 1, dtype=np.int64) * BLOB).astype(np.int32 if rows * BLOB < 2**31 else np.int64))
    btype = pa.binary() if rows * BLOB < 2**31 else pa.large_binary()
    blob = pa.Array.from_buffers(btype, rows, [None, offsets, blobs]).cast(pa.binary())
    return pa.table({
        "id": pa.array(np.arange(rows, dtype=np.int64)),
        "label": pa.array([f"label_{i % 1000}" for i in range(rows)]),
        "blob": blob,
    })


def race(contenders: dict[str, Callable[[], Any]], rounds: int) -> dict[str, tuple[float, Any]]:
    """Best wall time of each contender over ``rounds`` warm rounds, run in turn within
    each round so that all of them see the same machine load."""
    out = {name: fn() for name, fn in contenders.items()}  # warm-up, untimed
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(rounds):
        for name, fn in contenders.items():
            t = time.perf_counter()
            out[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return {name: (best[name], out[name]) for name in contenders}


# -- the three map-style sources, same rows, same output --------------------------------
class PackedRows:
    """The physical floor: blobs back to back in one file, one pread each."""

    def __init__(self, path: str, ids: np.ndarray, labels: list[str]):
        self.path, self.ids, self.labels = path, ids, labels
        self._fd, self._pid = -1, -1

    def fd(self) -> int:
        if self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def __len__(self) -> int:
        return len(self.ids)

    def blobs(self, idx: Sequence[int]) -> list[bytes]:
        fd, pread = self.fd(), os.pread
        return [pread(fd, BLOB, i * BLOB) for i in idx]

    def blobs_mmap(self, idx: Sequence[int]) -> list[bytes]:
        """The floor without a syscall per record (what spacefs does for small records)."""
        if getattr(self, "_map", None) is None:
            self._map = mmap.mmap(self.fd(), 0, prot=mmap.PROT_READ)
        m = self._map
        return [m[i * BLOB : i * BLOB + BLOB] for i in idx]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, idx: Sequence[int]) -> list[dict[str, Any]]:
        idx = [int(i) for i in idx]
        return [{"id": int(self.ids[i]), "label": self.labels[i], "blob": b}
                for i, b in zip(idx, self.blobs(idx), strict=True)]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": -1, "_pid": -1, "_map": None}


class LanceRows:
    """Lance ``take``; the dataset is opened per process (Lance is not fork-safe)."""

    def __init__(self, path: str):
        self.path = path
        self._ds, self._pid = None, -1
        self._len = self.ds().count_rows()

    def ds(self) -> Any:
        if self._pid != os.getpid():
            import lance

            self._ds, self._pid = lance.dataset(self.path), os.getpid()
        return self._ds

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, idx: Sequence[int]) -> list[dict[str, Any]]:
        return self.ds().take(list(idx)).to_pylist()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ds": None, "_pid": -1}


def identity(batch: list[Any]) -> list[Any]:
    return batch


def epoch(dataset: Any, workers: int, batch: int, context: str | None = None) -> tuple[float, int]:
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=identity,
                        generator=torch.Generator().manual_seed(0), multiprocessing_context=context)
    t = time.perf_counter()
    n = sum(len(b) for b in loader)
    return time.perf_counter() - t, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--take", type=int, default=2_000)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one, removed after)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # 4 workers on 2 CPUs, as asked

    import lance

    from spacefs import Dataset, RandomAccessDataSource
    from spacefs.torch_data import TorchMapDataset

    work = args.dir or tempfile.mkdtemp(prefix="spacefs-bench-training-")
    os.makedirs(work, exist_ok=True)
    results: list[tuple[str, str, float, float, str]] = []
    try:
        table = make_table(args.rows)
        print(f"{args.rows} rows of id, label, {BLOB} B blob in {work}")
        ds = Dataset.create(os.path.join(work, "spacefs"), table.schema, ["id"], ["blob"])
        ds.local().append(table)
        lance.write_dataset(table, os.path.join(work, "lance"))
        packed = os.path.join(work, "packed.bin")
        with open(packed, "wb") as f:
            f.write(table.column("blob").combine_chunks().buffers()[2])

        # -- random access, warm ------------------------------------------------------
        idx = np.random.default_rng(1).choice(args.rows, size=min(args.take, args.rows), replace=False)
        idx_list = idx.tolist()
        source = RandomAccessDataSource({"blob": ds})
        lds = lance.dataset(os.path.join(work, "lance"))
        packed_rows = PackedRows(packed, table.column("id").to_numpy(), table.column("label").to_pylist())
        raced = race({
            "spacefs": lambda: source.__getitems__(idx_list),
            "lance": lambda: lds.take(idx_list, columns=["blob"]),
            "pread": lambda: packed_rows.blobs(idx_list),
            "mmap": lambda: packed_rows.blobs_mmap(idx_list),
        }, args.repeat)
        (t_space, got), (t_lance, lgot), (t_pread, pgot) = raced["spacefs"], raced["lance"], raced["pread"]
        t_mmap, mgot = raced["mmap"]
        assert got == pgot == mgot == lgot.column("blob").to_pylist(), "the readers disagree"
        n = len(idx_list)
        results.append((f"random {n} rows (__getitems__)", "pread", t_space, t_pread, "<= 1.5x"))
        results.append((f"random {n} rows (__getitems__)", "Lance take", t_space, t_lance, "< 1.0x"))
        results.append((f"random {n} rows (__getitems__)", "packed mmap slices", t_space, t_mmap, ""))

        # -- DataLoader epoch --------------------------------------------------------
        space_map = TorchMapDataset(ds, fields=["id", "label", "blob"])
        lance_map = LanceRows(os.path.join(work, "lance"))
        e_space, n1 = epoch(space_map, args.workers, args.batch)
        e_lance, n2 = epoch(lance_map, args.workers, args.batch, "forkserver")  # Lance hangs after fork
        e_pread, n3 = epoch(packed_rows, args.workers, args.batch)
        assert n1 == n2 == n3 == args.rows
        what = f"DataLoader epoch ({args.workers} workers, batch {args.batch})"
        results.append((what, "pread", e_space, e_pread, ""))
        results.append((what, "Lance take (forkserver)", e_space, e_lance, ""))

        # -- HuggingFace export --------------------------------------------------------
        import datasets

        datasets.disable_progress_bars()
        cols = {n: table.column(n).to_pylist() for n in table.column_names}
        t = time.perf_counter()
        hf_ours = ds.to_huggingface()
        h_space = time.perf_counter() - t
        t = time.perf_counter()
        hf_dict = datasets.Dataset.from_dict(cols)
        h_dict = time.perf_counter() - t
        assert hf_ours.num_rows == hf_dict.num_rows == args.rows
        del cols
        results.append(("HuggingFace export", "Dataset.from_dict", h_space, h_dict, ""))
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"| {'what':<44} | {'peer':<23} | {'spacefs':>10} | {'peer time':>10} | {'ratio':>6} | target   |")
    print(f"| {'-' * 44} | {'-' * 23} | {'-' * 10} | {'-' * 10} | {'-' * 6} | -------- |")
    for what, peer, ours, theirs, target in results:
        print(f"| {what:<44} | {peer:<23} | {fmt(ours):>10} | {fmt(theirs):>10} | {ours / theirs:>5.2f}x | {target:<8} |")
    print()
    print(f"random access per row: spacefs {t_space / n * 1e6:.2f} us, pread {t_pread / n * 1e6:.2f} us, "
          f"mmap {t_mmap / n * 1e6:.2f} us, Lance {t_lance / n * 1e6:.2f} us")


def fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


if __name__ == "__main__":
    main()
