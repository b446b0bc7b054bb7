"""Every command module registers itself on the shared Typer app when imported."""

from lab.cli.commands import core  # noqa: F401
from lab.cli.commands import teach  # noqa: F401
from lab.cli.commands import fault  # noqa: F401
