"""Helpers shared by the mount tests: example datasets, real mounts, bounded waits."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pyarrow as pa

from spacefs import Dataset, DirCatalog
from spacefs.mount import launch

PYTHON = sys.executable
SPACEFS = os.path.join(os.path.dirname(PYTHON), "spacefs")

SCHEMA = pa.schema([
    ("id", pa.int64()),
    ("label", pa.string()),
    ("image_name", pa.string()),
    ("score", pa.float64()),
    ("ok", pa.bool_()),
    ("tags", pa.list_(pa.string())),
    ("meta", pa.struct([("w", pa.int32()), ("src", pa.string())])),
    ("raw", pa.binary()),
    ("image", pa.binary()),
])
LAYOUT = {"path": "{label}/{image_name}", "content": "image"}


def image_bytes(i: int, size: int = 100) -> bytes:
    return bytes((i * 7 + k) % 251 for k in range(size + i % 13))


def rows(ids, label_of=lambda i: ["cat", "dog", "bird"][i % 3]) -> dict:
    ids = list(ids)
    return {
        "id": ids,
        "label": [label_of(i) for i in ids],
        "image_name": [f"img_{i:04d}.bin" for i in ids],
        "score": [i / 4 for i in ids],
        "ok": [i % 2 == 0 for i in ids],
        "tags": [[f"t{i}", "x"] if i % 5 else None for i in ids],
        "meta": [{"w": i, "src": f"s{i}"} for i in ids],
        "raw": [b"\x00\xffraw" + str(i).encode() for i in ids],
        "image": [image_bytes(i) for i in ids],
    }


def make_catalog(root: str, n: int = 30, layout: dict | None = LAYOUT) -> tuple[DirCatalog, Dataset]:
    cat = DirCatalog(os.path.join(root, "catalog"))
    ds = cat.create_dataset("pets", SCHEMA, ["id"], ["image"], file_layout=layout)
    ds.local().append(rows(range(n)))
    ds.add_tag("v1")
    return cat, ds


def wait_for(pred: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> float:
    """Poll ``pred`` until true; return the time it took. Fails after ``timeout``."""
    t0 = time.monotonic()
    while True:
        try:
            if pred():
                return time.monotonic() - t0
        except OSError:
            pass
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.01)


@contextlib.contextmanager
def mounted(source: str, mnt: str, **kwargs) -> Iterator[launch.MountInfo]:
    """A real mount by a background daemon; always unmounted, daemon always gone."""
    os.makedirs(mnt, exist_ok=True)
    with launch.mounted(source, mnt, **kwargs) as info:
        yield info
    assert not launch._alive(info.pid), "the daemon outlived its mount"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(info.log)  # kept when a test fails, for the post-mortem


def cli(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    res = subprocess.run([SPACEFS, *args], capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"spacefs {' '.join(args)} failed ({res.returncode}): {res.stderr}")
    return res


def children_named(pid: int, comm: str) -> list[int]:
    """Child processes of ``pid`` called ``comm`` (the auto-unmount helper of a daemon)."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == pid and name == comm:
            out.append(int(p))
    return out
