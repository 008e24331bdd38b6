"""The control socket: writes, refs, refresh and SQL for the datasets of a mount.

A Unix socket beside the mount (``paths.socket_path``). Only the mounting user and root
may talk to it (checked with ``SO_PEERCRED`` on every connection) unless the mount was
made with ``--allow-other``. Requests are frames (``protocol.py``); each one names an
operation of the ``OPS`` table, whose handler checks its arguments and runs the engine
call in a worker thread. Anything malformed gets an error reply (or, when the frame
boundaries are lost, a closed connection); the daemon keeps serving and no partial
request ever reaches the engine.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pyarrow as pa
import trio

from spacefs.engine import errors
from spacefs.engine import format as fmt
from spacefs.engine.catalog import DirCatalog, validate_name
from spacefs.engine.dataset import Dataset
from spacefs.engine.storage import Storage
from spacefs.engine.types import JobResult

from . import protocol as proto

log = logging.getLogger("spacefs.mount.control")

FRAME_TIMEOUT = 60.0  # a started frame must arrive whole within this
IDLE_TIMEOUT = 600.0
MAX_CLIENTS = 64

Handler = Callable[["ControlServer", dict[str, Any], bytes], Awaitable[tuple[Any, bytes]]]
OPS: dict[str, Handler] = {}


def op(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        OPS[name] = fn
        return fn

    return register


def _arg(args: dict[str, Any], name: str, typ: type | tuple[type, ...], required: bool = True) -> Any:
    v = args.get(name)
    if v is None:
        if required:
            raise errors.UserInputError(f"argument {name!r} is required")
        return None
    if not isinstance(v, typ) or isinstance(v, bool) and typ is int:
        raise errors.UserInputError(f"argument {name!r} has the wrong type ({type(v).__name__})")
    return v


def _job(r: JobResult) -> dict[str, Any]:
    return {"state": r.state.name, "snapshot_id": r.snapshot_id, "statistics": r.storage_statistics_update}


class ControlServer:
    """Serves control requests for the datasets under ``source`` (a catalog or one dataset)."""

    def __init__(self, source: str, *, allow_other: bool = False, on_commit: Callable[[], None] | None = None,
                 max_payload: int = proto.MAX_PAYLOAD, threads: int = 4):
        self.source = os.path.abspath(source)
        self.catalog = not fmt.is_dataset(self.source)
        self.allow_other = allow_other
        self.on_commit = on_commit or (lambda: None)
        self.max_payload = max_payload
        self.limiter = trio.CapacityLimiter(threads)
        self.owner = os.geteuid()
        self._clients = trio.Semaphore(MAX_CLIENTS)

    # -- socket ------------------------------------------------------------------
    def bind(self, path: str) -> socket.socket:
        """Create the listening socket (synchronously, so errors surface before mounting)."""
        d = os.path.dirname(path)
        os.makedirs(d, mode=0o700, exist_ok=True)
        st = os.stat(d)
        if st.st_uid != self.owner:
            raise errors.UserInputError(f"{d} belongs to uid {st.st_uid}, not to this user; refusing to use it")
        os.chmod(d, 0o711 if self.allow_other else 0o700)
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # left by a daemon that died
            else:
                raise errors.AlreadyExistsError(f"a spacefs daemon already serves {path}")
            finally:
                probe.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177 if not self.allow_other else 0o111)
        try:
            s.bind(path)
        finally:
            os.umask(old)
        s.listen(64)
        return s

    async def serve(self, sock: socket.socket, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        async with listener:
            await trio.serve_listeners(self._connection, [listener], task_status=task_status)

    def _peer_allowed(self, stream: trio.SocketStream) -> tuple[bool, int]:
        creds = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return self.allow_other or uid in (0, self.owner), uid

    async def _connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self._clients.value == 0:
                await self._send(stream, proto.error_header(proto.ControlError("too many control connections")))
                return
            async with self._clients:
                allowed, uid = self._peer_allowed(stream)
                if not allowed:
                    log.warning("refused a control connection from uid %d", uid)
                    await self._send(stream, proto.error_header(
                        PermissionError(errno.EACCES, "only the mounting user and root may use this socket")))
                    await self._linger(stream)
                    return
                try:
                    while True:
                        frame = await self._read_frame(stream)
                        if frame is None:
                            return
                        header, payload = await self._dispatch(frame)
                        await self._send(stream, header, payload)
                except proto.ProtocolError as e:
                    log.info("control connection closed: %s", e)
                    await self._send(stream, proto.error_header(e))
                    await self._linger(stream)
                except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                    return

    async def _linger(self, stream: trio.SocketStream) -> None:
        """Close after an error reply without losing it: closing with unread input would
        reset the connection and drop the reply, so discard input briefly first."""
        with trio.move_on_after(1.0):
            try:
                await stream.send_eof()
                seen = 0
                while seen < (16 << 20):
                    chunk = await stream.receive_some(1 << 16)
                    if not chunk:
                        break
                    seen += len(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _send(self, stream: trio.SocketStream, header: dict[str, Any], payload: bytes = b"") -> None:
        try:
            await stream.send_all(proto.encode(header, payload))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _read_exact(self, stream: trio.SocketStream, n: int, buf: bytearray) -> None:
        while len(buf) < n:
            chunk = await stream.receive_some(min(n - len(buf), 1 << 20))
            if not chunk:
                raise proto.ProtocolError("the client closed the connection mid-frame")
            buf += chunk

    async def _read_frame(self, stream: trio.SocketStream) -> proto.Frame | None:
        buf = bytearray()
        with trio.move_on_after(IDLE_TIMEOUT) as idle:
            first = await stream.receive_some(proto.PREFIX.size)
        if idle.cancelled_caught or not first:
            return None
        buf += first
        with trio.fail_after(FRAME_TIMEOUT):
            await self._read_exact(stream, proto.PREFIX.size, buf)
            hlen, plen = proto.parse_prefix(bytes(buf), self.max_payload)
            head = bytearray()
            await self._read_exact(stream, hlen, head)
            payload = bytearray()
            await self._read_exact(stream, plen, payload)
        try:
            header = proto.parse_header(bytes(head))
        except proto.ProtocolError as e:  # the frame was whole: answer, keep the connection
            return proto.Frame({}, b"", str(e))
        return proto.Frame(header, bytes(payload))

    async def _dispatch(self, frame: proto.Frame) -> tuple[dict[str, Any], bytes]:
        name = frame.header.get("op")
        args = frame.header.get("args", {})
        handler = OPS.get(name) if isinstance(name, str) else None
        try:
            if frame.error is not None:
                raise proto.ProtocolError(frame.error)
            if handler is None:
                raise errors.UserInputError(f"unknown operation {name!r} (known: {sorted(OPS)})")
            if not isinstance(args, dict):
                raise errors.UserInputError("'args' must be a JSON object")
            result, payload = await handler(self, args, frame.payload)
        except (errors.SpaceError, PermissionError) as e:
            return proto.error_header(e), b""
        except Exception as e:  # a bug, or an engine failure: report it, keep serving
            log.exception("control op %r failed", name)
            return proto.error_header(proto.ControlError(f"{name}: {type(e).__name__}: {e}")), b""
        return {"ok": True, "result": result}, payload

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    # -- datasets --------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.catalog:
            return [os.path.basename(self.source)]
        return [i.name for i in DirCatalog(self.source).datasets()]

    def path(self, name: Any) -> str:
        if not isinstance(name, str):
            raise errors.UserInputError("argument 'name' must be a dataset name")
        if not self.catalog:
            if name != os.path.basename(self.source):
                raise errors.NotFoundError(f"this mount serves dataset {os.path.basename(self.source)!r}, not {name!r}")
            return self.source
        validate_name(name)
        path = os.path.join(self.source, name)
        if not fmt.is_dataset(path):
            raise errors.NotFoundError(f"catalog {self.source} has no dataset named {name!r}")
        return path

    def dataset(self, name: Any, branch: Any = None, writable: bool = True) -> Dataset:
        ds = Dataset(Storage(self.path(name)))
        if writable and ds.storage.kind != "dataset":
            raise errors.UserInputError(f"{name!r} is a materialized view: change its source and refresh it")
        if branch is not None:
            if not isinstance(branch, str):
                raise errors.UserInputError("argument 'branch' must be a string")
            ds.set_current_branch(branch)
        return ds


# -- operations --------------------------------------------------------------------
@op("ping")
async def _ping(srv: ControlServer, args: dict[str, Any], payload: bytes) -> tuple[Any, bytes]:
    return {"protocol": proto.VERSION, "pid": os.getpid()}, b""


@op("datasets")
async def _datasets(srv: ControlServer, args: dict[str, Any], payload: bytes) -> tuple[Any, bytes]:
    return await srv.run(srv.names), b""


def _writer(kind: str) -> Handler:
    async def write(srv: ControlServer, args: dict[str, Any], payload: bytes) -> tuple[Any, bytes]:
        name, branch = _arg(args, "name", str), _arg(args, "branch", str, required=False)
        if not payload:
            raise errors.UserInputError(f"{kind} needs the rows as an Arrow IPC payload")

        def run() -> JobResult:
            ds = srv.dataset(name, branch)
            table = proto.ipc_to_table(payload)
            return getattr(ds.local(), kind)(table)

        result = await srv.run(run)
        srv.on_commit()
        return _job(result), b""

    return write


for _kind in ("append", "insert", "upsert"):
    op(_kind)(_writer(_kind))


@op("delete")
async def _delete(srv: ControlServer, args: dict[str, Any], payload: bytes) -> tuple[Any, bytes]:
    name, filter_ = _arg(args, "name", str), _arg(args, "filter", str)
    branch = _arg(args, "branch", str, required=False)
    result = await srv.run(lambda: srv.dataset(name, branch).local().delete(filter_))
    srv.on_commit()
    return _job(result), b""


@op("add_tag")
async def _add_tag(srv: ControlServer, args: dict[str, Any], payload: bytes) -> tuple[Any, bytes]:
    name, tag = _arg(args, "name", str), _arg(args, "tag", str)
    sid = _arg(args, "snapshot_id", int, required=False)
    await srv.run(lambda: srv.dataset(name).add_tag(tag, sid))
    srv.on_commit()
    return None, b""


@op("add_branch")
async def _add_branch(srv: ControlServer, args: dict[str, Any], payload: bytes) -> tuple[Any, bytes]:
    name, branch = _arg(args, "name", str), _arg(args, "branch", str)
    await srv.run(lambda: srv.dataset(name).add_branch(branch))
    srv.on_commit()
    return None, b""


@op("refresh")
async def _refresh(srv: ControlServer, args: dict[str, Any], payload: bytes) -> tuple[Any, bytes]:
    name = _arg(args, "name", str)
    version = _arg(args, "version", (int, str), required=False)

    def run() -> JobResult:
        path = srv.path(name)
        try:
            from spacefs.engine.mv import MaterializedView
        except ImportError:
            raise proto.ControlError("materialized views are not available in this build of spacefs") from None
        return MaterializedView.load(path).local().refresh(version)

    result = await srv.run(run)
    srv.on_commit()
    return _job(result), b""


@op("sql")
async def _sql(srv: ControlServer, args: dict[str, Any], payload: bytes) -> tuple[Any, bytes]:
    query = _arg(args, "query", str)
    table = await srv.run(lambda: safe_sql(query, {n: srv.path(n) for n in srv.names()}))
    data = proto.table_to_ipc(table)
    if len(data) > srv.max_payload:
        raise errors.UserInputError(f"the result ({len(data)} bytes) exceeds the frame limit; add a LIMIT")
    return {"rows": table.num_rows}, data


def safe_sql(query: str, datasets: dict[str, str]) -> pa.Table:
    """DuckDB over the datasets' index data with file access switched off.

    The engine's ``sql`` lets DuckDB open files by path; a socket peer must not be able
    to read or write arbitrary files with the daemon's rights (``COPY ... TO``,
    ``read_csv('/etc/...')``). So each dataset is registered as an Arrow dataset (read by
    pyarrow) and DuckDB's own file system access is disabled and locked.
    """
    import duckdb
    import pyarrow.dataset as pds

    con = duckdb.connect(config={"enable_external_access": False, "lock_configuration": True,
                                 "autoinstall_known_extensions": False, "autoload_known_extensions": False})
    try:
        for name, path in datasets.items():
            ds = Dataset(Storage(path))
            files = ds.index_files()
            schema = ds.storage.index_schema
            src = pds.dataset(files, schema=schema, format="parquet") if files else schema.empty_table()
            con.register(name, src)
        try:
            return con.execute(query).to_arrow_table()
        except duckdb.Error as e:
            raise errors.UserInputError(f"SQL error: {str(e).splitlines()[0]}") from None
    finally:
        con.close()
