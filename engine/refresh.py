"""Incremental refresh of a materialized view.

The MV records, per MV snapshot, which snapshot of each source its rows reflect (the
log settings' ``mv`` map: MV snapshot id -> source snapshot ids, in the order of
``view.sources()``; MV snapshot 0 is empty and reflects every source's empty snapshot
0). A refresh:

1. reads the marker of the MV branch head and resolves the target source versions;
   equal means nothing to do (SKIPPED, no commit);
2. asks the view for its ``Delta`` between the two: keys to delete, parts to add. Only
   what changed is read, and UDFs run only on added rows;
3. runs the add parts (locally or as Ray tasks), each writing its rows' index and
   record files into the MV directory;
4. commits once: the deletes are planned against the MV head (only index files holding
   deleted keys are rewritten), and the new marker lands in the *same* log entry.

Killed before step 4 publishes, the MV is at its last committed state with its old
marker (the files written are unreferenced; vacuum removes them), so the next refresh
recomputes the same change and completes it. When the data does not change (a filter
that kept none of the new rows), only the marker moves, by a settings-only entry.
Concurrent refreshes: the commit checks the marker it started from is still the
head's; if not, the refresh starts over from the new state.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from .errors import CommitConflictError, CorruptionError, SnapshotExpiredError, VersionNotFoundError
from .log import Entry
from .options import FileOptions
from .schema import check_batch_size
from .storage import Plan, Version
from .types import JobResult
from .view_delta import Delta, merge_deletes
from .view_parts import Ctx, write_part
from .writes import FileWriter, RowRemover, key_filter, key_mask

MAX_ATTEMPTS = 8
# Parts of a dataset scan run by a refresh hold at most this many rows: memory stays
# flat and progress moves even when a source is one big file.
REFRESH_PART_ROWS = 65_536


class _Stale(Exception):
    """Another refresh moved the MV while this one computed its change."""


def markers(head: Entry) -> dict[str, list[int]]:
    return dict(head.settings.get("mv") or {})


def marker(head: Entry, sid: int, n: int) -> list[int] | None:
    """Source snapshots MV snapshot ``sid`` reflects; None when not recorded."""
    m = markers(head).get(str(sid))
    if m is None:
        return [0] * n if sid == 0 else None
    if len(m) != n:
        raise CorruptionError(f"MV marker of snapshot {sid} names {len(m)} sources, the view has {n}")
    return list(m)


def recorded_sources(head: Entry, sid: int, sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    m = marker(head, sid, len(sources))
    return [{**s, "snapshot": None if m is None else m[i]} for i, s in enumerate(sources)]


def _kept(head: Entry, extra: dict[str, int]) -> set[str]:
    """Markers worth keeping: those of snapshots a branch or tag points at."""
    refs = {**head.branches, **extra}
    return {str(s) for s in list(refs.values()) + list(head.tags.values())}


def refresh(mv: Any, executor: Any, version: Version | dict = None, batch_size: int | None = None,
            file_options: FileOptions | None = None, branch: str = "main") -> JobResult:
    check_batch_size(batch_size)
    view = mv.view
    sources = view.sources()
    keys = [s.key for s in sources]
    st = mv.storage
    for _ in range(MAX_ATTEMPTS):
        head = st.head()
        if branch not in head.branches:
            raise VersionNotFoundError(f"{st.name}: no branch named {branch!r}")
        base = head.branches[branch]
        recorded = marker(head, base, len(sources))
        end = view.resolve_versions(version)
        target = [end[k] for k in keys]
        if recorded == target:
            return JobResult.skipped()
        ctx = Ctx(executor, batch_size, getattr(executor, "part_rows", None) or REFRESH_PART_ROWS)
        rebuild = recorded is None  # rows of unknown provenance: replace them all
        if not rebuild:
            try:
                delta = view._delta(ctx, dict(zip(keys, recorded, strict=True)), end)
            except SnapshotExpiredError:
                rebuild = True  # a source expired the change records we needed: start afresh
        if rebuild:
            delta = Delta(adds=list(view._scan(ctx, end)), from_empty=True)
        deletes = merge_deletes(delta.deletes)

        def removals(b: int, deletes: list[pa.Table] = deletes, rebuild: bool = rebuild) -> Plan:
            return _removals(st, file_options, b, deletes, rebuild)

        # The MV's index rewrites (for deleted keys) overlap with computing and writing the
        # added rows: on the base seen now, which is almost always the one committed on.
        with ThreadPoolExecutor(1) as pool:
            early = pool.submit(removals, base) if deletes or rebuild else None
            try:
                entries, written = _write(executor, delta, st, view, file_options)
            except BaseException:
                if early is not None and early.exception() is None:
                    _cleanup(st, early.result().temp_files)
                raise
        try:
            pre = early.result() if early is not None else Plan()
        except BaseException:
            _cleanup(st, written)
            raise

        def plan(b: int, entries: list = entries, pre: Plan = pre, base: int = base,
                 removals: Any = removals) -> Plan:
            r = pre if b == base else removals(b)
            return Plan(added=list(entries) + r.added, removed=list(r.removed), deleted=r.deleted,
                        temp_files=list(r.temp_files))

        def settings(h: Entry, sid: int | None = None, base: int = base, recorded: Any = recorded,
                     target: list[int] = target) -> dict[str, Any]:
            if h.branches.get(branch) != base or marker(h, base, len(sources)) != recorded:
                raise _Stale()
            sid = h.last_snapshot_id + 1 if sid is None else sid
            keep = _kept(h, {branch: sid})
            new = {k: v for k, v in markers(h).items() if k in keep}
            new[str(sid)] = target
            return {**h.settings, "mv": new}

        try:
            snap = st.commit_snapshot(branch, "refresh", plan, settings)
            if snap is None:
                st.commit_refs(lambda h, b=base: {"settings": settings(h, b)}, "refresh")
        except _Stale:
            _cleanup(st, written + pre.temp_files)
            continue
        except BaseException:
            _cleanup(st, written + pre.temp_files)
            raise
        return JobResult.from_snapshot(st, snap)
    raise CommitConflictError(f"{st.name}: refresh lost to concurrent refreshes {MAX_ATTEMPTS} times")


def _removals(st: Any, file_options: FileOptions | None, base: int, deletes: list[pa.Table], rebuild: bool) -> Plan:
    """What removing the deleted keys (or, for a rebuild, every row) from the MV's
    snapshot ``base`` takes: only the index files holding such rows are rewritten."""
    p = Plan()
    writer = FileWriter(st, file_options)
    try:
        remover = RowRemover(st, writer)
        if rebuild:
            remover.remove(base, None, lambda t: np.ones(t.num_rows, dtype=bool), p, whole_rows=False)
        elif deletes:
            prune = functools.reduce(lambda a, e: a | e, [key_filter(d) for d in deletes])
            cols = sorted({c for d in deletes for c in d.column_names} | set(st.primary_keys))
            remover.remove(base, prune, lambda t: _any_key(t, deletes), p, mask_columns=cols)
    except BaseException:
        writer.cleanup()
        _cleanup(st, p.temp_files)
        raise
    return p


def _any_key(t: pa.Table, deletes: list[pa.Table]) -> np.ndarray:
    mask = np.zeros(t.num_rows, dtype=bool)
    for d in deletes:
        mask |= key_mask(t, d)
    return mask


def _write(executor: Any, delta: Delta, st: Any, view: Any, file_options: FileOptions | None) -> tuple[list, list[str]]:
    """Run the add parts, each writing its rows into the MV; (manifest entries, files)."""
    from tqdm.auto import tqdm

    fn = functools.partial(write_part, location=st.location, file_options=file_options, roots=view.ref_roots,
                           schema=view.schema)
    total = sum(p.rows or 0 for p in delta.adds)
    entries: list[dict[str, Any]] = []
    written: list[str] = []
    with tqdm(total=total or None, unit="rows", unit_scale=True, desc=f"refresh {st.name}", disable=None,
              leave=False) as bar:
        try:
            for e, w, _rows, read in executor.stream(fn, delta.adds):
                entries += e
                written += w
                bar.update(read)
        except BaseException:
            _cleanup(st, written)
            raise
    return entries, written


def _cleanup(st: Any, written: list[str]) -> None:
    st.files.remove(written)
