"""Read a running HAProxy (an ELB node) through its stats socket: `show stat` rows and runtime commands."""

from __future__ import annotations

import csv
import io
import re
import socket
from pathlib import Path

from lab.errors import LabError
from lab.render.haproxy import HEALTH_BACKEND


def command(stats_socket: Path, cmd: str, timeout: float = 3.0) -> str:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(stats_socket))
        s.sendall(cmd.encode() + b"\n")
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    except OSError as exc:
        raise LabError(f"HAProxy stats socket {stats_socket}: {exc.strerror or exc}") from None
    finally:
        s.close()
    return b"".join(chunks).decode(errors="replace")


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
