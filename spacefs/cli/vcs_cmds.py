"""Version-control and storage commands: merge, restore, expire, compact.

DATASET is a dataset directory; versions are snapshot ids, tags or branch names.
"""

from __future__ import annotations

import click

from spacefs.cli import main
from spacefs.cli.engine_cmds import human_bytes, open_dataset
from spacefs.engine.types import JobResult


def _say(what: str, res: JobResult) -> None:
    if res.state == JobResult.State.SKIPPED:
        click.echo(f"{what}: nothing to do")
        return
    rows = res.storage_statistics_update.get("rows", 0)
    extra = " (fast-forward)" if res.fast_forward else ""
    click.echo(f"{what}: snapshot {res.snapshot_id}{extra}, rows {rows:+d}")


@main.command("merge", short_help="Merge a branch (or tag, or snapshot) into a branch.")
@click.argument("dataset", type=click.Path(file_okay=False))
@click.argument("source")
@click.option("--into", default=None, help="Branch to merge into (default: main).")
@click.option("--on-conflict", "on_conflict", type=click.Choice(["fail", "ours", "theirs"]), default="fail",
              show_default=True, help="What to do with keys changed differently on both sides.")
def merge_cmd(dataset: str, source: str, into: str | None, on_conflict: str) -> None:
    """Bring the rows SOURCE changed since the merge base into a branch, by primary key.

    Fast-forwards when the branch has no changes of its own. On a conflict with
    --on-conflict fail, lists the conflicting keys and changes nothing.
    """
    from spacefs.engine.errors import MergeConflictError

    ds = open_dataset(dataset)
    try:
        res = ds.merge(source, into=into, on_conflict=on_conflict)
    except MergeConflictError as e:
        keys = e.keys.to_pylist() if e.keys is not None else []
        for k in keys[:20]:
            click.echo("conflict: " + ", ".join(f"{n}={v!r}" for n, v in k.items()), err=True)
        if len(keys) > 20:
            click.echo(f"... {len(keys) - 20} more conflicting keys", err=True)
        raise
    _say(f"merge {source} into {into or 'main'}", res)


@main.command("restore", short_help="Make a branch's rows those of an older version.")
@click.argument("dataset", type=click.Path(file_okay=False))
@click.argument("version")
@click.option("--branch", "-b", default=None, help="Branch to restore (default: main).")
def restore_cmd(dataset: str, version: str, branch: str | None) -> None:
    """Commit a new snapshot whose rows equal VERSION's; history is kept."""
    ds = open_dataset(dataset)
    _say(f"restore {version}", ds.restore(version, branch=branch))


@main.command("expire", short_help="Drop old unnamed snapshots and their files.")
@click.argument("dataset", type=click.Path(file_okay=False))
@click.option("--older-than", "older_than", required=True, metavar="D",
              help="Age of the snapshots to drop, like 30d, 12h or 0s.")
@click.option("--apply", is_flag=True, help="Expire and remove files (without it, only report).")
def expire_cmd(dataset: str, older_than: str, apply: bool) -> None:
    """Drop snapshots older than D that no tag or branch names, and the files only they
    used. Tagged snapshots, branch heads and merge bases of branches are kept."""
    rep = open_dataset(dataset).expire_snapshots(older_than, apply=apply)
    verb = "expired" if apply else "would expire"
    ids = ", ".join(map(str, rep.snapshot_ids[:30])) + (" ..." if len(rep.snapshot_ids) > 30 else "")
    click.echo(f"{verb} {len(rep.snapshot_ids)} snapshots{': ' + ids if ids else ''}")
    click.echo(f"{'removed' if apply else 'would remove'} {len(rep.files)} files ({human_bytes(rep.bytes)})")
    if not apply and rep.snapshot_ids:
        click.echo("dry run: pass --apply to expire", err=True)


@main.command("compact", short_help="Rewrite a branch's rows into fewer, larger files.")
@click.argument("dataset", type=click.Path(file_okay=False))
@click.option("--branch", "-b", default=None, help="Branch to compact (default: main).")
def compact_cmd(dataset: str, branch: str | None) -> None:
    """One new snapshot with the same rows in fewer files (its diff is empty)."""
    ds = open_dataset(dataset)
    if branch:
        ds.set_current_branch(branch)
    _say("compact", ds.compact())
