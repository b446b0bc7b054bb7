"""Never guess a lab: with labs up, a command without --name acts on 'default' (or $LAB_NAME), never on them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, lab_namespaces, unique_lab_name

pytestmark = pytest.mark.root
LAB = [sys.executable, "-m", "lab.cli"]


def lab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real CLI, in a process of its own, without $LAB_NAME unless `env` gives it."""
    base = {k: v for k, v in os.environ.items() if k != "LAB_NAME"}
    return subprocess.run([*LAB, *args], capture_output=True, text=True, cwd=REPO, env={**base, **(env or {})})


def test_bare_commands_touch_neither_of_two_labs_that_are_up(make_lab):
    if lab_namespaces("default"):
        pytest.skip("a lab named 'default' is up on this machine; a bare `lab down` would rightly remove it")
    first, second = make_lab(name=unique_lab_name("d")), make_lab(name=unique_lab_name("d"))
    before = {name: lab_namespaces(name) for name in (first.name, second.name)}
    assert all(len(ns) == 13 for ns in before.values())  # default.yaml: 13 namespaces each (ip netns list)

    down = lab("down")
    assert down.returncode == 0 and down.stdout == "lab 'default' is not up; nothing to do\n", down.stderr
    status = lab("status")
    assert status.returncode == 1 and status.stderr.startswith("Error: lab 'default' is not up (labs up: ")
    fault = lab("fault", "apply", "cross-az", "delay=10ms")
    assert fault.returncode == 1 and fault.stderr.startswith("Error: lab 'default' is not up")
    assert {name: lab_namespaces(name) for name in before} == before  # ip netns list: both labs untouched

    named = lab("down", env={"LAB_NAME": first.name})  # $LAB_NAME names the lab, as -n does
    assert named.returncode == 0 and named.stdout.startswith(f"lab '{first.name}' is down"), named.stderr
    assert lab_namespaces(first.name) == [] and lab_namespaces(second.name) == before[second.name]
