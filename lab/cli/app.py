"""The Typer application, its error boundary, and the shared output helpers of every command."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console

from lab.errors import LabError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help="A network lab for the ELB -> NodePort -> kube-proxy -> pod path, in network namespaces.",
)
# Piped output (CI logs, files) gets wide tables instead of an 80-column wrap.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 180)
err_console = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1) -> None:
    # One plain line: no wrapping, no markup, whatever the terminal width.
    print(f"Error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


def command(*args: Any, on: typer.Typer | None = None, **kwargs: Any) -> Callable:
    """app.command (or `on`'s, for a sub-command group), plus the error boundary: expected failures
    become one `Error:` line and exit 1."""

    def register(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*a: Any, **k: Any) -> Any:
            try:
                return fn(*a, **k)
            except LabError as exc:
                fail(str(exc))
            except KeyboardInterrupt:
                print("Interrupted.", file=sys.stderr, flush=True)
                raise typer.Exit(130) from None

        (on or app).command(*args, **kwargs)(wrapper)
        return fn

    return register


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


@contextmanager
def progress(title: str, quiet: bool = False) -> Iterator[Callable[[str], None]]:
    """A spinner with the current step on a terminal; one line per step otherwise (logs, CI)."""
    if quiet:
        yield lambda _msg: None
        return
    if err_console.is_terminal:
        with err_console.status(title) as status:
            yield lambda msg: status.update(f"{title}: {msg}")
    else:
        yield lambda msg: print(f"{title}: {msg}", file=sys.stderr, flush=True)
