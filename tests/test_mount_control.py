"""The control socket of a real mount: the client API, and hostile requests over real
sockets (the daemon keeps serving and no data changes)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import textwrap

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from mount_util import PYTHON, image_bytes, make_catalog, mounted, rows, wait_for

import spacefs
from spacefs.engine import errors
from spacefs.mount import paths
from spacefs.mount import protocol as proto


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("control")
    # This module's sockets live in their own directory, reachable by other users
    # (pytest's tmp dirs are not) for the peer-credentials test.
    run_dir = tempfile.mkdtemp(prefix="spacefs-test-run-")
    os.environ["SPACEFS_RUN_DIR"] = run_dir
    try:
        c, ds = make_catalog(str(root))
        mnt = str(root / "mnt")
        with mounted(c.location, mnt):
            yield c, ds, mnt
    finally:
        del os.environ["SPACEFS_RUN_DIR"]
        shutil.rmtree(run_dir, ignore_errors=True)


def raw(mnt: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(paths.socket_path(mnt))
    return s


def reply(s: socket.socket) -> dict | None:
    """The daemon's reply frame, or None if it closed the connection."""
    try:
        return proto.recv_frame(s).header
    except (proto.ProtocolError, OSError):  # closed, or reset with our bytes unread
        return None


def alive_and_unchanged(c, ds, mnt, seq: int) -> None:
    with spacefs.connect(mnt) as cl:
        assert cl.ping()["protocol"] == proto.VERSION
        assert "pets" in cl.datasets()
    assert ds.storage.log.head_seq() == seq


def test_client_api_round_trip(live):
    c, ds, mnt = live
    with spacefs.connect(mnt) as cl:
        assert cl.datasets() == ["pets"]
        r = cl.append("pets", pa.table(rows(range(100, 103))).cast(ds.schema))
        assert r.state.name == "SUCCEEDED" and r.storage_statistics_update["rows"] == 3
        with pytest.raises(errors.PrimaryKeyExistsError):
            cl.insert("pets", rows([100]))
        r = cl.insert("pets", rows([200]))
        assert r.snapshot_id == ds.storage.head().last_snapshot_id
        up = rows([100])
        up["label"] = ["lion"]
        cl.upsert("pets", up)
        assert cl.delete("pets", "id = 101").state.name == "SUCCEEDED"
        assert cl.delete("pets", "id = 999999").state.name == "SKIPPED"
        cl.add_tag("pets", "api")
        cl.add_branch("pets", "exp")
        cl.append("pets", rows([300]), branch="exp")
        t = cl.sql("SELECT id, label FROM pets WHERE id >= 100 ORDER BY id")
        assert t.to_pylist() == [{"id": 100, "label": "lion"}, {"id": 102, "label": "cat"}, {"id": 200, "label": "bird"}]
        with pytest.raises(errors.UserInputError):
            cl.sql("SELECT * FROM read_csv('/etc/passwd')")
        with pytest.raises(errors.UserInputError):
            cl.sql(f"COPY pets TO '{ds.location}/evil.csv'")
        assert not os.path.exists(f"{ds.location}/evil.csv")
        with pytest.raises(errors.NotFoundError):
            cl.append("nope", rows([1]))
    head = ds.storage.head()
    pets = os.path.join(mnt, "pets")
    wait_for(lambda: os.readlink(os.path.join(pets, "branches", "exp")) == f"../versions/{head.branches['exp']}", 1.0)
    wait_for(lambda: os.readlink(os.path.join(pets, "tags", "api")) == f"../versions/{head.tags['api']}", 1.0)
    assert open(os.path.join(pets, "current", "rows", "100", "label")).read() == "lion"
    assert not os.path.exists(os.path.join(pets, "current", "rows", "300"))
    assert open(os.path.join(pets, "branches", "exp", "rows", "300", "image"), "rb").read() == image_bytes(300)


def test_relabel_over_the_socket_sends_no_images(live):
    c, ds, mnt = live
    with spacefs.connect(mnt) as cl:
        # Every index field, no image: the stored images stay.
        relabel = {k: v for k, v in rows([5, 6], label_of=lambda i: "tiger").items() if k != "image"}
        cl.upsert("pets", pa.table(relabel).cast(ds.schema.remove(ds.schema.get_field_index("image"))))
        seq = ds.storage.log.head_seq()
        unknown = {k: v for k, v in rows([7, 5000]).items() if k != "image"}
        with pytest.raises(errors.SchemaError, match="not stored"):
            cl.upsert("pets", unknown)
        assert ds.storage.log.head_seq() == seq
    got = ds.local().read_all(filter_=pc.field("id").isin([5, 6, 7])).sort_by("id")
    assert got.column("label").to_pylist() == ["tiger", "tiger", rows([7])["label"][0]]
    assert got.column("image").to_pylist() == [image_bytes(i) for i in (5, 6, 7)]


def test_refresh_of_a_materialized_view(live):
    c, ds, mnt = live
    view = ds.map_batches(lambda b: b, ds.schema, output_record_fields=["image"])
    c.materialize("pets_mv", view)
    with spacefs.connect(mnt) as cl:
        wait_for(lambda: "pets_mv" in cl.datasets(), 1.0)
        r = cl.refresh("pets_mv")
        assert r.state.name == "SUCCEEDED"
        with pytest.raises(errors.UserInputError):
            cl.refresh("pets")  # a dataset, not a view
        with pytest.raises(errors.UserInputError):
            cl.append("pets_mv", rows([1]))  # views change only by refresh
    n = ds.local().read_all().num_rows
    wait_for(lambda: len(os.listdir(os.path.join(mnt, "pets_mv", "current", "rows"))) == n, 1.0)



def test_null_keys_and_bad_filters_are_refused_and_change_nothing(live):
    c, ds, mnt = live
    seq = ds.storage.log.head_seq()
    bad = rows([500, 501])
    bad["id"] = [500, None]
    with spacefs.connect(mnt) as cl:
        for kind in ("append", "insert", "upsert"):
            with pytest.raises(errors.SchemaError, match="primary key field 'id' is null"):
                getattr(cl, kind)("pets", bad)
        with pytest.raises(errors.FilterError, match="subqueries are not supported"):
            cl.delete("pets", "id NOT IN (SELECT id FROM pets)")
        with pytest.raises(errors.FilterError, match="not a single SQL expression"):
            cl.delete("pets", "true) AS m FROM __spacefs_rows UNION ALL SELECT (true")
    alive_and_unchanged(c, ds, mnt, seq)

HOSTILE_FRAMES = {
    "random bytes": os.urandom(64),
    "bad magic": b"EVIL" + os.urandom(16),
    "future version": struct.pack("!4sB3xIQ", b"SPFS", 99, 2, 0) + b"{}",
    "huge header": struct.pack("!4sB3xIQ", b"SPFS", 1, 1 << 30, 0),
    "huge payload": struct.pack("!4sB3xIQ", b"SPFS", 1, 2, 1 << 40) + b"{}",
}


@pytest.mark.parametrize("what", sorted(HOSTILE_FRAMES))
def test_broken_frames_get_an_error_and_a_closed_connection(live, what):
    c, ds, mnt = live
    seq = ds.storage.log.head_seq()
    with raw(mnt) as s:
        s.sendall(HOSTILE_FRAMES[what])
        r = reply(s)
        assert r is None or (r["ok"] is False and r["error"]["message"])
        assert reply(s) is None  # and the connection is closed
    alive_and_unchanged(c, ds, mnt, seq)


def _header(h: bytes, payload: bytes = b"") -> bytes:
    return struct.pack("!4sB3xIQ", b"SPFS", 1, len(h), len(payload)) + h + payload


def _ipc(table: pa.Table) -> bytes:
    return proto.table_to_ipc(table)


HOSTILE_REQUESTS = {
    "not json": (b"{not json", b"", "not JSON"),
    "not an object": (b"[1, 2]", b"", "object"),
    "not utf-8": (b"\xff\xfe{}", b"", "JSON"),
    "unknown op": (b'{"op": "rm_rf", "args": {}}', b"", "unknown operation"),
    "op not a string": (b'{"op": 5}', b"", "unknown operation"),
    "args not an object": (b'{"op": "append", "args": [1]}', b"", "object"),
    "name of wrong type": (b'{"op": "append", "args": {"name": 5}}', b"x", "wrong type"),
    "dot-dot name": (b'{"op": "append", "args": {"name": "../pets"}}', _ipc(pa.table(rows([900]))), "not valid"),
    "path name": (b'{"op": "append", "args": {"name": "pets/../pets"}}', _ipc(pa.table(rows([900]))), "not valid"),
    "absolute name": (b'{"op": "delete", "args": {"name": "/etc", "filter": "id = 1"}}', b"", "not valid"),
    "no payload": (b'{"op": "append", "args": {"name": "pets"}}', b"", "payload"),
    "payload not arrow": (b'{"op": "append", "args": {"name": "pets"}}', os.urandom(500), "Arrow"),
    "bad schema": (b'{"op": "append", "args": {"name": "pets"}}', _ipc(pa.table({"id": [900], "x": ["y"]})), "schema"),
    "bad types": (b'{"op": "upsert", "args": {"name": "pets"}}',
                  _ipc(pa.table({**rows([900]), "id": ["not an int"]})), "pets"),
    "bad filter": (b'{"op": "delete", "args": {"name": "pets", "filter": "id = = 1; DROP"}}', b"", "filter"),
    "unknown branch": (b'{"op": "append", "args": {"name": "pets", "branch": "nope"}}', _ipc(pa.table(rows([900]))), "nope"),
    "bad tag name": (b'{"op": "add_tag", "args": {"name": "pets", "tag": "../x"}}', b"", "not valid"),
    "bool snapshot id": (b'{"op": "add_tag", "args": {"name": "pets", "tag": "t", "snapshot_id": true}}', b"", "wrong type"),
    "missing snapshot": (b'{"op": "add_tag", "args": {"name": "pets", "tag": "t", "snapshot_id": 99999}}', b"", "99999"),
    "bad sql": (b'{"op": "sql", "args": {"query": "SELEC nonsense"}}', b"", "SQL"),
}


@pytest.mark.parametrize("what", sorted(HOSTILE_REQUESTS))
def test_bad_requests_get_an_error_reply_and_change_nothing(live, what):
    c, ds, mnt = live
    seq = ds.storage.log.head_seq()
    head, payload, words = HOSTILE_REQUESTS[what]
    with raw(mnt) as s:
        s.sendall(_header(head, payload))
        r = reply(s)
        assert r is not None and r["ok"] is False, r
        assert words.lower() in r["error"]["message"].lower(), r["error"]
        # the connection still serves well-formed requests
        s.sendall(proto.encode({"op": "ping", "args": {}}))
        assert reply(s)["ok"] is True
    alive_and_unchanged(c, ds, mnt, seq)


@pytest.mark.parametrize("cut", ["prefix", "header", "payload"])
def test_client_disconnecting_mid_request_changes_nothing(live, cut):
    c, ds, mnt = live
    seq = ds.storage.log.head_seq()
    frame = proto.encode({"op": "append", "args": {"name": "pets"}}, _ipc(pa.table(rows([901]))))
    at = {"prefix": 7, "header": proto.PREFIX.size + 10, "payload": len(frame) - 5}[cut]
    with raw(mnt) as s:
        s.sendall(frame[:at])
    alive_and_unchanged(c, ds, mnt, seq)
    assert "901" not in os.listdir(os.path.join(mnt, "pets", "current", "rows"))


def test_many_clients_at_once(live):
    c, ds, mnt = live
    socks = [raw(mnt) for _ in range(20)]
    try:
        for s in socks:
            s.sendall(proto.encode({"op": "datasets", "args": {}}))
        for s in socks:
            assert "pets" in reply(s)["result"]
    finally:
        for s in socks:
            s.close()


def test_other_users_are_refused_by_peer_credentials(live):
    c, ds, mnt = live
    seq = ds.storage.log.head_seq()
    path = paths.socket_path(mnt)
    # Open the way through the file system on purpose: the peer check alone must refuse.
    os.chmod(paths.run_dir(), 0o711)
    os.chmod(os.path.dirname(path), 0o711)
    os.chmod(path, 0o666)
    frame = proto.encode({"op": "append", "args": {"name": "pets"}}, _ipc(pa.table(rows([902]))))
    code = textwrap.dedent(f"""
        import os, socket, struct, json, sys
        os.setgid(65534); os.setuid(65534)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(20)
        s.connect({path!r})
        try:
            s.sendall({frame!r})
        except OSError:
            pass
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        hlen = struct.unpack("!4sB3xIQ", buf[:20])[2]
        print(json.dumps(json.loads(buf[20:20 + hlen])))
    """)
    try:
        out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    finally:
        os.chmod(path, 0o600)
        os.chmod(os.path.dirname(path), 0o700)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["ok"] is False and "only the mounting user" in r["error"]["message"]
    alive_and_unchanged(c, ds, mnt, seq)


def test_connect_to_something_that_is_not_a_mount(tmp_path):
    with pytest.raises(errors.NotFoundError):
        spacefs.connect(str(tmp_path))
