"""File layouts and file names: how a dataset's rows appear as files (the mount's
``rows/`` and ``files/``, and ``spacefs export folder``).

A layout ``{"path": "{label}/{image_name}", "content": "image"}`` puts one file per row at
the formatted path, holding the bytes of field ``content``.

Names (the reference; README "The mount" and FORMAT.md point here). A value becomes a
path component byte for byte: ``,``, ``#``, spaces, a leading ``.``, control characters
and any UTF-8 stay as they are. Only what a POSIX name cannot hold is escaped, with
``%`` and two hex digits:

- ``/`` is ``%2F`` and NUL is ``%00`` inside a value;
- a component that would be exactly ``.`` or ``..`` is ``%2E`` or ``%2E%2E``;
- a ``%`` that is followed by two hex digits or by ``~`` is ``%25`` (so every escape,
  and every marker below, reads back one way); any other ``%`` stays as it is
  (``100%.jpg`` is ``100%.jpg``);
- in ``rows/`` a composite key joins its fields' values with ``,``; there (only) a ``,``
  inside a value is ``%2C``. A single-field key keeps its ``,``;
- markers, which no value can produce (a value's ``%~`` is always escaped): a null value
  is ``%~null`` (never the string ``None``), a component that would be empty is
  ``%~empty``;
- a component over 255 bytes (``NAME_MAX``) keeps its first bytes (cut on a UTF-8
  boundary), then ``%~`` and 16 hex digits of the SHA-256 of the full component, then
  its extension (the text after its last ``.``, when that is at most 16 bytes), so a
  long ``….jpg`` stays a ``.jpg`` that loaders pick up.

Before this scheme (until the version that introduced it) ``,``, ``%``, control
characters and a leading ``.`` were percent-encoded too; they no longer are.

When two rows render the same name, the row written last wins (``last_wins``): the one
from the newest snapshot, or the later row of the same snapshot. ``name_collisions``
counts such names for ``spacefs info``.

A rendered path always stays inside the tree it is rendered into: templates are plain
relative paths (no absolute path, no empty, ``.`` or ``..`` component, only plain
``{field}`` placeholders), and no rendered component is ``.``, ``..`` or empty, holds a
``/`` or exceeds 255 bytes. Exports check it once more when they write
(``spacefs.io.target.open_under``).
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.types as pat

from .errors import SchemaError

NAME_MAX = 255
NULL_NAME = "%~null"
EMPTY_NAME = "%~empty"
_PCT = re.compile(r"%(?=[0-9A-Fa-f]{2}|~)")
# What a string value needs escaping for (vectorised check in ``key_names``).
_NEEDS = r"[/\x00]|%([0-9A-Fa-f]{2}|~)|^\.{0,2}$"
_EXT_MAX = 16


def encode_value(value: Any, sep: str | None = None) -> str:
    """One value as text for a name: ``/``, NUL and ``%`` before hex digits or ``~``
    escaped, and ``sep`` (the join separator of a composite key) too; null is
    ``NULL_NAME``. Not yet a whole component: see ``finish_component``."""
    if value is None:
        return NULL_NAME
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
    if "%" in text:
        text = _PCT.sub("%25", text)
    if "/" in text:
        text = text.replace("/", "%2F")
    if "\0" in text:
        text = text.replace("\0", "%00")
    if sep and sep in text:
        text = text.replace(sep, f"%{ord(sep):02X}")
    return text


def shorten(name: str) -> str:
    """``name`` itself if it fits in ``NAME_MAX`` bytes, else a readable prefix, a hash
    of the whole and the extension (see the module docstring)."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= NAME_MAX:
        return name
    digest = "%~" + hashlib.sha256(raw).hexdigest()[:16]
    dot = name.rfind(".")
    ext = name[dot:] if dot > 0 else ""
    if len(ext.encode("utf-8", "surrogateescape")) > _EXT_MAX or "%~" in ext:
        ext = ""
    room = NAME_MAX - len(digest) - len(ext.encode("utf-8", "surrogateescape"))
    prefix = raw[:room].decode("utf-8", "ignore")  # a character cut in two is dropped whole
    return prefix + digest + ext


def finish_component(text: str) -> str:
    """Escaped text as a path component: never empty, ``.``, ``..`` or over 255 bytes."""
    if not text:
        return EMPTY_NAME
    if text in (".", ".."):
        return "%2E" * len(text)
    return shorten(text)


def encode_component(value: Any) -> str:
    """A single value as one path component (module docstring)."""
    return finish_component(encode_value(value))


def key_name(values: Sequence[Any]) -> str:
    """The ``rows/`` directory name of a row with primary key ``values``."""
    if len(values) == 1:
        return encode_component(values[0])
    return finish_component(",".join(encode_value(v, ",") for v in values))


def _encoded_column(col: pa.ChunkedArray | pa.Array, sep: str | None) -> list[str]:
    """``encode_value`` of a column, vectorised for the common cases: integers never
    need escaping and most strings do not."""
    typ = col.type
    if col.null_count == 0 and pat.is_integer(typ):
        return pc.cast(col, pa.string()).to_pylist()
    if col.null_count == 0 and (pat.is_string(typ) or pat.is_large_string(typ)):
        values = col.to_pylist()
        pattern = _NEEDS + ("|" + re.escape(sep) if sep else "")
        bad = pc.or_(pc.match_substring_regex(col, pattern), pc.greater(pc.binary_length(col), NAME_MAX))
        if not pc.any(bad).as_py():
            return values
        return [encode_value(v, sep) if b else v for v, b in zip(values, bad.to_pylist(), strict=True)]
    return [encode_value(v, sep) for v in col.to_pylist()]


def key_names(table: pa.Table, keys: Sequence[str]) -> list[str]:
    """``key_name`` of every row of ``table`` (vectorised)."""
    if len(keys) == 1:
        parts = _encoded_column(table.column(keys[0]), None)
        return [finish_component(p) if not p or len(p) > NAME_MAX // 4 or p[0] == "." else p for p in parts]
    cols = [_encoded_column(table.column(k), ",") for k in keys]
    return [finish_component(",".join(v)) for v in zip(*cols, strict=True)]


def last_wins(names: Sequence[str], order: Sequence[int] | np.ndarray | None = None) -> tuple[dict[str, int], int]:
    """Each distinct name and the row that shows under it, and how many names more
    than one row rendered. ``order`` is the rows in write order (oldest first; default:
    row order): the row written last wins."""
    by_name: dict[str, int] = {}
    seq = range(len(names)) if order is None else order
    for i in seq:
        by_name[names[i]] = int(i)
    if len(by_name) == len(names):
        return by_name, 0
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return by_name, sum(1 for c in counts.values() if c > 1)


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
    # Values never hold "/" or NUL once encoded; a template literal stored before
    # validate_layout refused them (or never validated) is rendered harmlessly rather
    # than failing a whole listing.
    return component.replace("/", "%2F").replace("\0", "%00")


def format_path(template: str, row: dict[str, Any]) -> str:
    """The relative path of a row: each field value encoded (module docstring). Never
    absolute, never with an empty, ``.``, ``..`` or over-long component."""
    values = {k: encode_value(v) for k, v in row.items()}
    return "/".join(finish_component(_contained(comp.format(**values))) for comp in template.split("/") if comp)


def row_snapshots(entries: Sequence[dict[str, Any]], n: int, sid: int) -> np.ndarray:
    """Which snapshot wrote each of the ``n`` rows of a version read in the order of its
    index ``entries`` (``Storage.index_entries``): the snapshot that added the row's
    index file (manifest ``snapshot_id``)."""
    entries = [e for e in entries if e["rows"]]
    sids = np.repeat(np.array([int(e["snapshot_id"]) for e in entries], dtype=np.int64),
                     np.array([int(e["rows"]) for e in entries], dtype=np.int64))
    return sids if len(sids) == n else np.full(n, sid, dtype=np.int64)  # (never expected)


def write_order(sids: np.ndarray) -> np.ndarray:
    """Row numbers oldest written first (by snapshot, then row): the last one wins."""
    return np.argsort(sids, kind="stable")


class FilesIndex:
    """A tree of files, one row each: directories, and a row per file path.

    Add paths newest row first (``place``): a path already taken (as a file, as a
    directory of a file, or under a file) belongs to a row written later, which wins.
    """

    def __init__(self) -> None:
        self.dirs: dict[str, list[tuple[str, bool, int]]] = {"": []}
        self.files: dict[str, int] = {}
        self.taken: set[str] = set()  # paths a row lost to a row written later

    def add(self, path: str, row: int) -> bool:
        parts = [p for p in path.split("/") if p]
        full = "/".join(parts)
        if not parts or any(p in (".", "..") for p in parts) or full in self.files or full in self.dirs or \
                any("/".join(parts[:i]) in self.files for i in range(1, len(parts))):
            self.taken.add(full)
            return False
        parent = ""
        for p in parts[:-1]:
            d = f"{parent}/{p}" if parent else p
            if d not in self.dirs:
                self.dirs[d] = []
                self.dirs[parent].append((p, True, -1))
            parent = d
        self.dirs[parent].append((parts[-1], False, row))
        self.files[full] = row
        return True


def place(paths: Sequence[str | None], order: Sequence[int] | np.ndarray) -> FilesIndex:
    """The files of rows at ``paths`` (None: the row has no file), ``order`` the rows
    in write order: where rows share a path, the row written last wins."""
    idx = FilesIndex()
    for i in reversed(list(order)):
        p = paths[i]
        if p is not None:
            idx.add(p, int(i))
    for entries in idx.dirs.values():
        entries.reverse()  # (added newest first; listed oldest first)
    return idx


def layout_paths(table: pa.Table, layout: dict[str, str]) -> list[str | None]:
    """Each row's path under ``layout`` (None where its content is null: no file)."""
    fields = sorted(set(layout_fields(layout["path"])))
    cols = {f: table.column(f).to_pylist() for f in fields}
    valid = table.column(layout["content"]).is_valid().to_pylist()
    return [format_path(layout["path"], {f: cols[f][i] for f in fields}) if valid[i] else None
            for i in range(table.num_rows)]


def name_collisions(storage: Any, sid: int) -> dict[str, int]:
    """How many names of version ``sid`` more than one row renders: ``rows`` (key
    directories) and ``files`` (layout paths; also a file where another row needs a
    directory). The row written last shows under each; ``spacefs info`` reports these."""
    from .reads import read_all

    layout = storage.file_layout(sid)
    fields = list(storage.primary_keys)
    if layout is not None:
        fields += [f for f in sorted(set(layout_fields(layout["path"])) | {layout["content"]}) if f not in fields]
    t = read_all(storage, version=sid, fields=fields, reference_read=True).combine_chunks()
    order = write_order(row_snapshots(storage.index_entries(sid), t.num_rows, sid))
    out = {"rows": last_wins(key_names(t, storage.primary_keys), order)[1], "files": 0}
    if layout is not None:
        out["files"] = len(place(layout_paths(t, layout), order).taken)
    return out
