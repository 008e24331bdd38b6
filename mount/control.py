"""The control socket: writes, refs, refresh and SQL for the datasets of a mount.

A Unix socket beside the mount (``paths.socket_path``). Requests are frames
(``protocol.py``); each names an operation of the ``OPS`` table, whose handler checks its
arguments and runs the engine call in a worker thread. Who may connect and who may write
is decided per connection and per request from the kernel's peer credentials
(``access.py``, SECURITY.md).

Nothing a peer sends can stop the daemon or exhaust its memory:

- every frame is bounded before it is read: header and payload sizes by ``Limits``, the
  header's JSON nesting by a scan before parsing; a frame's declared size is taken from a
  daemon-wide memory budget before its bytes are buffered (and buffers are filled in
  place, so memory follows the bytes that actually arrived);
- a started frame that stalls (``stall_timeout``) or takes too long (``frame_timeout``)
  closes its connection; idle connections are closed when the slots run out, and the
  last ``reserved`` slots are kept for the owner and root;
- SQL results are encoded batch by batch and refused as soon as they pass ``max_result``;
- any exception is caught per request and per connection, logged and answered; none
  reaches the nursery that also runs the FUSE file system.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa
import trio

from spacefs.engine import errors
from spacefs.engine.catalog import (
    child_location,
    datasets_at,
    is_dataset_at,
    normalize_location,
    validate_name,
)
from spacefs.engine.dataset import Dataset
from spacefs.engine.storage import Storage
from spacefs.engine.types import JobResult

from . import protocol as proto
from .access import Grants, Peer, Policy, check_view_trusted, peer_of

log = logging.getLogger("spacefs.mount.control")

MAX_LINGERING = 32  # connections closing after an error reply, at once


@dataclass(frozen=True)
class Limits:
    """The bounds of the control server (``--limit NAME=VALUE`` on the daemon)."""

    max_header: int = proto.MAX_HEADER
    max_payload: int = proto.MAX_PAYLOAD  # one request's payload (appended rows)
    max_result: int = 256 << 20  # one reply's payload (an SQL result)
    memory_budget: int = 768 << 20  # frames being received and results being sent, all connections
    max_clients: int = 64
    reserved: int = 8  # of max_clients, only for the owner and root
    stall_timeout: float = 10.0  # a started frame (or a reply) making no progress this long
    frame_timeout: float = 120.0  # a whole frame
    idle_timeout: float = 600.0  # between frames
    sql_threads: int = 2

    @classmethod
    def parse(cls, items: list[str]) -> Limits:
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for item in items:
            name, _, value = item.partition("=")
            if name not in types or not value:
                raise errors.UserInputError(f"--limit {item!r}: expected NAME=VALUE, NAME one of {sorted(types)}")
            try:
                values[name] = float(value) if types[name] == "float" else int(value)
            except ValueError:
                raise errors.UserInputError(f"--limit {item!r}: {value!r} is not a number") from None
        return cls(**values)


class _Budget:
    """Bytes the server may hold for requests and replies at once, over all connections."""

    def __init__(self, total: int):
        self.total = total
        self.used = 0
        self._freed = trio.Event()

    async def acquire(self, n: int, timeout: float) -> bool:
        if n > self.total:
            return False
        with trio.move_on_after(timeout):
            while self.used + n > self.total:
                await self._freed.wait()
            self.used += n
            return True
        return False

    def release(self, n: int) -> None:
        if n:
            self.used -= n
            self._freed.set()
            self._freed = trio.Event()


class Busy(proto.ProtocolError):
    """The server cannot take this frame now (memory budget or connection slots)."""


@dataclass(eq=False)
class _Conn:
    peer: Peer
    privileged: bool
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    idle_since: float | None = None  # waiting for a frame since; None while receiving or working
    evicted: bool = False


Handler = Callable[["ControlServer", "Request"], Awaitable[tuple[Any, Any]]]


@dataclass(frozen=True)
class Op:
    fn: Handler
    write: bool  # changes data or refs, or runs stored code: needs write access
    reply_budget: bool = False  # builds a large reply: reserves max_result of the budget first


OPS: dict[str, Op] = {}


def op(name: str, *, write: bool, reply_budget: bool = False) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        OPS[name] = Op(fn, write, reply_budget)
        return fn

    return register


@dataclass
class _Frame:
    header: dict[str, Any]
    payload: Any
    reserved: int  # bytes of the budget this request holds until its reply is sent
    error: str | None = None  # a whole frame whose header did not parse


@dataclass
class Request:
    peer: Peer
    args: dict[str, Any]
    payload: Any  # a buffer (numpy uint8 array) or b""


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

    def __init__(self, source: str, *, allow_other: bool = False, writers: Grants | None = None,
                 trust_views: bool = False, on_commit: Callable[[], None] | None = None,
                 limits: Limits | None = None, threads: int = 4):
        self.source = normalize_location(source)
        self.catalog = not is_dataset_at(self.source)
        self.owner = os.geteuid()
        self.policy = Policy(self.owner, allow_other, writers or Grants(), trust_views)
        self.on_commit = on_commit or (lambda: None)
        # More fields for ``ping`` (the daemon's request counts when it counts them).
        self.diagnostics: Callable[[], dict[str, Any]] = dict
        self.limits = limits or Limits()
        self.limiter = trio.CapacityLimiter(threads)
        self.sql_limiter = trio.CapacityLimiter(self.limits.sql_threads)
        self._budget: _Budget | None = None  # made inside trio.run
        self._conns: list[_Conn] = []
        self._lingering = 0

    @property
    def shared(self) -> bool:
        """Whether users other than the owner and root may reach the socket at all."""
        return self.policy.allow_other or bool(self.policy.writers)

    @property
    def budget(self) -> _Budget:
        if self._budget is None:
            self._budget = _Budget(self.limits.memory_budget)
        return self._budget

    # -- socket ------------------------------------------------------------------
    def bind(self, path: str) -> socket.socket:
        """Create the listening socket in its (already checked) per-mount directory,
        synchronously, so errors surface before mounting."""
        if os.path.lexists(path):
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
        # Connecting needs write permission on the socket; the peer check decides the rest.
        old = os.umask(0o111 if self.shared else 0o177)
        try:
            s.bind(path)
        finally:
            os.umask(old)
        s.listen(128)
        return s

    async def serve(self, sock: socket.socket, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        async with listener:
            await trio.serve_listeners(self._connection, [listener], task_status=task_status)

    # -- connections -------------------------------------------------------------
    async def _connection(self, stream: trio.SocketStream) -> None:
        """One client connection. Catches everything: a handler exception that escaped
        would cancel the nursery and with it the whole mount."""
        try:
            async with stream:
                await self._admit_and_serve(stream)
        except Exception:
            log.exception("control connection failed")

    async def _admit_and_serve(self, stream: trio.SocketStream) -> None:
        peer = peer_of(stream.socket)
        if not self.policy.may_connect(peer):
            log.warning("refused a control connection from uid %d (pid %d)", peer.uid, peer.pid)
            await self._send_error(stream, proto.AccessDeniedError(
                "only the mounting user and root may use this socket (the mount was made without --allow-other)"))
            await self._linger(stream)
            return
        conn = self._admit(peer)
        if conn is None:
            await self._send_error(stream, Busy(f"too many control connections ({len(self._conns)}); retry later"))
            await self._linger(stream)
            return
        try:
            with conn.scope:
                await self._serve_frames(stream, conn)
        finally:
            if conn in self._conns:
                self._conns.remove(conn)

    def _admit(self, peer: Peer) -> _Conn | None:
        """Register a connection, closing idle ones if the slots are taken. Other users
        can use only ``max_clients - reserved`` slots and evict only each other, so no
        number of their connections keeps the owner out."""
        privileged = self.policy.privileged(peer)
        cap = self.limits.max_clients - (0 if privileged else self.limits.reserved)
        while len(self._conns) >= cap:
            idle = [c for c in self._conns if c.idle_since is not None and (privileged or not c.privileged)]
            if not idle:
                return None
            victim = min(idle, key=lambda c: (c.privileged, c.idle_since))
            victim.evicted = True
            victim.scope.cancel()
            self._conns.remove(victim)
        conn = _Conn(peer, privileged, idle_since=trio.current_time())  # nothing received yet: idle
        self._conns.append(conn)
        return conn

    async def _serve_frames(self, stream: trio.SocketStream, conn: _Conn) -> None:
        try:
            while True:
                frame = await self._read_frame(stream, conn)
                if frame is None:
                    return
                try:
                    header, payload = await self._dispatch(frame, conn.peer)
                    await self._send(stream, header, payload)
                finally:
                    self.budget.release(frame.reserved)
        except (proto.ProtocolError, proto.AccessDeniedError, trio.TooSlowError) as e:
            if isinstance(e, trio.TooSlowError):
                e = proto.ProtocolError("the frame did not arrive in time (or the reply was not read); closing")
            log.info("control connection from uid %d closed: %s", conn.peer.uid, e)
            await self._send_error(stream, e)
            await self._linger(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):  # OSError: the peer reset
            return

    async def _linger(self, stream: trio.SocketStream) -> None:
        """Close after an error reply without losing it: closing with unread input would
        reset the connection and drop the reply, so discard input briefly first. Refused
        connections linger too and hold no slot, so how many may linger is bounded: past
        that, a flood of connections gets closed at once (its replies may be lost)."""
        if self._lingering >= MAX_LINGERING:
            return
        self._lingering += 1
        try:
            with trio.move_on_after(1.0):
                await stream.send_eof()
                seen = 0
                while seen < (16 << 20):
                    chunk = await stream.receive_some(1 << 16)
                    if not chunk:
                        break
                    seen += len(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self._lingering -= 1

    async def _send(self, stream: trio.SocketStream, header: dict[str, Any], payload: Any = b"") -> None:
        """Send a reply; the payload goes out as it is (no copy into one frame buffer)."""
        head = proto.encode(header)[proto.PREFIX.size:]
        size = memoryview(payload).nbytes if payload is not None else 0
        with trio.fail_after(self.limits.stall_timeout):
            await stream.send_all(proto.PREFIX.pack(proto.MAGIC, proto.VERSION, len(head), size) + head)
        view = memoryview(payload).cast("B") if size else memoryview(b"")
        for off in range(0, size, 1 << 20):  # a reader that stops reading is dropped, not waited for
            with trio.fail_after(self.limits.stall_timeout):
                await stream.send_all(view[off : off + (1 << 20)])

    async def _send_error(self, stream: trio.SocketStream, exc: BaseException) -> None:
        """The last reply of a connection: ``closing`` tells the client to reconnect."""
        with trio.move_on_after(self.limits.stall_timeout):
            try:
                await stream.send_all(proto.encode({**proto.error_header(exc), "closing": True}))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    # -- frames ------------------------------------------------------------------
    async def _fill(self, stream: trio.SocketStream, buf: Any) -> None:
        """Receive exactly ``len(buf)`` bytes into ``buf`` in place."""
        view, off = memoryview(buf).cast("B"), 0
        while off < len(view):
            with trio.fail_after(self.limits.stall_timeout):
                n = await stream.socket.recv_into(view[off:], min(len(view) - off, 1 << 20))
            if not n:
                raise proto.ProtocolError("the client closed the connection mid-frame")
            off += n

    async def _reserve(self, n: int) -> None:
        if not await self.budget.acquire(n, self.limits.stall_timeout):
            raise Busy(f"the daemon cannot take a {n}-byte request now (memory budget "
                       f"{self.limits.memory_budget} bytes, {self.budget.used} in use); retry later")

    async def _read_frame(self, stream: trio.SocketStream, conn: _Conn) -> _Frame | None:
        """Read one frame. The header is read and checked before the payload: only write
        operations carry one, so a peer that may not write never gets a payload buffered."""
        prefix, n = bytearray(proto.PREFIX.size), 0
        conn.idle_since = trio.current_time()
        with trio.move_on_after(self.limits.idle_timeout):
            n = await stream.socket.recv_into(prefix)
        conn.idle_since = None
        if not n:
            return None  # closed, or idle too long
        reserved = 0
        try:
            with trio.fail_after(self.limits.frame_timeout):
                await self._fill(stream, memoryview(prefix)[n:])
                hlen, plen = proto.parse_prefix(bytes(prefix), self.limits.max_payload, self.limits.max_header)
                await self._reserve(hlen)
                reserved = hlen
                head = bytearray(hlen)
                await self._fill(stream, head)
                try:
                    header, error = proto.parse_header(bytes(head)), None
                except proto.ProtocolError as e:
                    header, error = {}, str(e)
                del head
                payload: Any = b""
                if plen:
                    spec = OPS.get(header.get("op")) if isinstance(header.get("op"), str) else None
                    if spec is None or not spec.write:
                        raise proto.ProtocolError("only write operations carry a payload"
                                                  + (f" ({error})" if error else ""))
                    self.policy.check_write(conn.peer, header["op"])
                    await self._reserve(plen)
                    reserved += plen
                    # np.empty maps fresh pages only as bytes arrive: memory follows what was
                    # sent, not what the prefix declared.
                    payload = np.empty(plen, np.uint8)
                    await self._fill(stream, payload)
        except BaseException:
            self.budget.release(reserved)
            raise
        return _Frame(header, payload, reserved, error)

    async def _dispatch(self, frame: _Frame, peer: Peer) -> tuple[dict[str, Any], Any]:
        name = frame.header.get("op")
        args = frame.header.get("args", {})
        spec = OPS.get(name) if isinstance(name, str) else None
        reserved = 0
        try:
            if frame.error is not None:
                raise proto.ProtocolError(frame.error)
            if spec is None:
                shown = name if not isinstance(name, str) or len(name) < 100 else name[:100] + "..."
                raise errors.UserInputError(f"unknown operation {shown!r} (known: {sorted(OPS)})")
            if not isinstance(args, dict):
                raise errors.UserInputError("'args' must be a JSON object")
            if spec.write:
                self.policy.check_write(peer, name)
            if spec.reply_budget:
                if not await self.budget.acquire(self.limits.max_result, self.limits.stall_timeout):
                    raise Busy("the daemon is short of memory for results now; retry later")
                reserved = self.limits.max_result
            result, payload = await spec.fn(self, Request(peer, args, frame.payload))
            if reserved:  # keep only what the reply holds until it is sent
                size = memoryview(payload).nbytes
                self.budget.release(reserved - min(size, reserved))
                reserved = min(size, reserved)
        except (errors.SpaceError, PermissionError) as e:
            self.budget.release(reserved)
            return proto.error_header(e), b""
        except Exception as e:  # a bug, or an engine failure: report it, keep serving
            self.budget.release(reserved)
            log.exception("control op %r failed", name)
            return proto.error_header(proto.ControlError(f"{name}: {type(e).__name__}: {e}")), b""
        frame.reserved += reserved  # released once the reply is sent
        return {"ok": True, "result": result}, payload

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    # -- datasets --------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.catalog:
            return [self._single()]
        return datasets_at(self.source)

    def _single(self) -> str:
        return self.source.rstrip("/").rsplit("/", 1)[-1]

    def path(self, name: Any) -> str:
        if not isinstance(name, str):
            raise errors.UserInputError("argument 'name' must be a dataset name")
        if not self.catalog:
            if name != self._single():
                raise errors.NotFoundError(f"this mount serves dataset {self._single()!r}, not {name!r}")
            return self.source
        validate_name(name)
        path = child_location(self.source, name)
        if not is_dataset_at(path):
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
@op("ping", write=False)
async def _ping(srv: ControlServer, req: Request) -> tuple[Any, bytes]:
    return {"protocol": proto.VERSION, "pid": os.getpid(), "uid": req.peer.uid,
            "may_write": srv.policy.may_write(req.peer), **srv.diagnostics()}, b""


@op("datasets", write=False)
async def _datasets(srv: ControlServer, req: Request) -> tuple[Any, bytes]:
    return await srv.run(srv.names), b""


def _writer(kind: str) -> Handler:
    async def write(srv: ControlServer, req: Request) -> tuple[Any, bytes]:
        name, branch = _arg(req.args, "name", str), _arg(req.args, "branch", str, required=False)
        message = _arg(req.args, "message", str, required=False)
        if not len(req.payload):
            raise errors.UserInputError(f"{kind} needs the rows as an Arrow IPC payload")

        def run() -> JobResult:
            ds = srv.dataset(name, branch)
            table = proto.ipc_to_table(req.payload)
            return getattr(ds.local(), kind)(table, message=message)

        result = await srv.run(run)
        srv.on_commit()
        return _job(result), b""

    return write


for _kind in ("append", "insert", "upsert"):
    op(_kind, write=True)(_writer(_kind))


@op("delete", write=True)
async def _delete(srv: ControlServer, req: Request) -> tuple[Any, bytes]:
    name, filter_ = _arg(req.args, "name", str), _arg(req.args, "filter", str)
    branch, message = _arg(req.args, "branch", str, required=False), _arg(req.args, "message", str, required=False)
    result = await srv.run(lambda: srv.dataset(name, branch).local().delete(filter_, message=message))
    srv.on_commit()
    return _job(result), b""


@op("add_tag", write=True)
async def _add_tag(srv: ControlServer, req: Request) -> tuple[Any, bytes]:
    name, tag = _arg(req.args, "name", str), _arg(req.args, "tag", str)
    sid = _arg(req.args, "snapshot_id", int, required=False)
    await srv.run(lambda: srv.dataset(name).add_tag(tag, sid))
    srv.on_commit()
    return None, b""


@op("add_branch", write=True)
async def _add_branch(srv: ControlServer, req: Request) -> tuple[Any, bytes]:
    name, branch = _arg(req.args, "name", str), _arg(req.args, "branch", str)
    await srv.run(lambda: srv.dataset(name).add_branch(branch))
    srv.on_commit()
    return None, b""


@op("refresh", write=True)
async def _refresh(srv: ControlServer, req: Request) -> tuple[Any, bytes]:
    name = _arg(req.args, "name", str)
    version = _arg(req.args, "version", (int, str), required=False)

    def run() -> JobResult:
        path = srv.path(name)
        try:
            from spacefs.engine.mv import DEFINITION, MaterializedView
        except ImportError:
            raise proto.ControlError("materialized views are not available in this build of spacefs") from None
        storage = Storage(path)
        if storage.kind != "mv":
            raise errors.UserInputError(f"{storage.location} is a dataset, not a materialized view")
        if not srv.policy.trust_views:  # before anything is unpickled
            definition = storage.full_path(storage.meta.get("view", {}).get("definition", DEFINITION))
            check_view_trusted(path, definition, srv.owner)
        return MaterializedView.load(path).local().refresh(version)

    result = await srv.run(run)
    srv.on_commit()
    return _job(result), b""


@op("sql", write=False, reply_budget=True)
async def _sql(srv: ControlServer, req: Request) -> tuple[Any, Any]:
    query = _arg(req.args, "query", str)

    def run() -> tuple[pa.Buffer, int]:
        return sql_to_ipc(query, {n: srv.path(n) for n in srv.names()}, srv.limits.max_result)

    async with srv.sql_limiter:
        data, rows = await srv.run(run)
    return {"rows": rows}, data


def _connect_duckdb(datasets: dict[str, str]) -> Any:
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
            if ds.storage.remote:  # index rows read through the backend (engine.sql)
                from spacefs.engine.sql import index_table

                con.register(name, index_table(ds, None))
                continue
            files = ds.index_files()
            schema = ds.storage.index_schema
            src = pds.dataset(files, schema=schema, format="parquet") if files else schema.empty_table()
            con.register(name, src)
    except BaseException:
        con.close()
        raise
    return con


def sql_to_ipc(query: str, datasets: dict[str, str], limit: int) -> tuple[pa.Buffer, int]:
    """Run ``query`` and encode its result as an Arrow IPC stream of at most ``limit``
    bytes, batch by batch: a result too large fails once it passes the limit instead of
    being built in full first."""
    import duckdb

    con = _connect_duckdb(datasets)
    try:
        try:
            rel = con.sql(query)  # a relation streams; a DB-API result would copy the rows first
            if rel is None:  # a statement without a result
                return proto.reader_to_ipc(pa.RecordBatchReader.from_batches(pa.schema([]), []), limit)
            return proto.reader_to_ipc(rel.to_arrow_reader(8192), limit)
        except duckdb.Error as e:
            raise errors.UserInputError(f"SQL error: {str(e).splitlines()[0]}") from None
    finally:
        con.close()


def safe_sql(query: str, datasets: dict[str, str]) -> pa.Table:
    """The whole result of ``query`` as a table, with the same restrictions as the socket's SQL."""
    import duckdb

    con = _connect_duckdb(datasets)
    try:
        try:
            return con.execute(query).to_arrow_table()
        except duckdb.Error as e:
            raise errors.UserInputError(f"SQL error: {str(e).splitlines()[0]}") from None
    finally:
        con.close()
