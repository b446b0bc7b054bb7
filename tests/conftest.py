"""Shared test helpers: the root marker, unique lab names, and independent tools run inside lab hosts."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOPOLOGIES = REPO / "topologies"
IS_ROOT = os.geteuid() == 0

# Started in the background of a non-interactive shell (`make test &`), the test run inherits SIGINT
# ignored, and every CLI it starts would keep ignoring it, as Unix programs should: the Ctrl-C tests need
# SIGINT delivered, so the run gives its children the default disposition back (a handler resets on exec).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs root and network namespaces (run as root: make test)")
    for item in items:
        if "root" in item.keywords and not IS_ROOT:
            item.add_marker(skip)


def pytest_collection_finish(session):
    """With the integration tier selected, as root: stop at once, with `lab doctor`'s report, when the machine
    lacks something the tests need (rather than failing tests one by one later)."""
    if not IS_ROOT or not any("root" in item.keywords for item in session.items):
        return
    from lab.doctor import examine

    report = examine(tests=True)
    if not report.ok:
        pytest.exit(
            f"this machine cannot run the integration tests (lab doctor --tests):\n{report.text(brief=True)}", 1
        )


GOLDEN = REPO / "tests" / "golden"


def assert_golden(relative: str, text: str) -> None:
    """Compare rendered text with tests/golden/<relative>; LAB_UPDATE_GOLDEN=1 rewrites it for review."""
    path = GOLDEN / relative
    if os.environ.get("LAB_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing; run with LAB_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{path.name} differs; review the diff, then LAB_UPDATE_GOLDEN=1 to accept"


def single_error(result) -> str:
    """The one `Error: ...` line a CLI call printed (exit 1, no traceback)."""
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def unique_lab_name(prefix: str = "t") -> str:
    return f"{prefix}{secrets.token_hex(3)}"


def ns(lab: str, host: str) -> str:
    return f"lab.{lab}.{host}"


def in_host(lab: str, host: str, *cmd: str, check: bool = True) -> str:
    """Run an independent tool (ip, iptables-save, conntrack, ss, ...) inside a lab host."""
    proc = subprocess.run(["ip", "netns", "exec", ns(lab, host), *cmd], capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} in {host} failed: {proc.stderr.strip()}")
    return proc.stdout


def ip_json(lab: str, host: str, *args: str) -> list[dict]:
    return json.loads(in_host(lab, host, "ip", "-json", *args) or "[]")


def lab_namespaces(lab: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"lab.{lab}.")]
