"""The `lab` command line (thin: parse options, call one library function, print)."""

from lab.cli import commands  # noqa: F401  registers every command on `app`
from lab.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    app()
