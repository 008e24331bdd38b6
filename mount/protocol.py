"""The control socket's wire format: small, versioned, length-prefixed frames.

A frame is a fixed 20-byte prefix ``magic "SPFS", version (u8), 3 pad bytes, header
length (u32), payload length (u64)``, big-endian, then a UTF-8 JSON object (the header)
and an optional payload (an Arrow IPC stream). Requests carry ``{"op": ..., "args":
{...}}``; replies ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {"type":
..., "message": ...}}``. Lengths are checked against limits before anything is read, so
a hostile peer cannot make either side allocate more than the limits allow.
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from spacefs.engine import errors

MAGIC = b"SPFS"
VERSION = 1
PREFIX = struct.Struct("!4sB3xIQ")
MAX_HEADER = 1 << 20
MAX_PAYLOAD = 512 << 20


class ProtocolError(errors.SpaceError):
    """A frame that does not follow the protocol, or a peer that went away mid-frame."""


class ControlError(errors.SpaceError):
    """The daemon could not do what a control request asked (reason in the message)."""


@dataclass
class Frame:
    header: dict[str, Any]
    payload: bytes = b""
    error: str | None = None  # a whole frame whose header did not parse


def encode(header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return PREFIX.pack(MAGIC, VERSION, len(head), len(payload)) + head + payload


def parse_prefix(prefix: bytes, max_payload: int = MAX_PAYLOAD) -> tuple[int, int]:
    """Header and payload lengths of a frame; ProtocolError if the prefix is bad."""
    magic, version, hlen, plen = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError("not a spacefs control frame (bad magic)")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version} is not supported (this side speaks {VERSION})")
    if hlen > MAX_HEADER:
        raise ProtocolError(f"frame header of {hlen} bytes exceeds the limit of {MAX_HEADER}")
    if plen > max_payload:
        raise ProtocolError(f"frame payload of {plen} bytes exceeds the limit of {max_payload}")
    return hlen, plen


def parse_header(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"frame header is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("frame header must be a JSON object")
    return doc


def table_to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def ipc_to_table(payload: bytes) -> pa.Table:
    try:
        return pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError) as e:
        raise errors.UserInputError(f"payload is not a valid Arrow IPC stream: {e}") from None


def error_header(exc: BaseException) -> dict[str, Any]:
    kind = type(exc).__name__ if isinstance(exc, errors.SpaceError) else "ControlError"
    return {"ok": False, "error": {"type": kind, "message": str(exc) or kind}}


def raise_error(err: dict[str, Any]) -> None:
    """Raise the SpaceError subclass a reply names (ControlError for unknown names)."""
    kind, msg = str(err.get("type", "")), str(err.get("message", ""))
    cls = getattr(errors, kind, None) or {"ProtocolError": ProtocolError}.get(kind, ControlError)
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
