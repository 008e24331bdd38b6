"""View commands: ``spacefs refresh MV [--version V] [--ray]``.

MV is a materialized view's directory. The refresh shows progress on a terminal
(rows of the change processed) and prints what it did in one line.
"""

from __future__ import annotations

import os

import click

from spacefs.cli import main
from spacefs.engine.errors import NotFoundError, UserInputError
from spacefs.engine.mv import MaterializedView
from spacefs.engine.options import RayOptions
from spacefs.engine.storage import Storage
from spacefs.engine.types import JobResult


def _version(text: str | None) -> int | str | None:
    if text is None:
        return None
    return int(text) if text.isdigit() else text


@main.command()
@click.argument("mv", metavar="MV")
@click.option("--version", "-v", "version", metavar="V", default=None,
              help="Source version to refresh to: snapshot id, tag or branch (default: the source branch head).")
@click.option("--branch", "-b", default=None, help="Branch of the materialized view to refresh (default: main).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Rows per UDF call.")
@click.option("--ray", "use_ray", is_flag=True, help="Run the UDFs and writes as Ray tasks (local Ray, or RAY_ADDRESS).")
@click.option("--max-parallelism", type=click.IntRange(min=1), default=8, show_default=True,
              help="With --ray: Ray tasks running at once.")
def refresh(mv: str, version: str | None, branch: str | None, batch_size: int | None, use_ray: bool,
            max_parallelism: int) -> None:
    """Bring materialized view MV up to date with its sources, processing only what changed."""
    if not os.path.isdir(mv):
        raise NotFoundError(f"no materialized view directory at {mv}")
    storage = Storage(mv)
    if storage.kind != "mv":
        raise UserInputError(f"{mv} is a dataset, not a materialized view")
    view = MaterializedView(storage)
    if branch:
        view.set_current_branch(branch)
    runner = view.ray(RayOptions(max_parallelism=max_parallelism)) if use_ray else view.local()
    result = runner.refresh(_version(version), batch_size=batch_size)
    marks = ", ".join(f"{s['location']}@{s['snapshot']}" for s in view.reflects())
    if result.state == JobResult.State.SUCCEEDED:
        delta = result.storage_statistics_update.get("rows", 0)
        click.echo(f"{storage.name}: snapshot {result.snapshot_id} ({delta:+d} rows), reflects {marks}")
    else:
        click.echo(f"{storage.name}: no change in its rows, reflects {marks}")
