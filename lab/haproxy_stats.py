"""Read a running HAProxy (an ELB node) through its stats socket: `show stat` rows and runtime commands."""

from __future__ import annotations

import csv
import io
import re
import socket
import time
from pathlib import Path

from lab.errors import LabError
from lab.render.haproxy import HEALTH_BACKEND

# A fault that changes an ELB node's configuration restarts its HAProxy: for that moment the stats socket is
# missing, refuses, or the old process resets or closes the connection. A reader retries for this long
# (bounded) rather than fail a metrics sample.
RESTART_GRACE_S = 1.0
_RESTARTING = (ConnectionRefusedError, ConnectionResetError, BrokenPipeError, FileNotFoundError)


def _ask(stats_socket: Path, cmd: str, timeout: float) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(stats_socket))
        s.sendall(cmd.encode() + b"\n")
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


def command(stats_socket: Path, cmd: str, timeout: float = 3.0) -> str:
    """HAProxy's answer to one runtime command; an empty answer only if HAProxy kept closing without one."""
    deadline = time.monotonic() + RESTART_GRACE_S
    while True:
        try:
            answer = _ask(stats_socket, cmd, timeout)
        except _RESTARTING as exc:
            if time.monotonic() >= deadline:
                raise LabError(f"HAProxy stats socket {stats_socket}: {exc.strerror or exc}") from None
        except OSError as exc:
            raise LabError(f"HAProxy stats socket {stats_socket}: {exc.strerror or exc}") from None
        else:
            if answer or time.monotonic() >= deadline:  # every command answers at least a newline
                return answer
        time.sleep(0.05)


def show_stat(stats_socket: Path) -> list[dict[str, str]]:
    """Every proxy/server row of `show stat` as a dict keyed by HAProxy's CSV column names."""
    text = command(stats_socket, "show stat")
    if not text.startswith("# "):
        raise LabError(f"unexpected answer from {stats_socket}: {text[:80]!r}")
    return list(csv.DictReader(io.StringIO(text[2:])))


def elb_state(status: str) -> str:
    """HAProxy's server status as the ELB reports an instance: InService or OutOfService.

    The instances' servers have only an agent check (the lab's checker): "no check" is how HAProxy shows
    such a server up, "DOWN (agent)" down. Statuses of HAProxy's own checks read the same way: "UP 2/6" is
    up but failing checks (not yet at the unhealthy threshold), "DOWN 1/2" down and passing them.
    """
    return "OutOfService" if status.startswith(("DOWN", "MAINT")) else "InService"


# What the checker tells HAProxy with its state word: "via agent : up (UP, 1/6 failed; last check timeout in 5001 ms)"
_AGENT_SAYS = re.compile(r"via agent : \w+ \((?P<status>[^;]*); last check (?P<check>.*)\)$")


def instance_health(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    """The ELB node's view of each instance: state (HAProxy's, which routes), the checker's status and last
    check (as it last told HAProxy; HAProxy's own status before the checker first answered)."""
    out = {}
    for row in rows:
        if row.get("pxname") == HEALTH_BACKEND and row.get("svname") not in ("FRONTEND", "BACKEND"):
            says = _AGENT_SAYS.match(row.get("last_agt") or "")
            out[row["svname"]] = {
                "state": elb_state(row.get("status", "")),
                "status": says["status"] if says else row.get("status", ""),
                "check": says["check"] if says else row.get("check_status", ""),
            }
    return out


def queues(rows: list[dict[str, str]]) -> dict[str, int]:
    """The listener backends' queues: connections waiting for a server now (qcur, summed) and the most
    that ever waited at once (qmax). Only an ELB with per-instance connection limits queues at all."""
    out = {"queued": 0, "queued_max": 0}
    for row in rows:
        if row.get("svname") == "BACKEND" and row.get("pxname") not in (HEALTH_BACKEND, "prometheus"):
            out["queued"] += int(row.get("qcur") or 0)
            out["queued_max"] = max(out["queued_max"], int(row.get("qmax") or 0))
    return out
