"""``spacefs.connect(mountpoint)``: a client of a mount's control socket.

Example::

    with spacefs.connect("/mnt/data") as c:
        c.append("images", {"id": [7], "label": ["cat"], "image": [png_bytes]})
        c.add_tag("images", "v2")
        print(c.sql("SELECT label, count(*) FROM images GROUP BY label"))
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from typing import Any

import pyarrow as pa

from spacefs.engine.errors import NotFoundError, SpaceError
from spacefs.engine.filters import Filter
from spacefs.engine.types import JobResult

from . import paths
from . import protocol as proto


def _table(data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, dict):
        return pa.table({k: list(v) if not isinstance(v, (pa.Array, pa.ChunkedArray, list)) else v for k, v in data.items()})
    if isinstance(data, list):
        return pa.Table.from_pylist(data)
    raise SpaceError(f"expected a dict of lists, a pyarrow Table or RecordBatch, got {type(data).__name__}")


def _job(doc: dict[str, Any]) -> JobResult:
    return JobResult(JobResult.State[doc["state"]], dict(doc.get("statistics") or {}), None, doc.get("snapshot_id"))


class Client:
    """One connection to a mount's daemon; requests are answered one at a time.

    The socket is found from the mountpoint alone (its path and the uid that owns the
    mount, see ``paths``), so other users' clients find it too where the mount lets them
    in. The daemon closes connections that stay idle when it runs short of slots; the
    client then reconnects before its next request (never in the middle of one).
    """

    def __init__(self, mountpoint: str, timeout: float | None = 300.0):
        self.mountpoint = os.path.abspath(str(mountpoint))
        self.timeout = timeout
        self._closing = False  # the daemon's last reply said it closes this connection
        self._connect()

    def _connect(self) -> None:
        try:
            owner = os.stat(self.mountpoint).st_uid
        except OSError as e:
            if e.errno == errno.ENOTCONN:
                raise NotFoundError(f"{self.mountpoint}: the spacefs daemon is gone (stale mount; run "
                                    f"'spacefs umount {self.mountpoint}')") from None
            raise NotFoundError(f"{self.mountpoint}: {e.strerror}") from None
        self.path = paths.socket_path(self.mountpoint, owner)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(self.timeout)
        try:
            self._sock.connect(self.path)
        except OSError as e:
            self._sock.close()
            raise NotFoundError(f"{self.mountpoint} is not a spacefs mount with a control socket "
                                f"({self.path}: {e.strerror})") from None
        # The socket could have been planted by someone else: the peer must be the mount's owner or root.
        creds = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid not in (0, owner):
            self._sock.close()
            raise SpaceError(f"{self.path} is served by uid {uid}, not by the owner of {self.mountpoint}")

    # -- plumbing --------------------------------------------------------------
    def call(self, op: str, payload: bytes = b"", **args: Any) -> tuple[Any, bytes]:
        """Send one request; return (result, payload) or raise the daemon's error."""
        args = {k: v for k, v in args.items() if v is not None}
        if self._closing or self._closed_by_daemon():
            self._sock.close()
            self._closing = False
            self._connect()
        sent: OSError | None = None
        try:
            self._sock.sendall(proto.encode({"op": op, "args": args}, payload))
        except OSError as e:  # the daemon may have refused the request before reading all of it
            sent = e
        try:
            frame = proto.recv_frame(self._sock)
        except (OSError, proto.ProtocolError) as e:
            raise proto.ProtocolError(f"control socket {self.path}: {sent or e}") from None
        self._closing = bool(frame.header.get("closing"))
        if not frame.header.get("ok"):
            proto.raise_error(frame.header.get("error") or {})
        return frame.header.get("result"), frame.payload

    def _closed_by_daemon(self) -> bool:
        """Whether the daemon closed this (idle) connection: nothing is ever pending
        between requests, so readable means closed."""
        try:
            if not select.select([self._sock], [], [], 0)[0]:
                return False
            return self._sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def close(self) -> None:
        """Close the connection (also done on leaving a ``with`` block)."""
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- operations ------------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        """The daemon's answer to a ping (a small dict); checks the connection works."""
        return self.call("ping")[0]

    def datasets(self) -> list[str]:
        """Names of the datasets (and materialized views) the mount shows."""
        return self.call("datasets")[0]

    def append(self, name: str, data: Any, branch: str | None = None, *, message: str | None = None) -> JobResult:
        """Append ``data`` (a table, dict of lists or record batches) to dataset ``name``.

        Runs in the daemon, on ``branch`` (default main); one snapshot, shown by the
        mount within a second, keeping ``message`` (like ``runner.append``).

        Raises:
            SpaceError: the write failed (the daemon's error, with its class's meaning).
        """
        return _job(self.call("append", proto.table_to_ipc(_table(data)), name=name, branch=branch, message=message)[0])

    def insert(self, name: str, data: Any, branch: str | None = None, *, message: str | None = None) -> JobResult:
        """Like ``append``, but refuses keys already stored (changing nothing)."""
        return _job(self.call("insert", proto.table_to_ipc(_table(data)), name=name, branch=branch, message=message)[0])

    def upsert(self, name: str, data: Any, branch: str | None = None, *, message: str | None = None) -> JobResult:
        """Like ``append``, replacing stored rows with the same keys."""
        return _job(self.call("upsert", proto.table_to_ipc(_table(data)), name=name, branch=branch, message=message)[0])

    def delete(self, name: str, filter_: Filter, branch: str | None = None, *, message: str | None = None) -> JobResult:
        """Delete rows matching a SQL predicate string (pyarrow expressions cannot travel)."""
        if not isinstance(filter_, str):
            raise SpaceError("over the control socket, delete takes a SQL predicate string like \"id = 1\"")
        return _job(self.call("delete", name=name, filter=filter_, branch=branch, message=message)[0])

    def add_tag(self, name: str, tag: str, snapshot_id: int | None = None) -> None:
        """Tag ``snapshot_id`` (default: main's head) of dataset ``name``."""
        self.call("add_tag", name=name, tag=tag, snapshot_id=snapshot_id)

    def add_branch(self, name: str, branch: str) -> None:
        """Create ``branch`` of dataset ``name`` at main's head."""
        self.call("add_branch", name=name, branch=branch)

    def refresh(self, name: str, version: int | str | None = None) -> JobResult:
        """Bring materialized view ``name`` up to ``version`` of its source."""
        return _job(self.call("refresh", name=name, version=version)[0])

    def sql(self, query: str) -> pa.Table:
        """DuckDB over the index data of every dataset of the mount (one table each)."""
        _, payload = self.call("sql", query=query)
        return proto.ipc_to_table(payload)


def connect(mountpoint: str, timeout: float | None = 300.0) -> Client:
    """A client of the control socket of the spacefs mount at ``mountpoint``."""
    return Client(mountpoint, timeout)
