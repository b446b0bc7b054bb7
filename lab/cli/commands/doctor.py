"""lab doctor: is this machine ready for the lab (programs, root, kernel features)? Exit 0 yes, 1 no."""

from __future__ import annotations

import sys

import typer

from lab.cli.app import command, print_json
from lab.cli.options import JsonOpt


@command(
    "doctor",
    epilog="Examples:\n\n  sudo lab doctor\n\n  sudo lab doctor --tests      # also what `make test` runs\n\n"
    "  sudo lab doctor --brief --json\n\n  sudo env PATH=/usr/bin:/bin lab doctor   # as a user with another PATH",
)
def doctor_cmd(
    tests: bool = typer.Option(False, "--tests", help="Also require the programs only the test suite runs."),
    brief: bool = typer.Option(False, "--brief", help="Only what is wrong, and the verdict."),
    json_out: bool = JsonOpt,
) -> None:
    """Check this machine for the lab: every program it runs (with the Debian package to install), root, and the
    kernel features (network namespaces, conntrack, sch_netem or the NFQUEUE fallback, the iptables backend),
    probed inside a throwaway network namespace that is deleted again. Exit 0: the lab can run; 1: it cannot.
    """
    from lab.doctor import examine  # imported at use for start-up speed

    report = examine(tests=tests)
    if json_out:
        print_json(report.to_json())
    else:
        sys.stdout.write(report.text(brief=brief))
    raise typer.Exit(0 if report.ok else 1)
