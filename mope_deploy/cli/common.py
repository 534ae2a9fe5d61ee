"""Shared CLI plumbing: library errors (:class:`~mope_deploy.errors.MopeError`) and missing files become one
clear red line and exit code 2; anything else is a bug and keeps its traceback. ``mope --debug CMD`` shows the
traceback of expected errors too."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import typer
from rich.console import Console

from ..atomic import no_room_cause
from ..errors import MopeError

console = Console()
err_console = Console(stderr=True)

#: the one output policy, in the same words in every command's --help (mope_deploy.atomic.Output)
FORCE_HELP = ("Replace --out even if mope did not write it. Without it --out must be absent, empty, or a folder "
              "mope wrote (anything else is refused, naming what is there). Either way the old content goes only "
              "after the new output is complete and has passed its gates.")
MODEL_HELP = "'demo', a saved model directory, or an open_clip name (ViT-L-14 or ViT-L-14:openai)."
#: what the CLI reports as a user error (everything else propagates with its traceback)
USER_ERRORS: tuple[type[BaseException], ...] = (MopeError, FileNotFoundError)

_state = {"debug": False}


class _Notices(logging.Handler):
    """Library warnings meant for the user (e.g. mope_deploy.atomic removing a killed run's temporaries) as one
    yellow line on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(f"[yellow]{self.format(record)}[/]", highlight=False)


def install_notices() -> None:
    """Show the library's warnings as yellow lines: called by the ``mope`` entry point only (importing a command
    module changes no logging state, so a program that imports the CLI keeps its own handlers)."""
    lg = logging.getLogger("mope_deploy")
    if not any(isinstance(h, _Notices) for h in lg.handlers):
        lg.addHandler(_Notices(logging.WARNING))


class UsageError(MopeError, ValueError):
    """Command-line options that do not fit together (names the option and the fix)."""


def set_debug(on: bool) -> None:
    _state["debug"] = bool(on)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print expected failures (bad input) as one line without a traceback (unless ``--debug``)."""
    try:
        yield
    except USER_ERRORS as e:
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(2) from None
    except (OSError, RuntimeError) as e:
        cause = no_room_cause(e)     # a full disk in a write outside the atomic helpers (e.g. a log append)
        if cause is None or _state["debug"]:
            raise
        where = f" ({cause.filename})" if cause.filename else ""
        err_console.print(f"[bold red]error:[/] no space left to write{where}: {cause.strerror}; free disk space "
                          "(or raise the file-size limit) and run the command again (interrupted runs resume)",
                          highlight=False)
        raise typer.Exit(2) from None
