"""Row and dataset removal: ``spacefs delete DATASET --where PRED`` and ``spacefs rm DATASET``.

``delete`` is an ordinary write (one snapshot; older versions keep the rows). ``rm``
removes a whole dataset directory and every version in it, so it asks first on a
terminal and needs ``--yes`` anywhere else.
"""

from __future__ import annotations

import os
import shutil
import sys

import click

from spacefs.cli import main, note
from spacefs.cli.engine_cmds import open_dataset
from spacefs.engine.catalog import remove_from_bucket
from spacefs.engine.errors import UserInputError


@main.command("delete", short_help="Delete the rows matching a predicate (one snapshot).")
@click.argument("dataset", type=click.Path(file_okay=False))
@click.option("--where", "where", required=True, metavar="PRED",
              help="SQL predicate of the rows to delete, like \"label = 'cat'\" or \"id IN (1, 2)\".")
@click.option("-b", "--branch", default=None, metavar="BRANCH", help="Branch to write (default: main).")
@click.option("-m", "--message", default=None, help="A note kept with the snapshot (spacefs log shows it).")
def delete_cmd(dataset: str, where: str, branch: str | None, message: str | None) -> None:
    """Delete the rows of DATASET matching --where, in one snapshot (older versions keep them)."""
    ds = open_dataset(dataset)
    if branch is not None:
        ds.set_current_branch(branch)
    before = ds.num_rows()
    result = ds.local().delete(where, message=message)
    if result.snapshot_id is None:
        note(f"no rows match {where!r}; {ds.name} unchanged")
    else:
        note(f"deleted {before - ds.num_rows()} rows from {ds.name} on {ds.current_branch} (snapshot {result.snapshot_id})")


@main.command("rm", short_help="Remove a dataset directory with all its versions.")
@click.argument("dataset", type=click.Path(file_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Do not ask (needed when stdin is not a terminal).")
def rm_cmd(dataset: str, yes: bool) -> None:
    """Remove DATASET (a dataset or materialized view directory) and every version in it.

    This cannot be undone. On a terminal it asks first; elsewhere it needs --yes.
    """
    ds = open_dataset(dataset)  # refuses anything that is not a dataset
    if not yes:
        if not sys.stdin.isatty():
            raise UserInputError(f"rm: removing {ds.location} cannot be undone; pass --yes to confirm")
        click.confirm(f"remove dataset {ds.location} and all its {ds.storage.head().last_snapshot_id + 1} "
                      "snapshots?", abort=True)
    if ds.storage.remote:
        remove_from_bucket(ds.storage.backend)
        note(f"removed {ds.location}")
        return
    # Renamed away first, so a crash mid-way never leaves a half-deleted dataset in place.
    trash = os.path.join(os.path.dirname(ds.location), f".{ds.name}.deleting-{os.getpid()}")
    os.rename(ds.location, trash)
    shutil.rmtree(trash)
    note(f"removed {ds.location}")
