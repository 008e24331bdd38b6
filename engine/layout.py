"""File layouts: how a dataset's rows appear as a tree of files (the mount's ``files/``).

A layout ``{"path": "{label}/{image_name}", "content": "image"}`` puts one file per row at
the formatted path, holding the bytes of field ``content``.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from .errors import SchemaError

_ENC = {"/": "%2F", "%": "%25", ",": "%2C"}


def encode_component(value: Any) -> str:
    """A value as one path component: ``/``, ``%``, ``,``, control characters and a
    leading ``.`` percent-encoded (SPEC section 4)."""
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
    out = []
    for i, ch in enumerate(text):
        if ch in _ENC or ord(ch) < 0x20 or ord(ch) == 0x7F or (i == 0 and ch == "."):
            out.append("".join(f"%{b:02X}" for b in ch.encode()))
        else:
            out.append(ch)
    return "".join(out) or "%00"


def layout_fields(path_template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(path_template) if f]


def validate_layout(layout: dict[str, str], schema: pa.Schema, record_fields: Sequence[str]) -> None:
    if not isinstance(layout, dict) or set(layout) != {"path", "content"}:
        raise SchemaError(f"file_layout must be a dict with keys 'path' and 'content', got {layout!r}")
    content = layout["content"]
    if content not in schema.names:
        raise SchemaError(f"file_layout content field {content!r} is not in the schema")
    if not isinstance(layout["path"], str) or not layout["path"].strip("/"):
        raise SchemaError("file_layout path must be a non-empty template like '{label}/{name}'")
    try:
        fields = layout_fields(layout["path"])
    except ValueError as e:
        raise SchemaError(f"file_layout path {layout['path']!r}: {e}") from None
    if not fields:
        raise SchemaError(f"file_layout path {layout['path']!r} names no field")
    for f in fields:
        if f not in schema.names:
            raise SchemaError(f"file_layout path field {f!r} is not in the schema")
        if f in record_fields:
            raise SchemaError(f"file_layout path field {f!r} is a record field")


def format_path(template: str, row: dict[str, Any]) -> str:
    """The relative path of a row: each field value encoded as path-safe text."""
    parts = []
    for comp in template.strip("/").split("/"):
        parts.append(comp.format(**{k: encode_component(v) for k, v in row.items()}))
    return "/".join(parts)
