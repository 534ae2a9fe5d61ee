"""Shared CLI plumbing: turn library errors into one clear red line and exit code 2."""

from __future__ import annotations

import contextlib
from typing import Iterator

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, KeyError, RuntimeError)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print expected failures (bad input) without a traceback."""
    try:
        yield
    except USER_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        err_console.print(f"[bold red]error:[/] {msg}", highlight=False)
        raise typer.Exit(2) from None
