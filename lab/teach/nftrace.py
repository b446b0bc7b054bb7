"""Packet tracing inside one host: a small nftables table turns on nftrace, xtables-monitor reports every rule hit.

Why nftrace rather than counter deltas: counters cannot tell our SYN from a health check arriving in the
same instant, while a trace event carries the packet's own addresses and ports, so we keep only ours.
The trace table hooks prerouting and output at priority -350, before conntrack (-200): a SYN that conntrack
drops (table full) is still seen arriving, and its trace simply ends there.

xtables-monitor (from the iptables package) prints each rule the packet matched in iptables-save syntax, so
the rules line up with `iptables-save -c` and with what kube-proxy wrote. Works on any Host handle.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import EnvironmentProblem, LabError
from lab.hosts import Host, NetnsThread

TABLE_PREFIX = "lab_trace_"
MARKER_PORT = 9  # discard: a marker datagram to the host's own loopback proves the monitor is listening
READY_TIMEOUT = 5.0

# xtables-monitor prints verdicts by name, except RETURN (NFT_RETURN, -5) which comes out as a number.
_VERDICTS = {"0xfffffffb": "RETURN"}
_TRACE = re.compile(r"^\s*TRACE: (\d+) ([0-9a-f]+) (\S+)(?:\s+(.*))?$")
_PACKET = re.compile(r"^\s*PACKET: (\d+) ([0-9a-f]+) (.*)$")


@dataclass(frozen=True)
class TraceStep:
    """One event of a traced packet: a rule that matched, or a chain's policy / end."""

    table: str
    chain: str
    kind: str  # rule | policy | return
    verdict: str  # JUMP, GOTO, CONTINUE, ACCEPT, DROP, RETURN, ...
    target: str = ""  # the chain jumped to (JUMP / GOTO)
    rule: str = ""  # "-A CHAIN ..." as iptables-save prints it ("" for policy / return)

    @property
    def ours(self) -> bool:
        return self.table.startswith(TABLE_PREFIX)

    def to_json(self) -> dict[str, str]:
        return {
            "table": self.table,
            "chain": self.chain,
            "kind": self.kind,
            "verdict": self.verdict,
            "target": self.target,
            "rule": self.rule,
        }


@dataclass(frozen=True)
class PacketView:
    """The packet as one PACKET line shows it (addresses change as NAT rewrites them)."""

    fields: dict[str, str]
    flags: tuple[str, ...]

    def get(self, key: str) -> str:
        return self.fields.get(key, "")

    @property
    def tcp_flags(self) -> str:
        known = [f for f in ("SYN", "ACK", "FIN", "RST", "PSH", "URG") if f in self.flags]
        return "+".join(known)

    def summary(self) -> str:
        return f"{self.get('SRC')}:{self.get('SPORT')} -> {self.get('DST')}:{self.get('DPORT')} {self.tcp_flags}"


@dataclass
class TracedPacket:
    """Everything the monitor reported about one packet, in order."""

    trace_id: str
    first: PacketView  # as it reached the trace table: before any NAT
    steps: list[TraceStep] = field(default_factory=list)
    views: list[tuple[int, PacketView]] = field(default_factory=list)  # (index of the next step, view)

    def is_flow(self, src: str, sport: int, dst: str, dport: int) -> bool:
        f = self.first
        return (f.get("SRC"), f.get("SPORT"), f.get("DST"), f.get("DPORT")) == (src, str(sport), dst, str(dport))

    def rules(self) -> list[TraceStep]:
        """The kernel's tables only (our own trace table left out)."""
        return [s for s in self.steps if not s.ours]

    def view_at(self, table: str, chain: str) -> PacketView | None:
        """The packet as it entered `table`'s built-in `chain` (e.g. after DNAT, in filter FORWARD)."""
        for index, view in self.views:
            if index < len(self.steps) and (self.steps[index].table, self.steps[index].chain) == (table, chain):
                return view
        return None

    @property
    def last(self) -> PacketView:
        return self.views[-1][1] if self.views else self.first

    def to_json(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "packet": self.first.summary(),
            "in": self.first.get("IN"),
            "out": self.last.get("OUT"),
            "as_it_left": self.last.summary(),
            "steps": [s.to_json() for s in self.rules()],
        }


def _packet_view(text: str) -> PacketView:
    fields: dict[str, str] = {}
    flags: list[str] = []
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep:
            fields[key] = value
        else:
            flags.append(token)
    return PacketView(fields=fields, flags=tuple(flags))


def _trace_step(head: str, rule: str) -> TraceStep | None:
    parts = head.split(":")
    if len(parts) < 4:
        return None
    table, chain, kind = parts[0], parts[1], parts[2]
    rest = parts[4:] if kind == "rule" else parts[3:]
    if not rest:
        return None
    verdict = _VERDICTS.get(rest[0], rest[0])
    target = rest[1] if len(rest) > 1 else ""
    words = rule.split()
    # "-4 -t nat -A CHAIN ..." -> "-A CHAIN ...", the form iptables-save and describe_rule use
    while len(words) >= 1 and words[0] in ("-4", "-6"):
        words = words[1:]
    if len(words) >= 2 and words[0] == "-t":
        words = words[2:]
    return TraceStep(table, chain, kind, verdict, target, " ".join(words))


def parse_monitor(lines: Iterable[str]) -> list[TracedPacket]:
    """Group `xtables-monitor --trace` output into packets.

    A packet begins where our trace table's rule set nftrace on it; its later PACKET and TRACE lines carry
    the same trace id. (Ids are per packet but may be reused by a later packet, hence "begins".)
    """
    done: list[TracedPacket] = []
    current: dict[str, TracedPacket] = {}
    last_view: dict[str, PacketView] = {}
    for line in lines:
        m = _PACKET.match(line)
        if m:
            trace_id, view = m.group(2), _packet_view(m.group(3))
            last_view[trace_id] = view
            if trace_id in current:
                pkt = current[trace_id]
                pkt.views.append((len(pkt.steps), view))
            continue
        m = _TRACE.match(line)
        if not m:
            continue
        trace_id = m.group(2)
        step = _trace_step(m.group(3), m.group(4) or "")
        if step is None:
            continue
        if step.ours and step.kind == "rule":
            view = last_view.get(trace_id, PacketView({}, ()))
            pkt = TracedPacket(trace_id=trace_id, first=view)
            pkt.views.append((0, view))
            current[trace_id] = pkt
            done.append(pkt)
        if trace_id in current:
            current[trace_id].steps.append(step)
    return done


def packets_from_lines(lines: Iterable[str]) -> list[TracedPacket]:
    """The traced packets of a capture, without our own marker datagrams."""
    return [p for p in parse_monitor(lines) if p.first.get("DPORT") != str(MARKER_PORT)]


def ruleset(table: str, ports: Iterable[int]) -> str:
    """nft script of the trace table: SYNs to `ports`, SYN-ACKs and RSTs from them, and the marker."""
    port_set = ", ".join(str(p) for p in sorted(set(ports)))
    rules = [
        f"tcp dport {{ {port_set} }} tcp flags & (syn|ack) == syn meta nftrace set 1",
        f"tcp sport {{ {port_set} }} tcp flags & (syn|rst) != 0 meta nftrace set 1",
    ]
    lines = [f"table ip {table} {{"]
    for chain, hook in (("pre", "prerouting"), ("out", "output")):
        lines.append(f"  chain {chain} {{")
        lines.append(f"    type filter hook {hook} priority -350; policy accept;")
        lines += [f"    {r}" for r in rules]
        if chain == "out":
            # notrack: the marker must get through even when conntrack drops everything (a full table)
            lines.append(f"    ip daddr 127.0.0.1 udp dport {MARKER_PORT} notrack meta nftrace set 1")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def remove_stale_tables(host: Host) -> list[str]:
    """Delete trace tables left by a trace that was killed (its process is gone); returns their names."""
    listing = host.run(["nft", "list", "tables", "ip"], check=False).stdout
    stale = []
    for name in re.findall(rf"^table ip ({TABLE_PREFIX}(\d+)_\w+)$", listing, flags=re.M):
        table, pid = name
        if not Path(f"/proc/{pid}").exists():
            host.run(["nft", "delete", "table", "ip", table], check=False)
            stale.append(table)
    return stale


def check_tools() -> None:
    missing = [t for t in ("nft", "xtables-monitor") if shutil.which(t) is None]
    if missing:
        raise EnvironmentProblem(
            f"tracing needs {' and '.join(missing)} (Debian: nftables, iptables); run `make setup`"
        )


class TraceCapture:
    """While open, every SYN to `ports` (and SYN-ACK / RST from them) in `host` is traced rule by rule.

    Use as a context manager; `packets()` returns what was traced so far, complete up to that moment.
    The trace table is removed on exit, also after errors.
    """

    def __init__(self, host: Host, ports: Iterable[int]):
        self.host = host
        self.ports = sorted(set(ports))
        self.table = f"{TABLE_PREFIX}{os.getpid()}_{secrets.token_hex(3)}"  # the pid tells stale tables apart
        self._proc: subprocess.Popen | None = None
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._netns: NetnsThread | None = None
        self._installed = False

    def __enter__(self) -> TraceCapture:
        try:
            self.start()
            self.barrier()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self) -> None:
        """Install the trace table and start the monitor (call barrier() before relying on it)."""
        check_tools()
        remove_stale_tables(self.host)
        self.host.run(["nft", "-f", "-"], input=ruleset(self.table, self.ports))
        self._installed = True
        self._proc = self.host.popen(
            ["xtables-monitor", "--trace"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name=f"trace:{self.host.name}", daemon=True)
        self._reader.start()
        self._netns = NetnsThread(self.host.netns)

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            with self._cond:
                self._lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def _send_marker(self) -> int:
        def send() -> int:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                with contextlib.suppress(OSError):  # dropped on the way: the barrier simply sends another
                    s.sendto(b"lab-trace-marker", ("127.0.0.1", MARKER_PORT))
                return s.getsockname()[1]

        assert self._netns is not None
        return self._netns.call(send)

    def barrier(self, timeout: float = READY_TIMEOUT) -> None:
        """Return once the monitor has reported everything traced before this call.

        A marker datagram is traced like our packets; netlink delivers trace events in order, so once the
        marker shows up every earlier event has been read. Until the monitor has subscribed, markers are
        lost: send one every 100 ms.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                seen = len(self._lines)
            port = self._send_marker()
            needle = f"SPORT={port} DPORT={MARKER_PORT}"
            until = min(deadline, time.monotonic() + 0.1)
            with self._cond:
                while True:
                    if any(needle in line for line in self._lines[seen:]):
                        return
                    seen = len(self._lines)
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            if self._proc is not None and self._proc.poll() is not None:
                raise LabError(f"{self.host.name}: xtables-monitor --trace exited ({self._proc.returncode})")
        raise LabError(f"{self.host.name}: packet tracing did not start within {timeout:g}s (xtables-monitor)")

    def lines(self) -> list[str]:
        """Every trace line seen so far (after a barrier: nothing still in flight)."""
        self.barrier()
        with self._cond:
            return list(self._lines)

    def packets(self) -> list[TracedPacket]:
        return packets_from_lines(self.lines())

    def close(self) -> None:
        if self._netns is not None:
            self._netns.close()
            self._netns = None
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.terminate()
            try:
                self._proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._reader is not None:
            self._reader.join(timeout=3)
            self._reader = None
        if self._installed:
            with contextlib.suppress(LabError):  # the namespace may be gone (lab torn down meanwhile)
                self.host.run(["nft", "delete", "table", "ip", self.table], check=False)
            self._installed = False


@contextlib.contextmanager
def capture_many(hosts: Iterable[Host], ports: Iterable[int]) -> Iterator[dict[str, TraceCapture]]:
    """Trace on several hosts at once; every capture is closed on exit."""
    ports = list(ports)
    with contextlib.ExitStack() as stack:
        out: dict[str, TraceCapture] = {}
        for host in hosts:  # start every monitor first, then wait for all: the waits overlap
            capture = TraceCapture(host, ports)
            stack.callback(capture.close)
            capture.start()
            out[host.name] = capture
        for capture in out.values():
            capture.barrier()
        yield out
