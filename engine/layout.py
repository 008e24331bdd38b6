"""File layouts: how a dataset's rows appear as a tree of files (the mount's ``files/``).

A layout ``{"path": "{label}/{image_name}", "content": "image"}`` puts one file per row at
the formatted path, holding the bytes of field ``content``.

A rendered path always stays inside the tree it is rendered into: templates are plain
relative paths (no absolute path, no empty, ``.`` or ``..`` component, only plain
``{field}`` placeholders), and values are encoded so that no component can come out as
``.``, ``..`` or empty, nor hold a ``/`` (``encode_component``). Exports check it once
more when they write (``spacefs.io.target.open_under``).
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
    leading ``.`` percent-encoded (SPEC section 4), so ``.`` and ``..`` come out as
    ``%2E`` and ``%2E.``; an empty value is ``%00``. Never ``.``, ``..``, empty or
    holding a ``/``."""
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


def check_relative_path(path: str, what: str) -> list[str]:
    """The components of ``path``, refusing anything that could leave the directory it
    is joined to: an absolute path, an empty, ``.`` or ``..`` component, a NUL."""
    if not isinstance(path, str) or not path:
        raise SchemaError(f"{what} must be a non-empty relative path, got {path!r}")
    if path.startswith("/"):
        raise SchemaError(f"{what} {path!r} is absolute: it must be relative to the destination")
    if "\0" in path:
        raise SchemaError(f"{what} {path!r} holds a NUL character")
    parts = path.split("/")
    for p in parts:
        if p in ("", ".", ".."):
            shown = "an empty" if not p else f"a {p!r}"
            raise SchemaError(f"{what} {path!r} has {shown} component: paths must stay inside the destination")
    return parts


def validate_layout(layout: dict[str, str], schema: pa.Schema, record_fields: Sequence[str]) -> None:
    if not isinstance(layout, dict) or set(layout) != {"path", "content"}:
        raise SchemaError(f"file_layout must be a dict with keys 'path' and 'content', got {layout!r}")
    content = layout["content"]
    if content not in schema.names:
        raise SchemaError(f"file_layout content field {content!r} is not in the schema")
    template = layout["path"]
    if not isinstance(template, str) or not template.strip("/"):
        raise SchemaError("file_layout path must be a non-empty template like '{label}/{name}'")
    check_relative_path(template, "file_layout path")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise SchemaError(f"file_layout path {template!r}: {e}") from None
    fields = [f for _, f, _, _ in parsed if f]
    if not fields:
        raise SchemaError(f"file_layout path {template!r} names no field")
    for _, f, spec, conv in parsed:
        # A format spec or conversion could pad with '/', cut a value to nothing or
        # otherwise undo the encoding that keeps values inside the tree.
        if f is not None and (spec or conv):
            raise SchemaError(f"file_layout path {template!r}: only plain {{field}} placeholders are allowed")
    for f in fields:
        if f not in schema.names:
            raise SchemaError(f"file_layout path field {f!r} is not in the schema")
        if f in record_fields:
            raise SchemaError(f"file_layout path field {f!r} is a record field")


def _contained(component: str) -> str:
    # Only reachable with templates stored before validate_layout refused them (or
    # never validated): render them harmlessly rather than fail a whole listing.
    component = component.replace("/", "%2F").replace("\0", "%00")
    if component in ("", ".", ".."):
        return "%2E" + component[1:] if component else "%00"
    return component


def format_path(template: str, row: dict[str, Any]) -> str:
    """The relative path of a row: each field value encoded as path-safe text. Never
    absolute, never with an empty, ``.`` or ``..`` component."""
    values = {k: encode_component(v) for k, v in row.items()}
    return "/".join(_contained(comp.format(**values)) for comp in template.split("/") if comp)
