"""The ``spacefs`` command line: git-like subcommands, one module per group.

User errors (every ``SpaceError``, bad arguments) print one line and exit non-zero;
tracebacks are kept for bugs.
"""

from __future__ import annotations

import sys

import click

from spacefs.engine.errors import NotFoundError, SpaceError, UserInputError

EXIT_USER = 2
EXIT_NOT_FOUND = 3
EXIT_ERROR = 1


class SpaceGroup(click.Group):
    """Maps spacefs errors to one clear line and an exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except NotFoundError as e:
            click.echo(f"spacefs: error: {e}", err=True)
            sys.exit(EXIT_NOT_FOUND)
        except (UserInputError, FileExistsError) as e:
            click.echo(f"spacefs: error: {e}", err=True)
            sys.exit(EXIT_USER)
        except SpaceError as e:
            click.echo(f"spacefs: error: {e}", err=True)
            sys.exit(EXIT_ERROR)
        except OSError as e:
            click.echo(f"spacefs: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), err=True)
            sys.exit(EXIT_ERROR)


@click.group(cls=SpaceGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="spacefs")
def main() -> None:
    """spacefs: versioned datasets for ML, stored as Parquet + ArrayRecord, mountable as files."""


def _register() -> None:
    import importlib

    for mod in ("engine_cmds", "mount_cmds", "view_cmds", "io_cmds"):
        try:
            importlib.import_module(f"spacefs.cli.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"spacefs.cli.{mod}":
                raise


_register()
