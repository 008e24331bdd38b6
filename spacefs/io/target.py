"""Where imports land and exports go, with the all-or-nothing rule of the engine kept.

An import writes one snapshot or none: rows are streamed into a single engine write, so
a failure (bad input, Ctrl-C) leaves the dataset exactly as it was. When the import
created the dataset, a failure also removes it again, so no empty husk is left behind.
An export is written into a hidden sibling of its destination and renamed into place
only when complete.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from spacefs.engine import Dataset
from spacefs.engine import format as fmt
from spacefs.engine.backend import is_remote, open_backend
from spacefs.engine.catalog import remove_from_bucket
from spacefs.engine.errors import AlreadyExistsError, NotFoundError, SchemaError, UserInputError
from spacefs.engine.layout import check_relative_path

MODES = ("append", "insert", "upsert")

# Imported rows are gathered into tables of about this size before each engine write:
# every write makes its own index and ArrayRecord files, so tiny batches mean tiny files.
CHUNK_ROWS = 100_000
CHUNK_BYTES = 128 << 20


@dataclass(frozen=True)
class ImportResult:
    """What an import did: the dataset, the snapshot it made (None if nothing changed)."""

    location: str
    snapshot_id: int | None
    rows: int
    created: bool
    skipped: tuple[str, ...] = ()  # source entries left out, each with the reason

    def summary(self) -> str:
        """One line for people: rows imported, into which dataset, which snapshot."""
        where = f"snapshot {self.snapshot_id}" if self.snapshot_id is not None else "no new snapshot"
        made = "new dataset " if self.created else ""
        left = f"; skipped {len(self.skipped)}" if self.skipped else ""
        return f"imported {self.rows} rows into {made}{self.location} ({where}{left})"


def is_dataset(location: str) -> bool:
    if is_remote(str(location)):  # on a bucket a dataset exists once its log entry 0 does
        return open_backend(str(location)).exists(fmt.log_entry(0))
    return fmt.is_dataset(str(location))


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UserInputError(f"import mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def check_fields(ds: Dataset, schema: pa.Schema, source: str, omit_records: bool = False) -> None:
    """Refuse data whose fields differ from an existing dataset's (a schema clash).

    With ``omit_records`` (an upsert) the data may leave out record fields: stored keys
    then keep their records.
    """
    have, want = set(schema.names), set(ds.schema.names)
    if omit_records:
        want -= set(ds.record_fields) - have
    if have != want:
        parts = []
        if want - have:
            parts.append(f"missing {sorted(want - have)}")
        if have - want:
            parts.append(f"unknown {sorted(have - want)}")
        raise SchemaError(f"schema clash: {source} does not match dataset {ds.location} ({'; '.join(parts)})")
    for f in schema:
        dt = ds.schema.field(f.name).type
        storage = dt.storage_type if isinstance(dt, pa.ExtensionType) else dt
        if f.type != storage and not _castable(f.type, storage):
            raise SchemaError(f"schema clash: field {f.name!r} of {source} is {f.type}, dataset {ds.location} has {dt}")


def _castable(src: pa.DataType, dst: pa.DataType) -> bool:
    try:
        pa.array([], src).cast(dst)
        return True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return False


@contextmanager
def import_target(location: str, schema: pa.Schema, primary_keys: Sequence[str] | None,
                  record_fields: Sequence[str] | None, source: str,
                  file_layout: dict[str, str] | None = None, omit_records: bool = False) -> Iterator[tuple[Dataset, bool]]:
    """Yield ``(dataset, created)``: the existing dataset (fields checked against
    ``schema``), or a new one made from ``schema`` that is removed again on failure."""
    remote = is_remote(str(location))
    location = str(location).rstrip("/") if remote else os.path.abspath(str(location))
    if is_dataset(location):
        ds = Dataset.load(location)
        check_fields(ds, schema, source, omit_records)
        if primary_keys and list(primary_keys) != ds.primary_keys:
            raise SchemaError(f"schema clash: dataset {location} has primary key {ds.primary_keys}, not {list(primary_keys)}")
        if record_fields and sorted(record_fields) != sorted(ds.record_fields):
            raise SchemaError(f"schema clash: dataset {location} has record fields {ds.record_fields}, not {list(record_fields)}")
        yield ds, False
        return
    if not primary_keys:
        raise UserInputError(f"{location} is not a dataset yet: creating it needs a primary key (--primary-key)")
    existed = not remote and os.path.exists(location)
    if existed and (not os.path.isdir(location) or os.listdir(location)):
        raise AlreadyExistsError(f"{location} exists and is not a spacefs dataset")
    ds = Dataset.create(location, schema, list(primary_keys), list(record_fields or []), file_layout)
    try:
        yield ds, True
    except BaseException:
        if remote:
            remove_from_bucket(ds.storage.backend)
            raise
        shutil.rmtree(location, ignore_errors=True)
        if existed:
            os.makedirs(location, exist_ok=True)
        raise


def write_rows(ds: Dataset, tables: Iterable[pa.Table], mode: str = "insert", branch: str | None = None,
               message: str | None = None) -> Any:
    """One engine write of all ``tables`` to ``branch`` (default main): one snapshot, or
    none on any failure. ``message`` is kept with the snapshot."""
    check_mode(mode)
    on_branch(ds, branch)
    return getattr(ds.local(), mode)(rechunk(tables), message=message)


def on_branch(ds: Dataset, branch: str | None) -> None:
    """Point ``ds``'s writes at ``branch`` (None: main), which must exist."""
    if branch is not None:
        ds.set_current_branch(branch)


def rechunk(tables: Iterable[pa.Table], max_rows: int = CHUNK_ROWS, max_bytes: int = CHUNK_BYTES) -> Iterator[pa.Table]:
    """Gather small tables into ones of about ``max_rows`` rows or ``max_bytes`` bytes."""
    pending: list[pa.Table] = []
    rows = size = 0
    for t in tables:
        if not t.num_rows:
            continue
        pending.append(t)
        rows += t.num_rows
        size += t.nbytes
        if rows >= max_rows or size >= max_bytes:
            yield pa.concat_tables(pending, promote_options="none")
            pending, rows, size = [], 0, 0
    if pending:
        yield pa.concat_tables(pending, promote_options="none")


def progress(total: int | None = None, desc: str = "", unit: str = "row", unit_scale: bool = True) -> tqdm:
    """A progress bar on a terminal; silent when stderr is not a tty."""
    off = not sys.stderr.isatty() or os.environ.get("SPACEFS_QUIET") == "1"  # set by spacefs --quiet
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, disable=off,
                leave=False, dynamic_ncols=True)


def counted(tables: Iterable[pa.Table], bar: tqdm, measure: Callable[[pa.Table], int] | None = None) -> Iterator[pa.Table]:
    for t in tables:
        yield t
        bar.update(measure(t) if measure else t.num_rows)


# -- exports -------------------------------------------------------------------
def open_dataset(location: str) -> Dataset:
    location = str(location).rstrip("/") if is_remote(str(location)) else os.path.abspath(str(location))
    if not is_dataset(location):
        raise NotFoundError(f"no spacefs dataset at {location}")
    return Dataset.load(location)


@contextmanager
def output_dir(dest: str) -> Iterator[str]:
    """Yield a hidden staging directory that becomes ``dest`` when the block succeeds."""
    dest = os.path.abspath(str(dest))
    if os.path.exists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise AlreadyExistsError(f"export destination {dest} exists and is not an empty directory")
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{os.path.basename(dest)}.exporting-{os.getpid()}-{random.getrandbits(32):x}")
    os.makedirs(staging)
    try:
        yield staging
        if os.path.isdir(dest):
            os.rmdir(dest)
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


class ContainedWriter:
    """Creates files at relative paths under ``root`` and nowhere else.

    Paths are checked (no absolute path, no empty, ``.`` or ``..`` component), then
    walked one directory at a time with ``openat`` and ``O_NOFOLLOW``: a symlink
    planted anywhere under ``root``, even while the export runs, cannot redirect a
    write outside it (stronger than checking ``realpath`` first, which a swap between
    the check and the ``open`` defeats). Directory descriptors are kept for reuse.
    """

    MAX_DIR_FDS = 64

    def __init__(self, root: str):
        self.root = root
        self._dirs: dict[tuple[str, ...], int] = {(): os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)}

    def open(self, rel: str) -> int:
        """A new file ``rel`` opened for writing (``O_EXCL``: never an existing one)."""
        try:
            parts = check_relative_path(rel, "export path")
        except SchemaError as e:
            raise UserInputError(f"refusing to write outside {self.root}: {e}") from None
        dir_fd = self._dir(tuple(parts[:-1]))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(parts[-1], flags, 0o644, dir_fd=dir_fd)
        except FileExistsError:
            raise UserInputError(f"{rel!r} is written twice (two rows map to the same file)") from None
        except IsADirectoryError:
            raise UserInputError(f"{rel!r} is both a file and a directory of the export") from None

    def _dir(self, parts: tuple[str, ...]) -> int:
        fd = self._dirs.get(parts)
        if fd is not None:
            return fd
        parent = self._dir(parts[:-1])
        name = parts[-1]
        try:
            os.mkdir(name, 0o755, dir_fd=parent)
        except FileExistsError:
            pass
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        except OSError as e:
            where = "/".join(parts)
            if e.errno in (errno.ENOTDIR, errno.ELOOP):
                raise UserInputError(f"refusing to write through {where!r} under {self.root}: it is a symlink "
                                     "or a file, not a directory") from None
            raise
        if len(self._dirs) >= self.MAX_DIR_FDS:
            # Drop half, keeping this directory's ancestors (the caller holds one).
            for key in [k for k in self._dirs if k and parts[: len(k)] != k][: len(self._dirs) // 2]:
                os.close(self._dirs.pop(key))
        self._dirs[parts] = fd
        return fd

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def __enter__(self) -> ContainedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
