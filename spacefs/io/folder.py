"""Folders of files in ImageFolder layout (``root/<class>/<file>``), in and out.

Each file becomes a row ``(label, name, <content>)``: the class from its folder, its name
within that folder, its bytes as a record. The dataset gets the file layout
``{"path": "{label}/{name}", "content": <content>}``, so the mount's ``files/`` shows the
same tree and an export writes it back. Names of files in nested folders keep their
``/``; the mount and the export show it percent-encoded (``a%2Fb.jpg``), as for any value.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pyarrow as pa

from spacefs.engine.errors import NotFoundError, UserInputError
from spacefs.engine.layout import format_path, layout_fields, validate_layout

from .target import ImportResult, import_target, open_dataset, output_dir, progress, write_rows

BATCH_FILES = 4096
BATCH_BYTES = 64 << 20


def folder_schema(content_field: str = "content") -> pa.Schema:
    return pa.schema([("label", pa.string()), ("name", pa.string()), (content_field, pa.binary())])


def folder_layout(content_field: str = "content") -> dict[str, str]:
    return {"path": "{label}/{name}", "content": content_field}


def scan_folder(root: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """``(label, name, path)`` of every file in a class folder, and the files outside any
    (skipped, as ImageFolder does). Hidden files and folders are skipped."""
    if not os.path.isdir(root):
        raise NotFoundError(f"no such folder: {root}")
    files: list[tuple[str, str, str]] = []
    stray: list[str] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            stray.append(entry.path)
            continue
        for dirpath, dirnames, filenames in os.walk(entry.path, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in sorted(filenames):
                if fn.startswith("."):
                    continue
                path = os.path.join(dirpath, fn)
                files.append((entry.name, os.path.relpath(path, entry.path).replace(os.sep, "/"), path))
    if not files:
        raise UserInputError(f"{root} has no files in class folders (expected {root}/<class>/<file>)")
    return files, stray


def import_folder(src: str, location: str, content_field: str = "content", mode: str = "insert", *,
                  branch: str | None = None, message: str | None = None) -> ImportResult:
    """Import an ImageFolder-style tree into the dataset at ``location`` in one snapshot.

    The default mode ``insert`` refuses a file already stored under the same
    ``(label, name)``; ``upsert`` replaces it instead.
    """
    files, _stray = scan_folder(src)
    schema = folder_schema(content_field)
    total = sum(os.path.getsize(p) for _, _, p in files)
    with import_target(location, schema, ["label", "name"], [content_field], f"folder {src}",
                       file_layout=folder_layout(content_field)) as (ds, created):
        bar = progress(total, f"import {os.path.basename(ds.location)}", unit="B")

        def tables() -> Iterator[pa.Table]:
            labels: list[str] = []
            names: list[str] = []
            blobs: list[bytes] = []
            size = 0
            for label, name, path in files:
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError as e:
                    raise UserInputError(f"cannot read {path}: {e.strerror}") from None
                labels.append(label)
                names.append(name)
                blobs.append(data)
                size += len(data)
                bar.update(len(data))
                if len(blobs) >= BATCH_FILES or size >= BATCH_BYTES:
                    yield _table(schema, labels, names, blobs)
                    labels, names, blobs, size = [], [], [], 0
            if blobs:
                yield _table(schema, labels, names, blobs)

        with bar:
            result = write_rows(ds, tables(), mode, branch, message)
    return ImportResult(ds.location, result.snapshot_id, len(files) if result.snapshot_id is not None else 0, created)


def _table(schema: pa.Schema, labels: list[str], names: list[str], blobs: list[bytes]) -> pa.Table:
    return pa.Table.from_arrays([pa.array(labels, pa.string()), pa.array(names, pa.string()),
                                 pa.array(blobs, pa.binary())], schema=schema)


def export_folder(location: str, dest: str, version: int | str | None = None, path: str | None = None,
                  content: str | None = None) -> int:
    """Write one file per row of a version at ``path`` (a template like ``{label}/{name}``)
    holding field ``content``; both default to the dataset's file layout, so the tree is
    the one the mount shows under ``files/``. Returns the number of files written."""
    ds = open_dataset(location)
    layout = dict(ds.file_layout or {})
    if path:
        layout["path"] = path
    if content:
        layout["content"] = content
    if set(layout) != {"path", "content"}:
        raise UserInputError(f"{ds.location} has no file layout: pass both a path template and a content field")
    validate_layout(layout, ds.schema, ds.record_fields)
    fields = sorted(set(layout_fields(layout["path"])) | {layout["content"]})
    sid = ds.snapshot_id(version)
    seen: set[str] = set()
    with output_dir(dest) as staging, progress(ds.num_rows(sid), f"export {ds.name}", unit="file") as bar:
        for t in ds.local().read(version=sid, fields=fields):
            for row in t.to_pylist():
                rel = format_path(layout["path"], row)
                if rel in seen:
                    raise UserInputError(f"{ds.location}: two rows map to the same file {rel!r}")
                seen.add(rel)
                target = os.path.join(staging, rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                data = row[layout["content"]]
                with open(target, "wb") as f:
                    if data is not None:
                        f.write(data if isinstance(data, bytes) else _as_bytes(data))
                bar.update(1)
    return len(seen)


def _as_bytes(value: object) -> bytes:
    return value.encode() if isinstance(value, str) else str(value).encode()

