"""docs/tutorial.md runs as written: every command of its `sh` blocks, in order, must succeed.

Two substitutions keep parallel runs on a shared machine apart, nothing else: the lab name `tutorial` becomes
a unique name, and the diagram's /tmp path becomes the test's own temporary directory. The lab is always torn
down, also when a command fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lab import lifecycle
from tests.conftest import REPO, lab_namespaces, unique_lab_name

pytestmark = [pytest.mark.root, pytest.mark.slow]

TUTORIAL = REPO / "docs" / "tutorial.md"
NAME = re.compile(r"(--name|-n) tutorial\b")
# A few outputs the tutorial's prose relies on: (command contains, nth occurrence, output must contain).
EXPECT = [
    ("lab trace accounts -n tutorial --target elb-a1", 1, "in short: elb-a1 -> "),
    ("lab diagnose node-b1", 1, "CRITICAL"),
    ("lab diagnose node-b1", 1, "conntrack table"),
    ("lab diagnose node-a1", 1, "HEALTHY"),
    ("lab diagnose node-b1", 2, "earlier (none in the last 1 s)"),
    ("lab trace accounts -n tutorial --via node --target node-b1", 2, ": OK"),
]


def tutorial_commands(text: str) -> list[str]:
    """The commands of every ```sh block, in order (comments and blank lines skipped, `\\` joins lines)."""
    commands: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M):
        pending = ""
        for line in block.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            commands.append(pending + line)
            pending = ""
    return commands


def test_tutorial_has_commands_for_every_step():
    commands = tutorial_commands(TUTORIAL.read_text())
    verbs = {c.split()[1] for c in commands if c.startswith("lab ")}
    assert {"up", "status", "explain", "call", "trace", "fault", "diagnose", "exec", "down"} <= verbs
    assert commands[-2].startswith("lab down -n tutorial")


def test_tutorial_runs_as_written(tmp_path):
    name = unique_lab_name("tut")
    commands = tutorial_commands(TUTORIAL.read_text())
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "COLUMNS": "120"}
    seen: dict[str, int] = {}
    try:
        for command in commands:
            run = NAME.sub(lambda m: f"{m.group(1)} {name}", command)
            run = run.replace("/tmp/lab-tutorial-trace.svg", str(tmp_path / "trace.svg"))
            proc = subprocess.run(["bash", "-c", run], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, f"`{command}` failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            if "--diagram" in command:
                assert (tmp_path / "trace.svg").read_text().startswith("<?xml")
            for needle in {n for n, _, _ in EXPECT if n in command}:
                seen[needle] = seen.get(needle, 0) + 1
                for want in (w for n, nth, w in EXPECT if n == needle and nth == seen[needle]):
                    assert want in proc.stdout, f"`{command}` did not print {want!r}:\n{proc.stdout}"
        assert all(seen.get(needle, 0) >= nth for needle, nth, _ in EXPECT), seen
    finally:
        lifecycle.down(name)
        assert lab_namespaces(name) == []
