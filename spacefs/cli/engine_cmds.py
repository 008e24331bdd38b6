"""Engine commands: ls, log, tag, branch, diff, sql, vacuum, info.

DATASET arguments are dataset directories. Versions are snapshot ids, tags or branch
names, exactly as the Python API takes them. Every user mistake surfaces as a
``SpaceError`` so the group prints one line and exits non-zero.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import decimal
import itertools
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import click
import pyarrow as pa

from spacefs.cli import echo_json, main, note, quiet
from spacefs.engine import format as fmt
from spacefs.engine.backend import is_remote
from spacefs.engine.catalog import DirCatalog
from spacefs.engine.dataset import Dataset
from spacefs.engine.errors import NotFoundError, UserInputError
from spacefs.engine.layout import name_collisions
from spacefs.engine.retention import expired
from spacefs.engine.storage import DEFAULT_BRANCH, Storage

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_CELL_WIDTH = 48


# -- helpers -------------------------------------------------------------------
def open_storage(path: str) -> Storage:
    """The dataset at directory ``path`` (a NotFoundError naming it if there is none), or
    at ``s3://bucket/prefix`` (set up by the standard AWS variables)."""
    if is_remote(path):
        return Storage(path)
    if not os.path.isdir(path):
        raise NotFoundError(f"no dataset directory at {path}")
    return Storage(path)


def open_dataset(path: str) -> Dataset:
    # A plain handle works for datasets and materialized views alike (refs, versions).
    return Dataset(open_storage(path))


def parse_duration(text: str) -> timedelta:
    """``7d``, ``12h``, ``30m``, ``0s``, ``1w``, or sums like ``1d12h``."""
    s = text.strip().lower()
    parts = _DURATION.findall(s)
    if not s or "".join(n + u for n, u in parts) != s:
        raise UserInputError(f"bad duration {text!r}: use a number and a unit (s, m, h, d, w), like 7d, 12h, 30m or 0s")
    return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def short_time(iso: str) -> str:
    t = dt.datetime.fromisoformat(iso)
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def ref_names(storage: Storage) -> dict[int, list[str]]:
    """Snapshot id -> decorations in git's style: branches by name, then ``tag: x``."""
    head = storage.head()
    names: dict[int, list[str]] = {}
    for b in sorted(head.branches, key=lambda x: (x != DEFAULT_BRANCH, x)):
        names.setdefault(head.branches[b], []).append(b)
    for t in sorted(head.tags):
        names.setdefault(head.tags[t], []).append(f"tag: {t}")
    return names


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Sequence[bool] | None = None) -> None:
    """Columns aligned to their widest cell; ``right`` marks numeric columns."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    right = right or [False] * len(headers)

    def line(r: Sequence[str]) -> str:
        out = [c.rjust(w) if rj else c.ljust(w) for c, w, rj in zip(r, widths, right, strict=True)]
        return "  ".join(out).rstrip()

    click.echo(line(list(headers)))
    for r in cells:
        click.echo(line(r))


def plain(value: Any) -> Any:
    """A JSON-ready form of an Arrow cell value (bytes as base64)."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (dt.timedelta, decimal.Decimal)):
        return str(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def show(value: Any, record: bool = False) -> str:
    """One cell for humans: record references as their size, long text cut."""
    if value is None:
        return "NULL"
    if record and isinstance(value, dict) and "size" in value:
        return f"<{value['size']} bytes>"
    if isinstance(value, bytes):
        text = f"<{len(value)} bytes>"
    elif isinstance(value, (dict, list)):
        text = json.dumps(plain(value), ensure_ascii=False)
    else:
        text = str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= _CELL_WIDTH else text[: _CELL_WIDTH - 1] + "…"


def progress(iterable: Iterable, total: int | None, desc: str):
    """A tqdm bar on a terminal, nothing otherwise."""
    if not sys.stderr.isatty() or quiet():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)


# -- ls --------------------------------------------------------------------------
@main.command("ls", short_help="List the datasets of a catalog.")
@click.argument("catalog", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of objects, for programs.")
def ls_cmd(catalog: str, as_json: bool) -> None:
    """List the datasets of CATALOG: kind, rows on main, latest snapshot, last change."""
    if is_remote(catalog):
        cat = DirCatalog(catalog)
        paths = [catalog] if cat.backend.exists(fmt.log_entry(0)) else [i.location for i in cat.datasets()]
    elif not os.path.isdir(catalog):
        raise NotFoundError(f"no catalog directory at {catalog}")
    elif fmt.is_dataset(catalog):
        paths = [catalog]  # a dataset directory lists itself
    else:
        paths = [os.path.join(catalog, n) for n in fmt.datasets_in(catalog)]
    if not paths:
        if as_json:
            echo_json([])
        elif not quiet():
            click.echo(f"no datasets in {catalog}", err=True)
        return
    rows = []
    for path in progress(paths, len(paths), "datasets"):
        name = path.rstrip("/").rsplit("/", 1)[-1] if is_remote(path) else os.path.basename(os.path.abspath(path))
        try:
            st = Storage(path)
            head = st.head()
            snap = st.snapshot(head.last_snapshot_id)
            main_rows = st.snapshot(head.branches[DEFAULT_BRANCH])["stats"]["rows"] if DEFAULT_BRANCH in head.branches else "-"
            rows.append([name, st.kind, main_rows, head.last_snapshot_id, short_time(snap["time"])])
        except Exception as e:  # one broken dataset must not hide the others
            rows.append([name, "broken", "-", "-", f"{type(e).__name__}: {e}"])
    if as_json:
        echo_json([dict(zip(("name", "kind", "rows", "snapshot", "updated"), r, strict=True)) for r in rows])
        return
    print_table(["NAME", "KIND", "ROWS", "SNAPSHOT", "UPDATED"], rows, [False, False, True, True, False])


# -- log -------------------------------------------------------------------------
@main.command("log", short_help="Show the snapshots of a dataset, newest first.")
@click.argument("dataset", type=click.Path(file_okay=False))
@click.option("--branch", "-b", default=None, help="Only the ancestry of this branch (or tag, or snapshot).")
@click.option("--limit", "-n", type=click.IntRange(min=1), default=None, help="Show at most this many snapshots.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of snapshots, for programs.")
def log_cmd(dataset: str, branch: str | None, limit: int | None, as_json: bool) -> None:
    """Show the snapshots of DATASET, newest first, with their branches and tags.

    Each line: snapshot id, time (UTC), operation, rows after it and the change in rows,
    then its branches and tags in git's decoration style. A snapshot whose parent is
    not the one just before it says where it branched from; a snapshot written with a
    message (-m) ends with it in quotes.
    """
    st = open_storage(dataset)
    head = st.head()
    if branch is not None:
        ids: list[int] = []
        sid: int | None = st.resolve(branch, DEFAULT_BRANCH, head)
        while sid is not None and (limit is None or len(ids) < limit):
            ids.append(sid)
            sid = st.snapshot(sid)["parent"]
    else:
        last = head.last_snapshot_id
        ids = list(range(last, max(-1, last - limit) if limit else -1, -1))
    gone = expired(head)
    ids = [sid for sid in ids if sid not in gone]
    names = ref_names(st)
    width = len(str(ids[0])) if ids else 1
    docs = []
    for sid in progress(ids, len(ids), "snapshots"):
        snap = st.snapshot(sid)
        rows = snap["stats"]["rows"]
        parent = snap["parent"]
        change = rows - st.snapshot(parent)["stats"]["rows"] if parent is not None else rows
        if as_json:
            docs.append({"snapshot": sid, "time": snap["time"], "op": snap["op"], "rows": rows, "change": change,
                         "parent": parent, "branch": snap.get("branch"), "refs": names.get(sid, []),
                         "message": snap.get("message")})
            continue
        line = f"{sid:>{width}}  {short_time(snap['time'])}  {snap['op']:<14} {rows:>10} rows ({change:+d})"
        if parent is not None and parent != sid - 1:
            line += f"  from {parent}"
        if sid in names:
            line += "  (" + ", ".join(names[sid]) + ")"
        if snap.get("message"):
            line += "  " + json.dumps(snap["message"], ensure_ascii=False)
        click.echo(line)
    if as_json:
        echo_json(docs)


# -- tag / branch ----------------------------------------------------------------
@main.command("tag", short_help="Create, delete or list tags.")
@click.argument("dataset", type=click.Path(file_okay=False))
@click.argument("tag", required=False)
@click.option("--version", "-v", "version", default=None, help="Snapshot id, tag or branch to tag (default: main's head).")
@click.option("--delete", "-d", is_flag=True, help="Remove TAG instead of creating it.")
@click.option("--json", "as_json", is_flag=True, help="With no TAG: print the tags as JSON, for programs.")
def tag_cmd(dataset: str, tag: str | None, version: str | None, delete: bool, as_json: bool) -> None:
    """Create (or with --delete remove) TAG on DATASET; without TAG, list tags."""
    ds = open_dataset(dataset)
    if tag is None:
        if delete or version is not None:
            raise UserInputError("tag: --delete and --version need a TAG")
        tags = ds.storage.head().tags
        _print_refs("TAG", [(name, tags[name]) for name in sorted(tags)], ds, as_json)
        return
    if delete:
        if version is not None:
            raise UserInputError("tag: --delete takes no --version")
        sid = ds.storage.head().tags.get(tag)
        ds.remove_tag(tag)
        note(f"deleted tag {tag} (was snapshot {sid})")
        return
    ds.add_tag(tag, version)
    note(f"tagged snapshot {ds.storage.head().tags[tag]} as {tag}")


def _print_refs(kind: str, refs: list[tuple[str, int]], ds: Dataset, as_json: bool) -> None:
    """Tags and branches list alike: name, snapshot, rows in it."""
    rows = [[name, sid, ds.storage.snapshot(sid)["stats"]["rows"]] for name, sid in refs]
    if as_json:
        echo_json([{"name": n, "snapshot": s, "rows": r} for n, s, r in rows])
    else:
        print_table([kind, "SNAPSHOT", "ROWS"], rows, [False, True, True])


@main.command("branch", short_help="Create, delete or list branches.")
@click.argument("dataset", type=click.Path(file_okay=False))
@click.argument("branch", required=False)
@click.option("--version", "-v", "--from", "from_", default=None, metavar="V",
              help="Snapshot id, tag or branch to start from (default: main's head); --from is the old name.")
@click.option("--delete", "-d", is_flag=True, help="Remove BRANCH instead of creating it.")
@click.option("--json", "as_json", is_flag=True, help="With no BRANCH: print the branches as JSON, for programs.")
def branch_cmd(dataset: str, branch: str | None, from_: str | None, delete: bool, as_json: bool) -> None:
    """Create (or with --delete remove) BRANCH of DATASET; without BRANCH, list branches."""
    ds = open_dataset(dataset)
    if branch is None:
        if delete or from_ is not None:
            raise UserInputError("branch: --delete and --version need a BRANCH")
        head = ds.storage.head()
        names = sorted(head.branches, key=lambda x: (x != DEFAULT_BRANCH, x))
        _print_refs("BRANCH", [(name, head.branches[name]) for name in names], ds, as_json)
        return
    if delete:
        if from_ is not None:
            raise UserInputError("branch: --delete takes no --version")
        if branch not in ds.storage.head().branches:
            raise NotFoundError(f"{ds.name}: no branch named {branch!r}")
        sid = ds.storage.head().branches[branch]
        ds.remove_branch(branch)
        note(f"deleted branch {branch} (was snapshot {sid})")
        return
    ds.add_branch(branch, from_)
    note(f"created branch {branch} at snapshot {ds.storage.head().branches[branch]}")


# -- diff ------------------------------------------------------------------------
def _row_text(row: dict[str, Any], record_fields: Sequence[str]) -> str:
    return ", ".join(f"{k}={show(v, k in record_fields) if not isinstance(v, str) else repr(v)}" for k, v in row.items())


@main.command("diff", short_help="Show the rows changed between two versions.")
@click.argument("dataset", type=click.Path(file_okay=False))
@click.argument("from_version", metavar="FROM")
@click.argument("to_version", metavar="TO")
@click.option("--limit", "-n", type=click.IntRange(min=0), default=20, show_default=True,
              help="Rows shown per snapshot and change type (0: all).")
@click.option("--summary", "-s", is_flag=True, help="Only count deleted and added rows per snapshot.")
def diff_cmd(dataset: str, from_version: str, to_version: str, limit: int, summary: bool) -> None:
    """Show what changed from FROM to TO: snapshot by snapshot when TO descends from FROM,
    otherwise (other branch, older version) as one change that turns FROM into TO.

    Deleted rows (their keys) print as '-' lines before added rows as '+' lines; record
    fields print as their size.
    """
    from spacefs.engine.diff import diff

    st = open_storage(dataset)
    any_change = False
    for sid, group in itertools.groupby(diff(st, from_version, to_version, reference_read=True),
                                        key=lambda c: c.snapshot_id):
        any_change = True
        snap = st.snapshot(sid)
        total = {"DELETE": 0, "ADD": 0}
        shown = {"DELETE": 0, "ADD": 0}
        if not summary:
            click.echo(f"snapshot {sid}  {short_time(snap['time'])}  {snap['op']}")
        for change in group:
            kind = change.change_type.value
            total[kind] += change.data.num_rows
            if summary or (limit and shown[kind] >= limit):
                continue
            sign = "-" if kind == "DELETE" else "+"
            take = change.data if not limit else change.data.slice(0, limit - shown[kind])
            for row in take.to_pylist():
                click.echo(f"{sign} {_row_text(row, st.record_fields)}")
            shown[kind] += take.num_rows
        counts = f"-{total['DELETE']} +{total['ADD']}"
        if summary:
            click.echo(f"snapshot {sid}  {short_time(snap['time'])}  {snap['op']:<14} {counts}")
        elif sum(total.values()) > sum(shown.values()):
            hidden = sum(total.values()) - sum(shown.values())
            click.echo(f"  ... {hidden} more rows ({counts} in all; --limit 0 shows all)")
    if not any_change:
        click.echo("no changes", err=True)


# -- sql -------------------------------------------------------------------------
def _sql_sources(path: str, version: str | None) -> dict[str, tuple[Dataset, str | None]]:
    """``name -> (dataset, version)`` for a dataset directory or a catalog of them."""
    if is_remote(path):
        cat = DirCatalog(path)
        if cat.backend.exists(fmt.log_entry(0)):
            ds = open_dataset(path)
            return {ds.name: (ds, version)}
        if version is not None:
            raise UserInputError("sql: --version applies to a dataset, not a catalog")
        out = {i.name: (open_dataset(i.location), None) for i in cat.datasets()}
        if not out:
            raise NotFoundError(f"no datasets in {path}")
        return out
    if fmt.is_dataset(path):
        ds = open_dataset(path)
        return {ds.name: (ds, version)}
    if not os.path.isdir(path):
        raise NotFoundError(f"no catalog or dataset directory at {path}")
    if version is not None:
        raise UserInputError("sql: --version applies to a dataset directory, not a catalog")
    out = {}
    for n in fmt.datasets_in(path):
        out[n] = (open_dataset(os.path.join(path, n)), None)
    if not out:
        raise NotFoundError(f"no datasets in {path}")
    return out


def _print_csv(table: pa.Table) -> None:
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(table.column_names)
    for row in table.to_pylist():
        cells = []
        for v in row.values():
            v = plain(v)
            cells.append("" if v is None else json.dumps(v) if isinstance(v, (dict, list)) else v)
        w.writerow(cells)


@main.command("sql", short_help="Run a DuckDB query over datasets.")
@click.argument("path", type=click.Path(file_okay=False))
@click.argument("query")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="table for people; csv and json (an array of objects, bytes as base64) for programs.")
@click.option("--version", "-v", "version", default=None, help="Version of a single dataset to query (default: main).")
def sql_cmd(path: str, query: str, fmt: str, version: str | None) -> None:
    """Run a DuckDB QUERY over PATH, a catalog or a dataset directory.

    Each dataset is a table named after its directory; record fields appear as
    references (file, pos, size, offset).

    \b
    Example:  spacefs sql ./catalog "SELECT label, count(*) FROM images GROUP BY label"
    """
    from spacefs.engine.sql import query_datasets

    table = query_datasets(query, _sql_sources(path, version))
    if fmt == "csv":
        _print_csv(table)
    elif fmt == "json":
        rows = table.to_pylist()
        click.echo("[")
        for i, row in enumerate(rows):
            click.echo(json.dumps(plain(row), ensure_ascii=False) + ("," if i < len(rows) - 1 else ""))
        click.echo("]")
    else:
        print_table(table.column_names, [[show(v) for v in r.values()] for r in table.to_pylist()],
                    [pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) for t in table.schema.types])
        click.echo(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})")


# -- vacuum ----------------------------------------------------------------------
@main.command("vacuum", short_help="Remove files no snapshot references.")
@click.argument("dataset", type=click.Path(file_okay=False))
@click.option("--older-than", "older_than", default="1d", show_default=True, metavar="D",
              help="Retention: only files older than this go (7d, 12h, 30m, 0s).")
@click.option("--apply", is_flag=True, help="Remove the files (without it, only list them).")
def vacuum_cmd(dataset: str, older_than: str, apply: bool) -> None:
    """Remove files no snapshot of DATASET references (left by crashed or losing writers).

    A dry run unless --apply. Files younger than --older-than are kept, since a writer
    may still be about to commit them; every snapshot stays readable either way.
    """
    from spacefs.engine.vacuum import vacuum

    retention = parse_duration(older_than)
    report = vacuum(open_storage(dataset), older_than=retention, apply=apply)
    verb = "removed" if apply else "would remove"
    for rel in report.files:
        click.echo(f"{verb} {rel}")
    summary = f"{verb} {len(report.files)} files, {human_bytes(report.bytes)} ({report.bytes} bytes)"
    if report.kept_recent:
        summary += f"; kept {report.kept_recent} unreferenced files younger than {older_than}"
    if not apply and report.files:
        summary += "; pass --apply to remove them"
    click.echo(summary)


# -- info ------------------------------------------------------------------------
@main.command("info", short_help="Describe a dataset: schema, keys, versions, stats.")
@click.argument("dataset", type=click.Path(file_okay=False))
@click.option("--version", "-v", "version", default=None, help="Snapshot id, tag or branch for the stats (default: main).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, for programs.")
def info_cmd(dataset: str, version: str | None, as_json: bool) -> None:
    """Describe DATASET: schema, keys, record fields, file layout, versions and stats."""
    st = open_storage(dataset)
    head = st.head()
    sid = st.resolve(version, DEFAULT_BRANCH, head)
    stats = st.snapshot(sid)["stats"]
    layout = st.file_layout(sid, head)
    # Names in the mount (and export folder) that more than one row renders: the row
    # written last shows, the others are hidden.
    collisions = name_collisions(st, sid)
    if as_json:
        echo_json({"dataset": st.location, "kind": st.kind, "format": st.meta.get("format"),
                   "created": st.meta["created"], "primary_keys": st.primary_keys,
                   "record_fields": st.record_fields, "file_layout": layout, "colliding_paths": collisions,
                   "schema": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in st.schema],
                   "last_snapshot": head.last_snapshot_id, "branches": head.branches, "tags": head.tags,
                   "snapshot": sid, "stats": stats})
        return
    click.echo(f"dataset:       {st.location}")
    click.echo(f"kind:          {st.kind} ({st.meta.get('format')}, created {short_time(st.meta['created'])})")
    click.echo(f"primary keys:  {', '.join(st.primary_keys)}")
    click.echo(f"record fields: {', '.join(st.record_fields) or '(none)'}")
    click.echo(f"file layout:   {json.dumps(layout) if layout else '(none)'}")
    click.echo("schema:")
    width = max(len(f.name) for f in st.schema)
    for f in st.schema:
        notes = [n for n, on in (("primary key", f.name in st.primary_keys), ("record field", f.name in st.record_fields),
                                 ("not null", not f.nullable)) if on]
        click.echo(f"  {f.name:<{width}}  {f.type}" + (f"  ({', '.join(notes)})" if notes else ""))
    click.echo(f"snapshots:     {head.last_snapshot_id + 1} (latest {head.last_snapshot_id})")
    click.echo("branches:      " + ", ".join(f"{b} -> {s}" for b, s in sorted(head.branches.items(), key=lambda x: (x[0] != DEFAULT_BRANCH, x[0]))))
    click.echo("tags:          " + (", ".join(f"{t} -> {s}" for t, s in sorted(head.tags.items())) or "(none)"))
    click.echo(f"snapshot {sid}:")
    click.echo(f"  rows:         {stats['rows']}")
    click.echo(f"  index files:  {stats['index_files']} ({human_bytes(stats['index_bytes'])})")
    click.echo(f"  record bytes: {human_bytes(stats['record_bytes'])} ({stats['record_bytes']} bytes)")
    click.echo(f"  colliding paths: {collisions['rows']} in rows/, {collisions['files']} in files/"
               + (" (the row written last shows)" if collisions["rows"] or collisions["files"] else ""))
