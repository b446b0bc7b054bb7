"""The `lab` command line (thin: parse, call the library, print)."""

from lab.cli.app import app, main

__all__ = ["app", "main"]
