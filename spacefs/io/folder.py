"""Folders of files in ImageFolder layout (``root/<class>/<file>``), in and out.

Each file becomes a row ``(label, name, <content>)``: the class from its folder, its name
within that folder, its bytes as a record. The dataset gets the file layout
``{"path": "{label}/{name}", "content": <content>}``, so the mount's ``files/`` shows the
same tree and an export writes it back, under the same names: a value is a name byte
for byte (``a,b.jpg``, ``100%.jpg``, ``#1 é.jpg``), only what POSIX cannot hold is
escaped (``spacefs.engine.layout``). Names of files in nested folders keep their ``/``;
the mount and the export show it escaped (``a%2Fb.jpg``), as for any value.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from spacefs.engine.errors import NotFoundError, UserInputError
from spacefs.engine.layout import (
    layout_fields,
    layout_paths,
    place,
    row_snapshots,
    validate_layout,
    write_order,
)

from .target import (
    ContainedWriter,
    ImportResult,
    import_target,
    open_dataset,
    output_dir,
    progress,
    write_rows,
)

log = logging.getLogger("spacefs.io")

BATCH_FILES = 4096
BATCH_BYTES = 64 << 20


def folder_schema(content_field: str = "content") -> pa.Schema:
    return pa.schema([("label", pa.string()), ("name", pa.string()), (content_field, pa.binary())])


def folder_layout(content_field: str = "content") -> dict[str, str]:
    return {"path": "{label}/{name}", "content": content_field}


@dataclass(frozen=True)
class FolderScan:
    """What an import will read: ``files`` as ``(label, name, path, stat)``, and the
    entries ``skipped`` (each a line saying which and why)."""

    files: list[tuple[str, str, str, os.stat_result]]
    skipped: list[str]


def scan_folder(root: str, follow_symlinks: bool = False) -> FolderScan:
    """Every regular file in a class folder of ``root``, never anything else.

    Files outside any class folder (as ImageFolder does), hidden files and folders are
    left out. The import stays inside ``root``: a symlink whose target lies outside it
    is skipped with a warning unless ``follow_symlinks`` (symlinks within ``root`` are
    followed, each directory once, so a link loop ends). FIFOs, devices and sockets are
    skipped whatever the links: they are ``stat``-ed, never opened, so none can hang
    the import or stream forever.
    """
    if not os.path.isdir(root):
        raise NotFoundError(f"no such folder: {root}")
    real_root = os.path.realpath(root)
    files: list[tuple[str, str, str, os.stat_result]] = []
    skipped: list[str] = []
    seen_dirs: set[tuple[int, int]] = set()

    def classify(path: str) -> tuple[os.stat_result, str] | None:
        """The stat of what ``path`` names and the path to open it by (a link's
        resolved target, so the read never follows a link), or None: skipped."""
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(path)
                if not follow_symlinks and os.path.commonpath([real_root, target]) != real_root:
                    skipped.append(f"{path}: symlink to {target}, outside {root} "
                                   "(--follow-symlinks, or follow_symlinks=True, imports it)")
                    return None
                st, path = os.stat(target), target
        except OSError as e:
            skipped.append(f"{path}: {e.strerror}")
            return None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            skipped.append(f"{path}: not a regular file ({_kind(st.st_mode)})")
            return None
        return st, path

    def walk(label: str, top: str, st: os.stat_result) -> None:
        stack = [(top, "", st)]
        while stack:
            path, prefix, dst = stack.pop()
            if (dst.st_dev, dst.st_ino) in seen_dirs:
                skipped.append(f"{path}: a folder already imported (a symlink loop or a second link to it)")
                continue
            seen_dirs.add((dst.st_dev, dst.st_ino))
            try:
                entries = sorted(e.name for e in os.scandir(path) if not e.name.startswith("."))
            except OSError as e:
                skipped.append(f"{path}: {e.strerror}")
                continue
            subdirs = []
            for name in entries:
                child = os.path.join(path, name)
                found = classify(child)
                if found is None:
                    continue
                cst, real = found
                if stat.S_ISDIR(cst.st_mode):
                    subdirs.append((child, f"{prefix}{name}/", cst))
                else:
                    files.append((label, prefix + name, real, cst))
            stack.extend(reversed(subdirs))

    for name in sorted(e.name for e in os.scandir(root)):
        if name.startswith("."):
            continue
        path = os.path.join(root, name)
        found = classify(path)
        if found is not None and stat.S_ISDIR(found[0].st_mode):
            walk(name, path, found[0])
    if not files:
        raise UserInputError(f"{root} has no files in class folders (expected {root}/<class>/<file>)")
    for line in skipped:
        log.warning("import folder: skipped %s", line)
    return FolderScan(files, skipped)


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "not a file or folder"


def read_file(path: str, expected: os.stat_result) -> bytes:
    """The bytes of the regular file the scan saw at ``path``.

    ``O_NONBLOCK`` and ``O_NOFOLLOW`` (``path`` is a link's resolved target where the
    scan followed one) are a belt for a race: should ``path`` have become a FIFO or a
    link since the scan, opening it neither blocks nor follows, and the ``fstat``
    below refuses anything but the same regular file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise UserInputError(f"cannot read {path}: {e.strerror}") from None
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (expected.st_dev, expected.st_ino):
            raise UserInputError(f"{path} changed while being imported (it is no longer the file scanned)")
        try:
            return f.read()
        except OSError as e:
            raise UserInputError(f"cannot read {path}: {e.strerror}") from None


def import_folder(src: str, location: str, content_field: str = "content", mode: str = "insert", *,
                  follow_symlinks: bool = False, branch: str | None = None,
                  message: str | None = None) -> ImportResult:
    """Import an ImageFolder-style tree into the dataset at ``location`` in one snapshot.

    The default mode ``insert`` refuses a file already stored under the same
    ``(label, name)``; ``upsert`` replaces it instead. Only regular files inside
    ``src`` are read (see ``scan_folder``); what was skipped is logged as a warning
    and listed in the result's ``skipped``.
    """
    scan = scan_folder(src, follow_symlinks)
    files = scan.files
    schema = folder_schema(content_field)
    total = sum(st.st_size for _, _, _, st in files)
    with import_target(location, schema, ["label", "name"], [content_field], f"folder {src}",
                       file_layout=folder_layout(content_field)) as (ds, created):
        bar = progress(total, f"import {os.path.basename(ds.location)}", unit="B")

        def tables() -> Iterator[pa.Table]:
            labels: list[str] = []
            names: list[str] = []
            blobs: list[bytes] = []
            size = 0
            for label, name, path, st in files:
                data = read_file(path, st)
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
    rows = len(files) if result.snapshot_id is not None else 0
    return ImportResult(ds.location, result.snapshot_id, rows, created, tuple(scan.skipped))


def _table(schema: pa.Schema, labels: list[str], names: list[str], blobs: list[bytes]) -> pa.Table:
    return pa.Table.from_arrays([pa.array(labels, pa.string()), pa.array(names, pa.string()),
                                 pa.array(blobs, pa.binary())], schema=schema)


def export_folder(location: str, dest: str, version: int | str | None = None, path: str | None = None,
                  content: str | None = None) -> int:
    """Write one file per row of a version at ``path`` (a template like ``{label}/{name}``)
    holding field ``content``; both default to that version's file layout, so the tree
    is the one the mount shows under ``files/``: the same names (``spacefs.engine.layout``),
    rows with a null content left out, and where rows share a path the row written
    last. Returns the number of files written."""
    ds = open_dataset(location)
    sid = ds.snapshot_id(version)
    layout = dict(ds.storage.file_layout(sid) or {})
    if path:
        layout["path"] = path
    if content:
        layout["content"] = content
    if set(layout) != {"path", "content"}:
        raise UserInputError(f"{ds.location} has no file layout: pass both a path template and a content field")
    validate_layout(layout, ds.schema, ds.record_fields)
    # First the paths (index fields only), so collisions resolve as in the mount.
    names = sorted(set(layout_fields(layout["path"])) | {layout["content"]})
    t = ds.local().read_all(version=sid, fields=names, reference_read=True).combine_chunks()
    files = place(layout_paths(t, layout), write_order(row_snapshots(ds.storage.index_entries(sid), t.num_rows, sid)))
    where = {row: rel for rel, row in files.files.items()}
    n = row = 0
    with output_dir(dest) as staging, progress(len(where), f"export {ds.name}", unit="file") as bar, \
            ContainedWriter(staging) as out:
        for batch in ds.local().read(version=sid, fields=[layout["content"]]):
            for data in batch.column(0).to_pylist():
                rel = where.get(row)
                row += 1
                if rel is None:
                    continue
                try:
                    fd = out.open(rel)
                except UserInputError as e:
                    raise UserInputError(f"{ds.location}: {e}") from None
                with open(fd, "wb") as f:
                    f.write(data if isinstance(data, bytes) else _as_bytes(data))
                n += 1
                bar.update(1)
    return n


def _as_bytes(value: object) -> bytes:
    return value.encode() if isinstance(value, str) else str(value).encode()

