"""The ``spacefs`` command line: git-like subcommands, one module per group.

User errors (every ``SpaceError``, bad arguments) print one line and exit non-zero;
tracebacks are kept for bugs (and shown for every error with ``--verbose``).

Conventions every command follows: ``-v/--version V`` picks a version to read,
``-b/--branch B`` the branch to write or read, ``--where PRED`` a SQL predicate,
``-m/--message`` a note kept with the snapshot a write makes, ``--json`` output for
programs on listing commands; confirmations go to stdout unless ``--quiet``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import click

from spacefs.engine.errors import AlreadyExistsError, NotFoundError, SpaceError, UserInputError

EXIT_USER = 2
EXIT_NOT_FOUND = 3
EXIT_ERROR = 1
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a reader that went away

EXIT_CODES = """\b
Exit codes:
  0    success
  1    failed: a conflict with stored data (a key already stored, a lost commit),
       corruption, or an I/O error
  2    user error: bad arguments or options, bad input data, something already exists
  3    not found: no such dataset, catalog, version, tag or branch
  141  the reader of the output went away (as in 'spacefs sql ... | head')
"""

QUIET_ENV = "SPACEFS_QUIET"  # set by --quiet: the progress bars of every module read it


def quiet() -> bool:
    """Whether --quiet was given: confirmations and progress bars are not shown."""
    return os.environ.get(QUIET_ENV) == "1"


def note(message: str) -> None:
    """Print a confirmation (what a command did) unless --quiet."""
    if not quiet():
        click.echo(message)


def echo_json(value: Any) -> None:
    """``--json`` output: one JSON document on stdout."""
    click.echo(json.dumps(value, ensure_ascii=False, indent=2, default=str))


def _fail(message: str, code: int) -> None:
    if logging.getLogger().isEnabledFor(logging.INFO):
        import traceback

        traceback.print_exc()
    click.echo(f"spacefs: error: {message}", err=True)
    sys.exit(code)


def _broken_pipe() -> None:
    # Point stdout at /dev/null so the interpreter's final flush does not fail again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(EXIT_BROKEN_PIPE)


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
            try:
                return super().invoke(ctx)
            finally:
                sys.stdout.flush()  # a closed pipe surfaces here, inside the handlers below
        except BrokenPipeError:
            _broken_pipe()
        except NotFoundError as e:
            _fail(str(e), EXIT_NOT_FOUND)
        except (UserInputError, AlreadyExistsError, FileExistsError) as e:
            _fail(str(e), EXIT_USER)
        except SpaceError as e:
            _fail(str(e), EXIT_ERROR)
        except OSError as e:
            _fail(f"{e.strerror or e}: {e.filename or ''}".rstrip(": "), EXIT_ERROR)


@click.group(cls=SpaceGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.version_option(package_name="spacefs")
@click.option("--verbose", is_flag=True, help="Log what happens (and show tracebacks of errors) on stderr.")
@click.option("--quiet", "-q", is_flag=True, help="Print only results and errors: no confirmations, no progress bars.")
def main(verbose: bool, quiet: bool) -> None:
    """spacefs: versioned datasets for ML, stored as Parquet + ArrayRecord, mountable as files."""
    if quiet:
        os.environ[QUIET_ENV] = "1"
    if verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _register() -> None:
    import importlib

    for mod in ("engine_cmds", "mount_cmds", "view_cmds", "io_cmds", "write_cmds", "vcs_cmds"):
        try:
            importlib.import_module(f"spacefs.cli.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"spacefs.cli.{mod}":
                raise


_register()
