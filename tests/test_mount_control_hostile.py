"""A hostile peer against the control socket of a real mount: frames built to crash the
daemon, pin its memory or take all its connections, and a seeded frame fuzzer. After
each, the daemon is alive, its memory bounded, and a normal request works."""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import socket
import tempfile
import threading

import pyarrow as pa
import pytest
from mount_util import make_catalog, mounted, rows, wait_for

import spacefs
from spacefs.mount import launch, paths
from spacefs.mount import protocol as proto

MiB = 1 << 20
LIMITS = {"max_payload": 64 * MiB, "memory_budget": 96 * MiB, "max_result": 1 * MiB,
          "stall_timeout": 2.0, "frame_timeout": 10.0}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    run_dir = tempfile.mkdtemp(prefix="spacefs-test-run-")
    os.environ["SPACEFS_RUN_DIR"] = run_dir
    try:
        c, ds = make_catalog(str(root))
        mnt = str(root / "mnt")
        with mounted(c.location, mnt, limits=LIMITS) as info:
            yield c, ds, mnt, info
    finally:
        del os.environ["SPACEFS_RUN_DIR"]
        shutil.rmtree(run_dir, ignore_errors=True)


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def raw(mnt: str, timeout: float = 30) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(paths.socket_path(mnt))
    return s


def reply(s: socket.socket) -> dict | None:
    try:
        return proto.recv_frame(s).header
    except (proto.ProtocolError, OSError):
        return None


def closed_by_daemon(s: socket.socket) -> bool:
    """Whether the daemon closed (or refused) this connection that never sent anything."""
    return bool(select.select([s], [], [], 0)[0])


def prefix(hlen: int, plen: int, version: int = proto.VERSION, magic: bytes = proto.MAGIC) -> bytes:
    return proto.PREFIX.pack(magic, version, hlen, plen)


def frame(head: bytes, payload: bytes = b"") -> bytes:
    return prefix(len(head), len(payload)) + head + payload


def assert_serving(info, mnt: str) -> None:
    assert launch._alive(info.pid), "the daemon died"
    with spacefs.connect(mnt, timeout=30) as cl:
        assert cl.ping()["protocol"] == proto.VERSION
        assert "pets" in cl.datasets()


def escaped_errors(info) -> list[str]:
    """Exceptions that reached the per-connection catch-all (each one a bug), with their tracebacks."""
    with open(info.log, errors="replace") as f:
        return [chunk[:3000] for chunk in f.read().split("control connection failed")[1:]]


def test_deeply_nested_header_gets_an_error_and_the_daemon_lives(live):
    c, ds, mnt, info = live
    seq = ds.storage.log.head_seq()
    for head in (b"[" * 100_000 + b"]" * 100_000,
                 b'{"op": "ping", "args": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
                 b'{"op": "ping", "args": {"a": ' + b'{"x":' * 40 + b"1" + b"}" * 40 + b"}}",
                 b'{"op": "ping", "args": {"n": 1' + b"0" * 10_000 + b"}}"):
        with raw(mnt) as s:
            s.sendall(frame(head))
            r = reply(s)
            assert r is not None and r["ok"] is False, r
            assert "nests" in r["error"]["message"] or "not JSON" in r["error"]["message"]
            s.sendall(proto.encode({"op": "ping", "args": {}}))  # the same connection still serves
            assert reply(s)["ok"] is True
    assert_serving(info, mnt)
    assert ds.storage.log.head_seq() == seq
    escaped = escaped_errors(info)
    assert not escaped, "\n".join(escaped)


def test_payloads_only_for_write_operations(live):
    c, ds, mnt, info = live
    with raw(mnt) as s:  # declared, never sent: refused from the header alone
        s.sendall(prefix(len(b'{"op":"sql","args":{"query":"SELECT 1"}}'), 60 * MiB)
                  + b'{"op":"sql","args":{"query":"SELECT 1"}}')
        r = reply(s)
        assert r is not None and "only write operations carry a payload" in r["error"]["message"], r
    assert_serving(info, mnt)


def _send_partial(mnt: str, declared: int, sent: int, out: list) -> None:
    head = b'{"op":"append","args":{"name":"pets"}}'
    s = raw(mnt, timeout=4)
    out.append(s)
    try:
        s.sendall(prefix(len(head), declared) + head)
        chunk = b"\x01" * MiB
        for _ in range(sent // MiB):
            s.sendall(chunk)
    except OSError:  # refused (budget), or our sends blocked past the timeout
        pass


def test_partial_huge_frames_do_not_pin_memory(live):
    c, ds, mnt, info = live
    before = rss(info.pid)
    socks: list[socket.socket] = []
    threads = [threading.Thread(target=_send_partial, args=(mnt, 60 * MiB, 50 * MiB, socks)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        grown = rss(info.pid) - before
        # Six 50 MiB partial frames: one fits the 96 MiB budget, the others wait and are
        # refused. Without the budget the daemon would hold 300 MiB.
        assert grown < 100 * MiB, f"daemon RSS grew by {grown / MiB:.0f} MiB"
        assert_serving(info, mnt)
    finally:
        for s in socks:
            s.close()
    escaped = escaped_errors(info)
    assert not escaped, "\n".join(escaped)


def test_declared_sizes_count_before_any_byte_arrives(live):
    c, ds, mnt, info = live
    # Two frames declaring 60 MiB each cannot both be admitted (budget 96 MiB): the second
    # is refused with a clear error although no payload byte was sent.
    head = b'{"op":"append","args":{"name":"pets"}}'
    with raw(mnt) as a, raw(mnt) as b:
        a.sendall(prefix(len(head), 60 * MiB) + head)
        b.sendall(prefix(len(head), 60 * MiB) + head)
        r = reply(b)
        assert r is not None and r["ok"] is False and "memory budget" in r["error"]["message"], r
    assert_serving(info, mnt)


def test_many_idle_connections_never_lock_the_owner_out(live):
    c, ds, mnt, info = live
    early = spacefs.connect(mnt)
    early.ping()
    idle = [raw(mnt) for _ in range(100)]  # more than the 64 slots
    try:
        with spacefs.connect(mnt) as cl:
            assert cl.ping()["protocol"] == proto.VERSION
        # The oldest idle connections were closed for the newcomers; a client whose idle
        # connection was closed reconnects before its next request.
        assert early.datasets() == ["pets"]
        wait_for(lambda: sum(map(closed_by_daemon, idle)) >= len(idle) + 1 - 64, 5.0, "oldest idle connections closed")
        assert not closed_by_daemon(idle[-1])
    finally:
        early.close()
        for s in idle:
            s.close()
    assert_serving(info, mnt)
    escaped = escaped_errors(info)
    assert not escaped, "\n".join(escaped)


def test_sql_results_are_capped_while_they_are_built(live):
    c, ds, mnt, info = live
    before = rss(info.pid)
    with spacefs.connect(mnt) as cl:
        with pytest.raises(proto.ResultTooLarge, match="add LIMIT"):
            cl.sql("SELECT p.*, r.range FROM pets p, range(2000000) r")  # ~ 2 GB if built in full
        assert cl.sql("SELECT id FROM pets ORDER BY id LIMIT 3").column("id").to_pylist() == [0, 1, 2]
    assert rss(info.pid) - before < 200 * MiB
    assert_serving(info, mnt)


# -- the fuzzer -----------------------------------------------------------------------
OPS = ["ping", "datasets", "append", "insert", "upsert", "delete", "add_tag", "add_branch", "refresh", "sql"]


def _json_value(rng: random.Random, depth: int = 0):
    k = rng.randrange(10 if depth < 4 else 7)
    if k == 0:
        return None
    if k == 1:
        return rng.choice([True, False])
    if k == 2:
        return rng.choice([0, -1, 2**63, -(2**63) - 1, 10**30, 7, 99999])
    if k == 3:
        return rng.choice([0.5, -1e308, 1e308])
    if k == 4:
        return rng.choice(["pets", "../pets", "/etc", "", "a" * 300, "pets\x00", "\ud800", "main", "v1",
                           "id = 1", "SELECT 1", "SELECT * FROM pets", "id = = 1", "' OR 1=1 --", "é" * 50])
    if k in (5, 6):
        return "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(0, 20)))
    if k == 7:
        return [_json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["name", "branch", "filter", "tag", "query", "version", "snapshot_id", "x"]):
            _json_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _good_payload() -> bytes:
    return proto.table_to_ipc(pa.table(rows([5000])))


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 8)):
        if not b:
            break
        i = rng.randrange(len(b))
        choice = rng.randrange(3)
        if choice == 0:
            b[i] = rng.randrange(256)
        elif choice == 1:
            del b[i : i + rng.randrange(1, 16)]
        else:
            b[i:i] = os.urandom(rng.randrange(1, 16))
    return bytes(b)


def fuzz_frame(rng: random.Random, good_payload: bytes) -> tuple[bytes, bool]:
    """One hostile frame, and whether it is whole (the daemon owes a reply)."""
    kind = rng.randrange(12)
    if kind == 0:  # random bytes
        return os.urandom(rng.randrange(1, 64)), False
    if kind == 1:  # a valid frame cut short
        f = proto.encode({"op": rng.choice(OPS), "args": {"name": "pets"}}, good_payload)
        return f[: rng.randrange(1, len(f))], False
    if kind == 2:  # lengths far beyond the limits
        return prefix(rng.choice([1 << 20, 1 << 31, 2**32 - 1]), rng.choice([0, 1 << 40, 2**64 - 1])), False
    if kind == 3:  # bad magic or version
        return prefix(2, 0, version=rng.randrange(256), magic=rng.choice([b"SPFS", b"EVIL", b"\0\0\0\0"])) + b"{}", False
    if kind == 4:  # deep nesting, in the header's every position
        d = rng.choice([33, 500, 50_000])
        inner = b"[" * d + b"]" * d if rng.random() < 0.5 else b'{"a":' * d + b"1" + b"}" * d
        return frame(b'{"op":"ping","args":' + inner + b"}" if rng.random() < 0.5 else inner), True
    if kind == 5:  # header not JSON / not UTF-8 / not an object
        return frame(rng.choice([os.urandom(rng.randrange(1, 200)), b"[1,2]", b'"op"', b"null", b"{", b"\xff{}",
                                 b'{"op":"ping"' + b"," * 1000 + b"}", b'{"op":1e999999}', b"{}"])), True
    if kind == 6:  # valid-looking ops with wrong-typed or hostile args
        return proto.encode({"op": rng.choice(OPS), "args": _json_value(rng)}), True
    if kind == 7:  # write ops with bad payloads
        bad = rng.choice([os.urandom(rng.randrange(1, 2000)), _mutate(rng, good_payload), good_payload[:50],
                          proto.table_to_ipc(pa.table({"id": ["x"]}))])
        return proto.encode({"op": rng.choice(["append", "insert", "upsert"]), "args": {"name": "pets"}}, bad), True
    if kind == 8:  # a mutated valid frame (lengths may no longer match)
        f = proto.encode({"op": rng.choice(OPS), "args": {"name": "pets", "query": "SELECT 1"}})
        return _mutate(rng, f), False
    if kind == 9:  # wrong field types at the top
        return proto.encode({"op": _json_value(rng), "args": _json_value(rng), "extra": _json_value(rng)}), True
    if kind == 10 and rng.random() < 0.2:  # reads with hostile SQL (each one opens DuckDB: fewer)
        q = rng.choice(["SELECT * FROM read_csv('/etc/passwd')", "COPY pets TO '/tmp/x.csv'", "PRAGMA version",
                        "ATTACH '/tmp/x.db'", "INSTALL httpfs", "SELECT 1;" * 50, "SET enable_external_access=true",
                        "SELECT count(*) FROM pets", "SELECT " + "(" * 2000 + "1" + ")" * 2000, ""])
        return proto.encode({"op": "sql", "args": {"query": q}}), True
    ok = proto.encode({"op": rng.choice(["ping", "datasets"]), "args": {}})  # interleaved good requests
    return ok, True


def test_frame_fuzzer(live):
    c, ds, mnt, info = live
    rng = random.Random(int(os.environ.get("SPACEFS_FUZZ_SEED", "20261129")))
    good_payload = _good_payload()
    before = rss(info.pid)
    n, replies, s = 3000, 0, None
    try:
        for _ in range(n):
            data, whole = fuzz_frame(rng, good_payload)
            if s is None:
                s = raw(mnt, timeout=30)
            try:
                s.sendall(data)
            except OSError:
                s.close()
                s = None
                continue
            if not whole:  # the daemon would wait for the rest: hang up instead, as a crashing client would
                s.close()
                s = None
                continue
            r = reply(s)
            if r is None:
                s.close()
                s = None
                continue
            replies += 1
            assert isinstance(r.get("ok"), bool), r
            if not r["ok"]:
                assert r["error"]["type"] and r["error"]["message"], r
                assert len(json.dumps(r)) < 10_000, "error replies stay small"
    finally:
        if s is not None:
            s.close()
    assert replies > n // 3
    assert rss(info.pid) - before < 150 * MiB
    assert_serving(info, mnt)
    escaped = escaped_errors(info)
    assert not escaped, "\n".join(escaped)


def test_frames_from_many_connections_at_once(live):
    c, ds, mnt, info = live
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(100):
                data, whole = fuzz_frame(rng, b"")
                with raw(mnt) as s:
                    s.sendall(data)
                    if whole:
                        reply(s)
        except OSError:
            pass
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert_serving(info, mnt)
    escaped = escaped_errors(info)
    assert not escaped, "\n".join(escaped)

