"""The `lab` command line (thin: parse options, call one library function, print)."""

from lab.cli import commands  # noqa: F401  registers the commands
from lab.cli.app import app, main

__all__ = ["app", "main"]
