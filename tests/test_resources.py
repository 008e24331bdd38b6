"""Resources: every entry point gives back the files it opens.

The counts are real: ``/proc/self/fd`` (or the daemon's ``/proc/PID/fd``) before and after
a workload that reads many versions, diffs, views, random-access sources and HF exports.
Each workload may leave at most ``SLACK`` descriptors behind, far less than it opened.
"""

from __future__ import annotations

import gc
import os
import random
import resource
import subprocess
import sys
import threading

import pyarrow as pa
import pytest

from spacefs import Dataset, DirCatalog, RandomAccessDataSource
from spacefs.engine.recordpool import POOL, RecordPool, derive_cap

SLACK = 64
VERSIONS = 30
SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.string()), ("blob", pa.binary())])
HERE = os.path.dirname(os.path.abspath(__file__))


def fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rows(ids, tag: str = "") -> dict:
    ids = list(ids)
    return {"id": ids, "label": [f"l{i % 3}" for i in ids], "blob": [f"b{i}{tag}".encode() * 50 for i in ids]}


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> str:
    """A catalog whose dataset ``src`` has 30 snapshots (one record file each)."""
    root = str(tmp_path_factory.mktemp("res") / "cat")
    ds = DirCatalog(root).create_dataset("src", SCHEMA, ["id"], ["blob"])
    for v in range(VERSIONS):
        ds.local().append(rows(range(v * 10, v * 10 + 10)))
    return ds.location


def settle() -> int:
    gc.collect()
    return fds()


# -- the pool itself -------------------------------------------------------------------
def test_eviction_never_closes_a_leased_descriptor(history):
    pool = RecordPool(cap=2)
    rels = [r["file"] for r in Dataset.load(history).local().read_all(reference_read=True).column("blob").to_pylist()]
    rels = sorted(set(rels))
    held = pool.lease(history, rels[0])
    fd = held.fd
    for rel in rels[1:6]:  # pushes rels[0] out of the LRU while it is leased
        pool.release(pool.lease(history, rel))
    assert len(pool) <= 2
    assert os.fstat(fd).st_size == held.size  # still open: the lease keeps it
    pool.release(held)
    with pytest.raises(OSError):
        os.fstat(fd)  # closed once the lease ended
    pool.close()
    assert pool.open_count() == 0


def test_an_owner_collected_inside_a_pool_operation_does_not_deadlock(history):
    """Owners detach from ``weakref.finalize``; the collector may run it inside any
    allocation, also one a lease makes while this thread holds the pool's lock (a CI run
    hung there). The detach must not wait, and must still close the idle files."""
    import weakref

    pool = RecordPool(cap=8)
    rels = sorted({r["file"] for r in Dataset.load(history).local().read_all(reference_read=True)
                   .column("blob").to_pylist()})
    root = pool.attach(history)
    pool.release(pool.lease_many(history, rels[:3]))
    assert pool.open_count() == 3

    class Owner:
        pass

    owner = Owner()
    owner.cycle = owner  # only the cyclic collector frees it
    weakref.finalize(owner, pool.detach, root)
    del owner
    done = threading.Event()
    opened = pool._open

    def open_and_collect(path: str) -> int:
        gc.collect()  # the collector, run by an allocation while lease_many holds the lock
        return opened(path)

    pool._open = open_and_collect

    def lease_a_new_file() -> None:
        pool.release(pool.lease(history, rels[3]))
        done.set()

    t = threading.Thread(target=lease_a_new_file, daemon=True)
    t.start()
    assert done.wait(30), "detach waited for the lock its own thread holds"
    # Applied before the lease let go of the lock: the idle files are closed.
    assert root not in pool._owners and pool.open_count() <= 1


def test_budget_holds_under_threads(history):
    pool = RecordPool(cap=4)
    refs = Dataset.load(history).local().read_all(reference_read=True).column("blob").to_pylist()
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            for _ in range(300):
                r = rnd.choice(refs)
                h = pool.lease(history, r["file"])
                try:
                    assert len(os.pread(h.fd, r["size"], r["offset"])) == r["size"]
                finally:
                    pool.release(h)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert pool.open_count() <= 4
    pool.close()


def test_forked_child_starts_with_an_empty_pool(history):
    src = RandomAccessDataSource({"blob": history})
    src[:50]
    assert POOL.open_count() > 0
    pid = os.fork()
    if pid == 0:  # the child: nothing inherited, and reads still work
        ok = POOL.open_count() == 0 and src[3] == rows([3])["blob"][0]
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    src.close()


def test_budget_follows_the_descriptor_limit():
    code = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256));"
            "from spacefs.engine.recordpool import derive_cap; print(derive_cap())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) == 64  # half of 256, less the margin
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert 8 <= derive_cap(raise_soft=False) <= 4096


# -- every entry point -------------------------------------------------------------------
def test_reading_every_version_three_times(history):
    start = settle()
    for _ in range(3):
        for v in range(1, VERSIONS + 1):
            t = Dataset.load(history).local().read_all(version=v)  # a fresh handle per read
            assert t.num_rows == v * 10
    ds = Dataset.load(history)
    for _ in range(3):
        for v in range(1, VERSIONS + 1):
            assert ds.local().read(version=v, batch_size=7).__next__().num_rows == 7  # abandoned iterators
    assert POOL.open_count() <= POOL.cap
    del ds, t
    assert settle() - start <= SLACK


def test_diffs(history):
    start = settle()
    for i in range(VERSIONS):
        changes = list(Dataset.load(history).local().diff(i, i + 1))
        assert sum(c.data.num_rows for c in changes) == 10
    assert settle() - start <= SLACK


def test_views_and_materialized_views(history, tmp_path):
    src = Dataset.load(history)
    view = src.map_batches(lambda b: b, SCHEMA, output_record_fields=["blob"])
    start = settle()
    for v in range(1, VERSIONS + 1):
        assert view.local().read_all(version=v).num_rows == v * 10
    mv = view.materialize(str(tmp_path / "mv"))
    for v in range(1, VERSIONS + 1, 3):
        mv.local().refresh(version=v)
        assert mv.local().read_all().num_rows == v * 10
    del mv, view, src
    assert settle() - start <= SLACK


def test_dropped_random_access_sources(history):
    start = settle()
    for i in range(20):
        src = RandomAccessDataSource({"blob": history}, mmap=i % 2 == 0)
        assert src.__getitems__(list(range(0, len(src), 3)))[0] == rows([0])["blob"][0]
        del src
    assert settle() - start <= SLACK
    with RandomAccessDataSource({"blob": history}) as src:
        src[:]
    assert settle() - start <= SLACK


def test_huggingface_exports(history):
    start = settle()
    ds = Dataset.load(history)
    for v in range(1, VERSIONS + 1, 2):
        assert len(ds.to_huggingface(version=v)) == v * 10
    del ds
    assert settle() - start <= SLACK


def test_engine_workloads_under_a_256_descriptor_limit():
    """This module's engine workloads, and the read tests, in a process whose soft and hard
    limits are 256 descriptors: nothing runs out."""
    code = ("import resource, sys, pytest; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256));"
            "sys.exit(pytest.main(['-q', '-x', '-p', 'no:cacheprovider', '-k', 'not 256 and not mount', "
            f"{os.path.join(HERE, 'test_resources.py')!r}, {os.path.join(HERE, 'test_engine_reads.py')!r}]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=HERE, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


# -- the mount daemon --------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_mount_daemon_following_300_commits_stays_flat(tmp_path, monkeypatch):
    """A daemon serving a dataset through 300 commits (made through its control socket)
    while files of new and old versions are read: descriptors and memory level off."""
    from mount_util import image_bytes, make_catalog, mounted
    from mount_util import rows as pet_rows

    import spacefs

    monkeypatch.setenv("SPACEFS_IDLE_CLOSE", "1")  # files unread for 1 s are closed
    cat, _ = make_catalog(str(tmp_path), n=10)
    mnt = str(tmp_path / "mnt")
    rnd = random.Random(7)
    marks: dict[int, tuple[int, int]] = {}
    with mounted(cat.location, mnt) as info, spacefs.connect(mnt) as client:
        versions = os.path.join(mnt, "pets", "versions")
        for i in range(300):
            key = 1000 + i
            sid = client.append("pets", pet_rows([key])).snapshot_id
            with open(os.path.join(versions, str(sid), "rows", str(key), "image"), "rb") as f:
                assert f.read() == image_bytes(key)
            old = rnd.randrange(1, sid + 1)
            k = rnd.randrange(10) if old == 1 else 1000 + old - 2
            with open(os.path.join(versions, str(old), "rows", str(k), "image"), "rb") as f:
                assert f.read() == image_bytes(k)
            if i + 1 in (50, 300):
                marks[i + 1] = (fds(info.pid), rss_kib(info.pid))
    (f50, r50), (f300, r300) = marks[50], marks[300]
    print(f"daemon after 50 commits: {f50} fds, {r50 // 1024} MiB; after 300: {f300} fds, {r300 // 1024} MiB")
    assert f300 <= f50 + SLACK, marks
    assert r300 - r50 < 150 * 1024, marks


def test_out_of_descriptors_the_pool_gives_back_idle_files(history):
    """When the rest of the process has used up the descriptor limit, the pool closes
    idle files of its own to open the one a read needs."""
    code = f"""
import os, resource
from spacefs.engine.recordpool import RecordPool
pool = RecordPool(cap=1000)  # a budget above the limit: only EMFILE can stop it
from spacefs import Dataset
refs = Dataset.load({history!r}).local().read_all(reference_read=True).column("blob").to_pylist()
rels = sorted({{r["file"] for r in refs}})
for rel in rels[:-1]:
    pool.release(pool.lease({history!r}, rel))
used = len(os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (used + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
hog = []
try:
    while True:
        hog.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
h = pool.lease({history!r}, rels[-1])
assert os.pread(h.fd, 1, 0)
print("ok", len(pool))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr[-2000:]


def open_under(root: str) -> int:
    return sum(1 for h in list(POOL._handles.values()) if h.root == root)


def test_closing_a_dataset_closes_its_files(history):
    gc.collect()
    with Dataset.load(history) as ds:
        ds.local().read_all()
        assert open_under(ds.location) > 0
    assert open_under(history) == 0


def test_the_mount_tree_closes_a_dataset_that_goes_away(tmp_path):
    from mount_util import image_bytes, make_catalog

    from spacefs.mount.tree import Tree

    cat, ds = make_catalog(str(tmp_path), n=5)
    location = ds.location
    del ds
    gc.collect()
    with Tree(cat.location) as tree:
        node = tree.root
        for part in ("pets", "versions", "1", "rows", "3", "image"):
            node = tree.lookup(node, part)
        assert tree.read(node, 0, 1 << 20) == image_bytes(3)
        assert open_under(location) == 1
        cat.delete_dataset("pets")
        tree.poll()
        assert open_under(location) == 0 and not tree._states


def test_the_inode_table_hands_out_the_oldest_entries_beyond_its_bound():
    from spacefs.mount.fuse_ops import InodeTable
    from spacefs.mount.tree import Node

    table = InodeTable(Node("root"))
    inos = [table.remember(Node("row", "d", 1, r), 1, str(r).encode()) for r in range(10)]
    table.remember(Node("row", "d", 1, 0), 1, b"0")  # looked up again: now the newest
    assert table.over(7) == [(1, b"1"), (1, b"2"), (1, b"3")]
    assert table.over(7) == []  # each handed out once
    table.forget(inos[1], 1)  # the kernel forgot it: gone from the table
    assert len(table) == 10
    table.forget(inos[5], 1)  # forgotten before it was handed out: not handed out
    assert table.over(0) == [(1, str(r).encode()) for r in (4, 6, 7, 8, 9, 0)]


def test_the_daemon_keeps_a_bounded_number_of_inodes(tmp_path, monkeypatch):
    """Walking many rows of many versions: past SPACEFS_INODES_KEPT the daemon makes the
    kernel drop the oldest entries, the kernel forgets their inodes, the table shrinks
    (the daemon's own count, from its memdump log lines)."""
    import json
    import re

    from mount_util import image_bytes, make_catalog, mounted, wait_for

    monkeypatch.setenv("SPACEFS_INODES_KEPT", "40")
    monkeypatch.setenv("SPACEFS_MEMDUMP", "0.2")
    cat, _ = make_catalog(str(tmp_path), n=60)
    mnt = str(tmp_path / "mnt")
    with mounted(cat.location, mnt) as info:
        rows = os.path.join(mnt, "pets", "versions", "1", "rows")
        for r in range(60):
            with open(os.path.join(rows, str(r), "image"), "rb") as f:
                assert f.read() == image_bytes(r)

        def inodes() -> int | None:
            with open(info.log) as f:
                counts = re.findall(r"tables (\{.*\})", f.read())
            return json.loads(counts[-1].replace("'", '"'))["inodes"] if counts else None

        wait_for(lambda: (n := inodes()) is not None and n <= 40 + 8, timeout=20, what="inodes back under the bound")
        with open(os.path.join(rows, "0", "image"), "rb") as f:  # a dropped entry: looked up again
            assert f.read() == image_bytes(0)
