"""lab doctor on this machine: a real report, its kernel probes leave the host's namespace as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.root

LAB = [sys.executable, "-m", "lab.cli"]


def _host_view() -> dict[str, str]:
    """What the doctor must not change: namespaces, links, rules and qdiscs of the host's own namespace."""
    run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True, check=True).stdout  # noqa: E731
    return {
        "netns": run("ip", "netns", "list"),
        "links": run("ip", "-o", "link"),
        "rules": "\n".join(ln for ln in run("iptables-save").splitlines() if not ln.startswith("#")),
        "qdiscs": run("tc", "qdisc", "show"),
    }


def test_doctor_probes_the_kernel_in_a_namespace_it_removes():
    before = _host_view()
    proc = subprocess.run([*LAB, "doctor", "--json"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    kernel = {c["name"]: c for c in report["checks"] if c["section"] == "kernel"}
    assert kernel["network namespaces"]["ok"] and kernel["network namespaces"]["detail"].startswith("lab.doctor.p")
    assert kernel["conntrack"]["ok"] and kernel["iptables backend"]["detail"].split()[0] in ("nft", "legacy")
    # Delays need sch_netem or else the NFQUEUE target and the helper: whichever this kernel has is required.
    assert kernel["sch_netem"]["ok"] or (kernel["NFQUEUE"]["required"] and kernel["lab-nfqdelay"]["required"])
    assert report["verdict"] == "ready: the lab can run on this machine"
    assert _host_view() == before  # the probe namespace is gone, nothing else changed


def test_doctor_without_ping_on_path_names_the_package_and_exits_1(tmp_path: Path):
    bin_dir = tmp_path / "bin"  # every program on PATH but ping
    bin_dir.mkdir()
    for directory in os.environ["PATH"].split(":"):
        for program in Path(directory).glob("*") if Path(directory).is_dir() else ():
            target = bin_dir / program.name
            if program.name != "ping" and not target.exists() and os.access(program, os.X_OK):
                target.symlink_to(program)
    env = {**os.environ, "PATH": str(bin_dir)}
    proc = subprocess.run([*LAB, "doctor", "--tests", "--brief"], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(ln.startswith("  MISSING  ping") and "apt-get install iputils-ping" in ln for ln in lines), lines
    assert lines[-1] == (
        "verdict: NOT READY: the lab and its test suite cannot run here: missing ping (apt-get install iputils-ping)"
    )
    # Without --tests, ping is not needed to run the lab: exit 0
    assert subprocess.run([*LAB, "doctor", "--brief"], cwd=REPO, env=env, capture_output=True).returncode == 0
