"""The Typer application, its error boundary, and the shared output helpers of every command.

Start-up: `lab --help` imports this module, typer and the command modules only. Anything heavier (rich,
pydantic, pyroute2, the library) is imported at use, inside the function that needs it.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer

from lab.errors import LabError

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    name="lab",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,  # a traceback is a bug; print it plainly (and without importing rich)
    help="A network lab for the ELB -> NodePort -> kube-proxy -> pod path, in network namespaces.\n\n"
    "Commands act on the lab named by --name, else $LAB_NAME, else 'default' (never a guess).\n"
    "Durations take units (500ms, 2s, 1m; a bare number is seconds). --json prints JSON, errors too.\n"
    "Exit codes: 0 ok, 1 an error (one `Error:` line), 2 a usage error (a wrong option or argument).",
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version  # imported at use for start-up speed

        print(f"lab (k8s-elb-lab) {version('k8s-elb-lab')}")
        raise typer.Exit()


@app.callback()
def _root(
    _version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    pass


@functools.cache
def console() -> Console:
    """stdout, for results. Piped output (CI logs, files) gets wide tables instead of an 80-column wrap."""
    from rich.console import Console  # imported at use for start-up speed

    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 180)


@functools.cache
def err_console() -> Console:
    """stderr, for progress."""
    from rich.console import Console  # imported at use for start-up speed

    return Console(stderr=True, highlight=False)


def say(text: str) -> None:
    """A plain line on stdout, without rich: a command that prints only plain text never imports it."""
    print(text, flush=True)


def fail(message: str, code: int = 1, json_out: bool = False) -> None:
    """Print one error (a plain line on stderr, or {"error": ...} on stdout under --json) and exit."""
    if json_out:
        print_json({"error": message})
    else:
        # One plain line: no wrapping, no markup, whatever the terminal width.
        print(f"Error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


def command(*args: Any, on: typer.Typer | None = None, **kwargs: Any) -> Callable:
    """app.command (or `on`'s, for a sub-command group), plus the error boundary: expected failures
    become one `Error:` line (a JSON object under --json) and exit 1."""

    def register(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*a: Any, **k: Any) -> Any:
            try:
                return fn(*a, **k)
            except LabError as exc:
                fail(str(exc), json_out=bool(k.get("json_out")))
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
    if sys.stderr.isatty() and err_console().is_terminal:
        with err_console().status(title) as status:
            yield lambda msg: status.update(f"{title}: {msg}")
    else:
        yield lambda msg: print(f"{title}: {msg}", file=sys.stderr, flush=True)
