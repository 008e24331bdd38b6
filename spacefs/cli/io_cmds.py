"""``spacefs import`` and ``spacefs export``: Parquet, folders, WebDataset, HuggingFace.

An import makes one snapshot or none (a failure changes nothing, and a dataset the
import created is removed again); an export writes a new directory that appears only
when complete. Progress bars show on a terminal.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from spacefs.cli import main, note

_MODE = click.option("--mode", type=click.Choice(["append", "insert", "upsert"]), default="insert", show_default=True,
                     help="insert: refuse keys already stored (a repeated import fails, changing nothing); "
                          "upsert: replace them; append: no key check.")
_BRANCH = click.option("-b", "--branch", default=None, metavar="BRANCH",
                       help="Branch to write (default: main); it must exist (spacefs branch).")
_MESSAGE = click.option("-m", "--message", default=None, help="A note kept with the snapshot (spacefs log shows it).")
_KEYS = click.option("-k", "--primary-key", "primary_keys", multiple=True, metavar="FIELD",
                     help="Primary key field (repeat for a composite key); needed when DATASET is new.")
_RECORDS = click.option("-r", "--record-field", "record_fields", multiple=True, metavar="FIELD",
                        help="Binary field stored in ArrayRecord rather than Parquet (repeatable).")
_VERSION = click.option("-v", "--version", "version", default=None, metavar="V",
                        help="Snapshot id, tag or branch to export (default: the main branch head).")
_FIELDS = click.option("-f", "--field", "fields", multiple=True, metavar="FIELD", help="Export only these fields.")


def _keys_hint(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A refused insert says how to go on: the default mode is the cautious one."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from spacefs.engine.errors import PrimaryKeyExistsError

        try:
            return fn(*args, **kwargs)
        except PrimaryKeyExistsError as e:
            raise PrimaryKeyExistsError(f"{e}; nothing was imported (--mode upsert replaces stored rows)") from None

    return wrapper


@main.group(name="import")
def import_group() -> None:
    """Import data into a dataset directory (created if it does not exist), in one snapshot."""


@main.group(name="export")
def export_group() -> None:
    """Export a version of a dataset into a new directory."""


# -- import ----------------------------------------------------------------------
@import_group.command(name="parquet")
@_keys_hint
@click.argument("src", nargs=-1, required=True)
@click.argument("dataset")
@_KEYS
@_RECORDS
@_MODE
@_BRANCH
@_MESSAGE
def import_parquet_cmd(src: tuple[str, ...], dataset: str, primary_keys: tuple[str, ...],
                       record_fields: tuple[str, ...], mode: str, branch: str | None, message: str | None) -> None:
    """Import Parquet files (SRC: files, directories or globs) into DATASET."""
    from spacefs.io.parquet import import_parquet

    note(import_parquet(list(src), dataset, primary_keys, record_fields, mode, branch=branch, message=message).summary())


@import_group.command(name="folder")
@_keys_hint
@click.argument("src")
@click.argument("dataset")
@click.option("--content-field", default="content", show_default=True, help="Name of the field holding file bytes.")
@click.option("--mode", type=click.Choice(["append", "insert", "upsert"]), default="insert", show_default=True,
              help="insert refuses a file already stored; upsert replaces it.")
@click.option("--follow-symlinks", is_flag=True,
              help="Also import files that symlinks point to outside SRC (by default they are skipped).")
@_BRANCH
@_MESSAGE
def import_folder_cmd(src: str, dataset: str, content_field: str, mode: str, follow_symlinks: bool,
                      branch: str | None, message: str | None) -> None:
    """Import a folder in ImageFolder layout (SRC/<class>/<file>) into DATASET.

    Rows are (label, name, content); the dataset's file layout {label}/{name} makes the
    mount show the same tree under files/. Only regular files are read: symlinks out
    of SRC (unless --follow-symlinks), FIFOs, devices and sockets are skipped with a
    warning.
    """
    import logging

    from spacefs.io.folder import import_folder

    # The warnings are printed below, once each, in the CLI's own format.
    logging.getLogger("spacefs.io").addHandler(logging.NullHandler())
    result = import_folder(src, dataset, content_field, mode, follow_symlinks=follow_symlinks, branch=branch,
                           message=message)
    for line in result.skipped:
        click.echo(f"spacefs: warning: skipped {line}", err=True)
    note(result.summary())


@import_group.command(name="webdataset")
@_keys_hint
@click.argument("src", nargs=-1, required=True)
@click.argument("dataset")
@click.option("--text-ext", multiple=True, metavar="EXT",
              help="Also store this extension as a string index field (txt, cls, json... already are).")
@click.option("--key-field", default="key", show_default=True, help="Field holding each sample's __key__.")
@click.option("--ray", "use_ray", is_flag=True, help="Read the shards in Ray tasks (starts a local Ray if none).")
@click.option("-j", "--parallelism", default=4, show_default=True, type=click.IntRange(1, 256),
              help="Shards read at once.")
@_MODE
@_BRANCH
@_MESSAGE
def import_webdataset_cmd(src: tuple[str, ...], dataset: str, text_ext: tuple[str, ...], key_field: str,
                          use_ray: bool, parallelism: int, mode: str, branch: str | None, message: str | None) -> None:
    """Import WebDataset tar shards (SRC: files, directories, globs or {000..009} patterns).

    Each sample becomes a row keyed by its __key__; each extension a field. Into an
    existing dataset, --mode insert and upsert read the shards in turn (--ray and -j
    apply to new datasets and --mode append).
    """
    from spacefs.io.webdataset import TEXT_EXTS, import_webdataset

    exts = set(TEXT_EXTS) | {e.lstrip(".").lower() for e in text_ext}
    note(import_webdataset(list(src), dataset, exts, key_field, use_ray, parallelism, branch=branch,
                           message=message, mode=mode).summary())


@import_group.command(name="hf")
@_keys_hint
@click.argument("src")
@click.argument("dataset")
@_KEYS
@_RECORDS
@click.option("--split", default=None, help="Split to import when SRC holds a DatasetDict.")
@_MODE
@_BRANCH
@_MESSAGE
def import_hf_cmd(src: str, dataset: str, primary_keys: tuple[str, ...], record_fields: tuple[str, ...],
                  split: str | None, mode: str, branch: str | None, message: str | None) -> None:
    """Import a HuggingFace dataset saved with save_to_disk (SRC) into DATASET."""
    from spacefs.io.huggingface import import_hf

    note(import_hf(src, dataset, primary_keys, record_fields, split=split, mode=mode, branch=branch,
                   message=message).summary())


# -- export ----------------------------------------------------------------------
@export_group.command(name="parquet")
@click.argument("dataset")
@click.argument("dest")
@_VERSION
@_FIELDS
@click.option("--rows-per-file", default=1_000_000, show_default=True, type=click.IntRange(1))
def export_parquet_cmd(dataset: str, dest: str, version: str | None, fields: tuple[str, ...],
                       rows_per_file: int) -> None:
    """Export a version as Parquet files with record bytes inline."""
    from spacefs.io.parquet import export_parquet

    files = export_parquet(dataset, dest, version, list(fields) or None, rows_per_file)
    note(f"exported {len(files)} Parquet file(s) to {dest}")


@export_group.command(name="folder")
@click.argument("dataset")
@click.argument("dest")
@_VERSION
@click.option("--path", "path", default=None, metavar="TEMPLATE",
              help="File path per row, like '{label}/{name}' (default: the dataset's file layout).")
@click.option("--content", default=None, metavar="FIELD", help="Field written as each file's bytes.")
def export_folder_cmd(dataset: str, dest: str, version: str | None, path: str | None, content: str | None) -> None:
    """Export a version as a folder tree, one file per row (the mount's files/ tree)."""
    from spacefs.io.folder import export_folder

    n = export_folder(dataset, dest, version, path, content)
    note(f"exported {n} files to {dest}")


@export_group.command(name="webdataset")
@click.argument("dataset")
@click.argument("dest")
@_VERSION
@_FIELDS
@click.option("--samples-per-shard", default=10_000, show_default=True, type=click.IntRange(1))
def export_webdataset_cmd(dataset: str, dest: str, version: str | None, fields: tuple[str, ...],
                          samples_per_shard: int) -> None:
    """Export a version as WebDataset tar shards, one sample per row.

    Keys become member names that cannot leave the directory a shard is unpacked in:
    an empty segment, a segment's leading '.', '%' and control characters are
    percent-encoded.
    """
    from spacefs.io.webdataset import export_webdataset

    shards = export_webdataset(dataset, dest, version, samples_per_shard, list(fields) or None)
    note(f"exported {len(shards)} shard(s) to {dest}")


@export_group.command(name="hf")
@click.argument("dataset")
@click.argument("dest")
@_VERSION
@_FIELDS
def export_hf_cmd(dataset: str, dest: str, version: str | None, fields: tuple[str, ...]) -> None:
    """Export a version as a HuggingFace dataset (save_to_disk format), record bytes inline."""
    from spacefs.io.huggingface import export_hf

    n = export_hf(dataset, dest, version, list(fields) or None)
    note(f"exported {n} rows to {dest}")
