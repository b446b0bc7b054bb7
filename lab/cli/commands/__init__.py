"""Every command module registers itself on the shared Typer app when imported."""

# ruff: noqa: I001  (one import line per command module, in the order they landed: merges stay trivial)

from lab.cli.commands import core  # noqa: F401
from lab.cli.commands import teach  # noqa: F401
from lab.cli.commands import fault  # noqa: F401
from lab.cli.commands import load  # noqa: F401
from lab.cli.commands import metrics  # noqa: F401
from lab.cli.commands import scenario  # noqa: F401
from lab.cli.commands import doctor  # noqa: F401
from lab.cli.commands import fit  # noqa: F401
from lab.cli.commands import report  # noqa: F401
