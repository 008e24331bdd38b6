"""WebDataset tar shards in and out, read and written with the ``webdataset`` package.

A sample (the files of a shard sharing one key, ``000123.jpg``, ``000123.cls``...) becomes
one row: its key in the primary key field ``key``, each extension a field of that name.
Textual extensions (``txt``, ``cls``, ``json``...) become string index fields, queryable
with SQL; every other extension a binary record field. Shards are ingested in parallel
with ``append_from`` (threads, or Ray tasks with ``ray=True``), all in one snapshot.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from spacefs.engine import RayOptions
from spacefs.engine import format as fmt
from spacefs.engine.errors import NotFoundError, SchemaError, SpaceError, UserInputError
from spacefs.engine.layout import key_name

from .target import (
    ImportResult,
    check_mode,
    import_target,
    on_branch,
    open_dataset,
    output_dir,
    progress,
    rechunk,
    write_rows,
)

TEXT_EXTS = frozenset({"txt", "text", "cls", "cls2", "class", "label", "id", "index", "json", "caption"})
BATCH_SAMPLES = 1024
BATCH_BYTES = 64 << 20
_BASE_PLUS_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's own key rule
# Written beside exported shards: the Arrow types of the fields stored as text, so an
# import of the shards gives them back as typed index fields (a file ``x.name`` says
# nothing about whether ``name`` was a string). Readers of the shards ignore it.
FIELD_TYPES_FILE = "spacefs-fields.json"
_TEXT_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer, pa.types.is_floating,
               pa.types.is_boolean)


def shard_files(src: str | Sequence[str]) -> list[str]:
    """Tar shards named by a directory, a glob, or a brace pattern (``shard-{000..009}.tar``)."""
    from braceexpand import braceexpand

    srcs = [src] if isinstance(src, (str, os.PathLike)) else list(src)
    files: list[str] = []
    for s in map(str, srcs):
        if os.path.isdir(s):
            found = sorted(f for ext in ("*.tar", "*.tar.gz", "*.tgz") for f in glob.glob(os.path.join(s, ext)))
            if not found:
                raise NotFoundError(f"no .tar shards in {s}")
            files += found
            continue
        for pattern in braceexpand(s):
            found = [pattern] if os.path.isfile(pattern) else sorted(glob.glob(pattern))
            if not found:
                raise NotFoundError(f"no such shard: {pattern}")
            files += found
    return files


@dataclass(frozen=True)
class ShardScan:
    """What the tar headers say: extensions seen and samples per shard."""

    extensions: tuple[str, ...]
    samples: dict[str, int]


def scan_shards(files: Sequence[str]) -> ShardScan:
    """Read the tar headers of every shard (no data for plain tars): finds the fields
    and refuses corrupt shards before anything is written."""
    exts: set[str] = set()
    samples: dict[str, int] = {}
    for f in files:
        keys: set[str] = set()
        try:
            with tarfile.open(f, "r:*") as tf:
                for m in tf:
                    check_member_name(m.name, f)
                    if not m.isreg() or os.path.basename(m.name).startswith("__"):
                        continue
                    match = _BASE_PLUS_EXT.match(m.name)
                    if match:
                        keys.add(match.group(1))
                        exts.add(match.group(2).lower())
                # tarfile stops quietly at a truncation on a header boundary; a whole
                # shard ends with a zero block (the end-of-archive marker).
                tf.fileobj.seek(tf.offset)
                end = tf.fileobj.read(tarfile.BLOCKSIZE)
                if len(end) < tarfile.BLOCKSIZE or end.count(0) != tarfile.BLOCKSIZE:
                    raise tarfile.ReadError("truncated: no end-of-archive marker")
        except SpaceError:
            raise
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise UserInputError(f"corrupt tar shard {f}: {_one_line(e)}") from None
        samples[f] = len(keys)
    if not exts:
        raise UserInputError(f"no samples in the WebDataset shards {files[0]}{' ...' if len(files) > 1 else ''}")
    return ShardScan(tuple(sorted(exts)), samples)


def _one_line(e: BaseException) -> str:
    return "; ".join(part.strip(" -") for part in str(e).splitlines() if part.strip(" -")) or type(e).__name__


def wds_schema(extensions: Iterable[str], text_exts: Iterable[str] = TEXT_EXTS, key_field: str = "key",
               types: dict[str, pa.DataType] | None = None) -> tuple[pa.Schema, list[str]]:
    """The dataset schema of samples with these extensions, and its record fields.

    ``types`` (from an export's field types file) gives extensions their Arrow type.
    """
    types = types or {}
    text = set(text_exts) | set(types)
    exts = sorted(extensions)
    if key_field in exts:
        raise SchemaError(f"the samples have an extension {key_field!r}, which is also the key field; choose another key field")
    fields = [pa.field(key_field, pa.string(), nullable=False)]
    fields += [pa.field(e, types.get(e, pa.string()) if e in text else pa.binary()) for e in exts]
    return pa.schema(fields), [e for e in exts if e not in text]


def read_shard(path: str, schema: pa.Schema, key_field: str = "key",
               on_samples: Callable[[int], None] | None = None) -> Iterator[pa.Table]:
    """The samples of one shard as tables of ``schema`` (a top-level function, so Ray
    tasks can run it). Binary fields take a file's bytes; any other field its UTF-8
    text, cast to the field's type (``cls`` files into an int64 field, say)."""
    from webdataset.tariterators import tarfile_samples

    cols: dict[str, list[Any]] = {n: [] for n in schema.names}
    size = 0
    try:
        for sample in tarfile_samples([{"url": path}]):
            unknown = [k for k in sample if not k.startswith("__") and k not in cols]
            if unknown:
                raise SchemaError(f"schema clash: sample {sample['__key__']!r} of {path} has extensions "
                                  f"{unknown} that the dataset has no field for")
            cols[key_field].append(sample["__key__"].encode())
            for n in schema.names:
                if n != key_field:
                    v = sample.get(n)
                    size += len(v) if v is not None else 0
                    cols[n].append(v)
            if len(cols[key_field]) >= BATCH_SAMPLES or size >= BATCH_BYTES:
                yield _samples_table(cols, schema, path)
                if on_samples:
                    on_samples(len(cols[key_field]))
                cols, size = {n: [] for n in schema.names}, 0
    except SpaceError:
        raise
    except Exception as e:  # tarfile, gzip and webdataset raise many kinds
        raise UserInputError(f"corrupt tar shard {path}: {_one_line(e)}") from None
    if cols[key_field]:
        yield _samples_table(cols, schema, path)
        if on_samples:
            on_samples(len(cols[key_field]))


def _samples_table(cols: dict[str, list[Any]], schema: pa.Schema, path: str) -> pa.Table:
    arrays = []
    for field in schema:
        t = field.type.storage_type if isinstance(field.type, pa.ExtensionType) else field.type
        raw = pa.array(cols[field.name], pa.binary())
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            arrays.append(raw.cast(t))
            continue
        try:
            text = raw.cast(pa.string())  # validates UTF-8
            arrays.append(text if t == pa.string() else pc.utf8_trim_whitespace(text).cast(t))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
            raise SchemaError(f"{path}: the .{field.name} files do not convert to {t}: {_one_line(e)}") from None
    return pa.Table.from_arrays(arrays, names=schema.names)


def rechunk_shard(path: str, schema: pa.Schema, key_field: str = "key",
                  on_samples: Callable[[int], None] | None = None) -> Iterator[pa.Table]:
    """One ingestion source: a shard's samples in tables of engine-friendly size."""
    return rechunk(read_shard(path, schema, key_field, on_samples))


def import_webdataset(src: str | Sequence[str], location: str, text_exts: Iterable[str] = TEXT_EXTS,
                      key_field: str = "key", ray: bool = False, max_parallelism: int = 4, *,
                      branch: str | None = None, message: str | None = None, mode: str = "insert") -> ImportResult:
    """Ingest WebDataset shards into the dataset at ``location`` (created if absent) in
    parallel, one shard per worker, all in one snapshot.

    With ``ray=True`` the shards are read by Ray tasks (``ds.ray(...).append_from``).
    ``branch``: the branch written (default main); ``message``: a note kept with the snapshot.
    ``mode``: into an existing dataset, ``insert`` (the default) refuses samples whose
    key is already stored, so a repeated import fails instead of doubling the rows, and
    ``upsert`` replaces them (both read the shards in turn, keys checked at commit);
    ``append`` adds them unchecked, in parallel.
    """
    check_mode(mode)
    files = shard_files(src)
    scan = scan_shards(files)
    total = sum(scan.samples.values())
    if fmt.is_dataset(str(location)):
        schema = open_dataset(location).schema  # the dataset decides which extensions are text
        _check_extensions(schema, scan.extensions, key_field, files[0])
        record_fields: list[str] = []
    else:
        schema, record_fields = wds_schema(scan.extensions, text_exts, key_field, exported_types(files))
    with import_target(location, schema, [key_field], record_fields, f"WebDataset {files[0]}") as (ds, created):
        on_branch(ds, branch)
        with progress(total, f"import {os.path.basename(ds.location)}", unit="sample") as bar:
            if not created and mode != "append":
                tables = (t for f in files for t in read_shard(f, ds.schema, key_field, bar.update))
                result = write_rows(ds, tables, mode, branch, message)
            elif ray:
                sources = [partial(rechunk_shard, f, ds.schema, key_field) for f in files]
                try:
                    result = ds.ray(RayOptions(max_parallelism=max_parallelism)).append_from(sources, message=message)
                except Exception as e:
                    # A task's error arrives wrapped with its remote traceback: report the cause.
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, SpaceError):
                        raise cause from None
                    raise
                bar.update(total)
            else:
                sources = [partial(rechunk_shard, f, ds.schema, key_field, bar.update) for f in files]
                result = ds.local().append_from(sources, max_workers=max_parallelism, message=message)
    return ImportResult(ds.location, result.snapshot_id, total if result.snapshot_id is not None else 0, created)


def exported_types(files: Sequence[str]) -> dict[str, pa.DataType]:
    """The field types an export wrote beside these shards (empty if there is no such file)."""
    path = os.path.join(os.path.dirname(os.path.abspath(files[0])), FIELD_TYPES_FILE)
    try:
        with open(path) as f:
            doc = json.load(f)
        return {name: pa.type_for_alias(alias) for name, alias in doc["fields"].items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserInputError(f"unreadable {path}: {e}") from None


def _check_extensions(schema: pa.Schema, exts: Sequence[str], key_field: str, source: str) -> None:
    if key_field not in schema.names:
        raise SchemaError(f"schema clash: the dataset has no key field {key_field!r} (fields: {schema.names})")
    unknown = [e for e in exts if e not in schema.names]
    if unknown:
        raise SchemaError(f"schema clash: WebDataset {source} has extensions {unknown} that the dataset has no field for")


# -- export --------------------------------------------------------------------
def sample_key(row: dict[str, Any], keys: Sequence[str]) -> str:
    """A WebDataset ``__key__`` for a row: its primary key, with no ``.`` in the last
    path segment (WebDataset splits the extension at the first dot).

    A single string key keeps its ``/`` as folders (``train/000123``), but every
    segment is made safe to extract: ``%``, control characters and a leading ``.`` are
    percent-encoded, an empty segment is ``%00``. So ``../../etc/x`` becomes
    ``%2E./%2E./etc/x``: a key can never name a member outside the directory the tar
    is unpacked in (no absolute name, no ``.``/``..``/empty component).
    """
    if len(keys) == 1:
        segments = [_member_segment(s) for s in str(row[keys[0]]).split("/")]
    else:
        segments = [key_name([row[k] for k in keys])]  # the mount's rows/ name: "," inside a value is %2C
    segments[-1] = segments[-1].replace(".", "%2E")
    key = "/".join(segments)
    check_member_name(key)  # by construction; kept as the last word before a write
    return key


def _member_segment(seg: str) -> str:
    out = []
    for i, ch in enumerate(seg):
        if ch == "%" or ord(ch) < 0x20 or ord(ch) == 0x7F or (i == 0 and ch == "."):
            out.append("".join(f"%{b:02X}" for b in ch.encode()))
        else:
            out.append(ch)
    return "".join(out) or "%00"


def check_member_name(name: str, shard: str | None = None) -> None:
    """Refuse a tar member name that would land outside the directory it is unpacked
    in: absolute, a ``..`` component, or a NUL. (``.`` and empty components, as in
    ``./000123.jpg`` from ``tar cf x.tar .``, are harmless and allowed.)"""
    parts = name.split("/")
    if name.startswith("/") or ".." in parts or "\0" in name:
        where = f" in {shard}" if shard else ""
        raise UserInputError(f"unsafe tar member name {name!r}{where}: absolute or with a '..' component")



def _file_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str).encode()
    return str(value).encode()


def export_webdataset(location: str, dest: str, version: int | str | None = None,
                      samples_per_shard: int = 10_000, fields: Sequence[str] | None = None) -> list[str]:
    """Write a version as WebDataset shards ``dest/shard-NNNNNN.tar``: one sample per row,
    keyed by its primary key, one file per other field named by the field.

    ``dest/spacefs-fields.json`` records the types of the fields written as text, so
    ``import_webdataset`` of ``dest`` keeps them typed index fields."""
    import webdataset as wds

    ds = open_dataset(location)
    keys = ds.primary_keys
    single = len(keys) == 1
    names = [n for n in (fields or ds.schema.names) if not (single and n == keys[0])]
    read_fields = list(dict.fromkeys(keys + names))
    sid = ds.snapshot_id(version)
    with output_dir(dest) as staging, progress(ds.num_rows(sid), f"export {ds.name}", unit="sample") as bar:
        with wds.ShardWriter(os.path.join(staging, "shard-%06d.tar"), maxcount=samples_per_shard,
                             encoder=False, verbose=0, mtime=0) as sink:
            for t in ds.local().read(version=sid, fields=read_fields):
                for row in t.to_pylist():
                    sample = {"__key__": sample_key(row, keys)}
                    sample.update({n: _file_bytes(row[n]) for n in names if row[n] is not None})
                    sink.write(sample)
                    bar.update(1)
        text = {n: str(ds.schema.field(n).type) for n in names
                if any(is_type(ds.schema.field(n).type) for is_type in _TEXT_TYPES)}
        with open(os.path.join(staging, FIELD_TYPES_FILE), "w") as f:
            json.dump({"fields": text}, f, indent=1)
        shards = sorted(n for n in os.listdir(staging) if n != FIELD_TYPES_FILE)
    return [os.path.join(os.path.abspath(dest), s) for s in shards]
