"""The ``spacefs`` command line: git-like subcommands, one module per group.

User errors (every ``SpaceError``, bad arguments) print one line and exit non-zero;
tracebacks are kept for bugs.
"""

from __future__ import annotations

import sys

import click

from spacefs.engine.errors import AlreadyExistsError, NotFoundError, SpaceError, UserInputError

EXIT_USER = 2
EXIT_NOT_FOUND = 3
EXIT_ERROR = 1


class SpaceGroup(click.Group):
    """Maps spacefs errors to one clear line and an exit code."""

    def main(self, *args, **kwargs):
        # Usage mistakes caught by click are user errors too: one line, no usage dump.
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help() if e.ctx else str(e))
            sys.exit(EXIT_USER)
        except click.ClickException as e:
            hint = ""
            ctx = getattr(e, "ctx", None)
            if ctx is not None:
                hint = f" (see '{ctx.command_path} --help')"
            click.echo(f"spacefs: error: {e.format_message()}{hint}", err=True)
            sys.exit(EXIT_USER if e.exit_code == 2 else e.exit_code)
        except click.exceptions.Abort:
            click.echo("spacefs: aborted", err=True)
            sys.exit(EXIT_ERROR)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except NotFoundError as e:
            click.echo(f"spacefs: error: {e}", err=True)
            sys.exit(EXIT_NOT_FOUND)
        except (UserInputError, AlreadyExistsError, FileExistsError) as e:
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

    for mod in ("engine_cmds", "mount_cmds", "view_cmds", "io_cmds", "vcs_cmds"):
        try:
            importlib.import_module(f"spacefs.cli.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"spacefs.cli.{mod}":
                raise


_register()
