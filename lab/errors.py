"""Typed, expected failures: the CLI shows each as one `Error: ...` line and exits 1."""


class LabError(Exception):
    """A failure the user can act on; the message says what, where and how to fix it."""


class InputError(LabError):
    """A topology, scenario or option is invalid."""


class EnvironmentProblem(LabError):
    """The machine lacks something the lab needs (root, a tool, a kernel feature)."""


class LabStateError(LabError):
    """The lab is not in the state the command needs (not up, already up, ...)."""
