"""An ELB node's connection log (HAProxy `option tcplog`): which instance took a connection, timers, how it ended."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# client:port [date] frontend backend/server Tw/Tc/Tt bytes state actconn/feconn/beconn/srvconn/retries sq/bq
_TCPLOG = re.compile(
    r"(?P<client>\d+\.\d+\.\d+\.\d+):(?P<cport>\d+) \[(?P<date>[^\]]+)\] (?P<frontend>\S+) "
    r"(?P<backend>[^/\s]+)/(?P<server>\S+) (?P<tw>-?\d+)/(?P<tc>-?\d+)/\+?(?P<tt>-?\d+) \+?(?P<bytes>\d+) "
    r"(?P<term>\S\S) (?P<actconn>\d+)/(?P<feconn>\d+)/(?P<beconn>\d+)/(?P<srvconn>\d+)/(?P<redispatched>\+?)"
    r"(?P<retries>\d+) (?P<srvq>\d+)/(?P<backq>\d+)"
)

# First letter of HAProxy's termination state: who ended the session. Second: what it was doing then.
_WHO = {
    "-": "ended normally",
    "C": "the client closed or reset it",
    "S": "the instance refused or reset it (a BackendConnectionError when it happens while connecting)",
    "P": "the ELB node itself ended it (proxy error)",
    "R": "the ELB node ran out of a resource",
    "I": "an internal error in the ELB node",
    "D": "the instance was marked down (health check) and the session was killed",
    "K": "it was killed by an administrator",
    "c": "the client went idle too long (idle timeout)",
    "s": "the instance did not answer in time (connect timeout or idle timeout)",
}
_PHASE = {
    "-": "",
    "R": "while waiting for the client's data",
    "Q": "while waiting in the surge queue",
    "C": "while connecting to the instance",
    "D": "while relaying data",
    "L": "while sending the last data",
    "T": "while tarpitted",
}


@dataclass(frozen=True)
class ElbLogLine:
    raw: str
    client: str
    client_port: int
    frontend: str
    backend: str
    server: str  # the instance chosen, "<NOSRV>" when none was
    queue_ms: int  # Tw: time in the surge queue (-1: never got out)
    connect_ms: int  # Tc: time to connect to the instance, what the ELB reports as Latency (-1: failed)
    total_ms: int  # Tt: the whole session
    bytes_to_client: int
    termination: str
    retries: int
    redispatched: bool

    @property
    def ended_normally(self) -> bool:
        return self.termination == "--"

    def termination_words(self) -> str:
        who, phase = self.termination[0], self.termination[1]
        text = _WHO.get(who, f"state {self.termination}")
        return f"{text} {_PHASE.get(phase, '')}".strip()

    def to_json(self) -> dict[str, Any]:
        return {
            "line": self.raw,
            "frontend": self.frontend,
            "backend": self.backend,
            "instance": self.server,
            "queue_ms": self.queue_ms,
            "connect_ms": self.connect_ms,
            "total_ms": self.total_ms,
            "bytes_to_client": self.bytes_to_client,
            "termination": self.termination,
            "termination_words": self.termination_words(),
            "retries": self.retries,
            "redispatched": self.redispatched,
        }


def parse_line(line: str) -> ElbLogLine | None:
    m = _TCPLOG.search(line)
    if not m:
        return None
    g = m.groupdict()
    return ElbLogLine(
        raw=line[m.start() :].strip(),
        client=g["client"],
        client_port=int(g["cport"]),
        frontend=g["frontend"],
        backend=g["backend"],
        server=g["server"],
        queue_ms=int(g["tw"]),
        connect_ms=int(g["tc"]),
        total_ms=int(g["tt"]),
        bytes_to_client=int(g["bytes"]),
        termination=g["term"],
        retries=int(g["retries"]),
        redispatched=bool(g["redispatched"]),
    )


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def find_connection(
    path: Path, offset: int, client: str, client_port: int, frontend: str, timeout: float = 3.0
) -> ElbLogLine | None:
    """The log line of one client connection, written after `offset`; HAProxy logs it when the session ends."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path, errors="replace") as f:
                f.seek(offset)
                text = f.read()
        except FileNotFoundError:
            text = ""
        for line in text.splitlines():
            entry = parse_line(line)
            if entry and (entry.client, entry.client_port, entry.frontend) == (client, client_port, frontend):
                return entry
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)
