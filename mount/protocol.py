"""The control socket's wire format: small, versioned, length-prefixed frames.

A frame is a fixed 20-byte prefix ``magic "SPFS", version (u8), 3 pad bytes, header
length (u32), payload length (u64)``, big-endian, then a UTF-8 JSON object (the header)
and an optional payload (an Arrow IPC stream). Requests carry ``{"op": ..., "args":
{...}}``; replies ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {"type":
..., "message": ...}}``. Lengths are checked against limits before anything is read, and
a header's JSON nesting depth before it is parsed, so a hostile peer cannot make either
side allocate more than the limits allow or recurse without bound.
"""

from __future__ import annotations

import json
import re
import socket
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from spacefs.engine import errors

MAGIC = b"SPFS"
VERSION = 1
PREFIX = struct.Struct("!4sB3xIQ")
MAX_HEADER = 256 << 10
MAX_PAYLOAD = 512 << 20
MAX_DEPTH = 32  # requests nest two or three levels; json.loads recurses once per level
MAX_MESSAGE = 2000  # error messages may quote the request: keep replies small


class ProtocolError(errors.SpaceError):
    """A frame that does not follow the protocol, or a peer that went away mid-frame."""


class ControlError(errors.SpaceError):
    """The daemon could not do what a control request asked (reason in the message)."""


class AccessDeniedError(errors.SpaceError, PermissionError):
    """The peer may not do this on this mount (e.g. a write by a user the mount only lets read)."""


@dataclass
class Frame:
    header: dict[str, Any]
    payload: bytes = b""
    error: str | None = None  # a whole frame whose header did not parse


def encode(header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return PREFIX.pack(MAGIC, VERSION, len(head), len(payload)) + head + payload


def parse_prefix(prefix: bytes, max_payload: int = MAX_PAYLOAD, max_header: int = MAX_HEADER) -> tuple[int, int]:
    """Header and payload lengths of a frame; ProtocolError if the prefix is bad."""
    magic, version, hlen, plen = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError("not a spacefs control frame (bad magic)")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version} is not supported (this side speaks {VERSION})")
    if hlen > max_header:
        raise ProtocolError(f"frame header of {hlen} bytes exceeds the limit of {max_header}")
    if plen > max_payload:
        raise ProtocolError(f"frame payload of {plen} bytes exceeds the limit of {max_payload}")
    return hlen, plen


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)


def json_depth(raw: bytes) -> int:
    """The deepest bracket nesting of a JSON text, counted without parsing it.

    Strings are blanked first (brackets inside them do not nest); an unterminated string
    leaves its brackets counted, which can only overestimate, and such text is not JSON.
    Vectorised so that checking a header costs far less than parsing it.
    """
    if raw.count(b"[") + raw.count(b"{") <= 1:
        return raw.count(b"[") + raw.count(b"{")
    a = np.frombuffer(_STRING.sub(b"0", raw), np.uint8)
    steps = (a == ord("[")).astype(np.int32) + (a == ord("{")) - (a == ord("]")) - (a == ord("}"))
    return int(np.cumsum(steps).max(initial=0))


def parse_header(raw: bytes) -> dict[str, Any]:
    depth = json_depth(raw)
    if depth > MAX_DEPTH:
        raise ProtocolError(f"frame header nests {depth} levels deep (the limit is {MAX_DEPTH})")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: also huge int literals
        raise ProtocolError(f"frame header is not JSON: {str(e)[:200]}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("frame header must be a JSON object")
    return doc


def table_to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


class ResultTooLarge(errors.UserInputError):
    """A result that would not fit in one reply frame."""


def reader_to_ipc(reader: pa.RecordBatchReader, limit: int) -> tuple[pa.Buffer, int]:
    """Encode batches as they come, stopping as soon as the encoding passes ``limit`` bytes,
    so an oversized result costs one batch beyond the limit, not the whole result."""
    sink = pa.BufferOutputStream()
    rows = 0
    with pa.ipc.new_stream(sink, reader.schema) as w:
        for batch in reader:
            w.write_batch(batch)
            rows += batch.num_rows
            if sink.tell() > limit:
                raise ResultTooLarge(f"result too large (over {limit} bytes after {rows} rows), add LIMIT "
                                     "or select fewer columns")
    return sink.getvalue(), rows


def ipc_to_table(payload: bytes | bytearray | memoryview) -> pa.Table:
    try:
        return pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError) as e:
        raise errors.UserInputError(f"payload is not a valid Arrow IPC stream: {e}") from None


def error_header(exc: BaseException) -> dict[str, Any]:
    kind = type(exc).__name__ if isinstance(exc, errors.SpaceError) else "ControlError"
    msg = str(exc) or kind
    if len(msg) > MAX_MESSAGE:
        msg = msg[:MAX_MESSAGE] + f"... ({len(msg)} characters)"
    return {"ok": False, "error": {"type": kind, "message": msg}}


def raise_error(err: dict[str, Any]) -> None:
    """Raise the SpaceError subclass a reply names (ControlError for unknown names)."""
    kind, msg = str(err.get("type", "")), str(err.get("message", ""))
    local = {"ProtocolError": ProtocolError, "AccessDeniedError": AccessDeniedError, "ResultTooLarge": ResultTooLarge}
    cls = getattr(errors, kind, None) or local.get(kind, ControlError)
    if not (isinstance(cls, type) and issubclass(cls, errors.SpaceError)):
        cls = ControlError
    raise cls(msg)


# -- blocking I/O (the client) ---------------------------------------------------
def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ProtocolError("the daemon closed the connection")
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket, max_payload: int = MAX_PAYLOAD) -> Frame:
    hlen, plen = parse_prefix(_recv_exact(sock, PREFIX.size), max_payload)
    header = parse_header(_recv_exact(sock, hlen))
    return Frame(header, _recv_exact(sock, plen) if plen else b"")
