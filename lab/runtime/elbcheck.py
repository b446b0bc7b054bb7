"""An ELB node's health checker: a TCP connect to every instance at the Classic ELB's fixed cadence.

Why not HAProxy's own `check`: HAProxy starts the next check `inter` after the previous one ENDED, so a
check that times out repeats every interval + timeout (10 s + 5 s: 4 a minute) where the ELB starts one
every interval whatever the outcome (6 a minute). This process starts a check of each instance every
`interval_s`, staggered, keeps each instance's InService/OutOfService state with the ELB's thresholds,
and answers HAProxy's agent check over loopback (`up` / `down`), so HAProxy routes only to InService
instances and nothing but these checks reaches the instances.

Stdlib only, run as a file with `python -S` (starts in milliseconds, needs no lab package: the kind
backend runs it in the service image). It reads its JSON config (lab.render.healthcheck) again whenever
the file changes: the healthcheck-misroute fault moves the checked port that way. Each check and each
state change is one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RELOAD_EVERY = 0.2  # seconds between looks at the config file's mtime
MAX_WAIT = 0.5  # the loop wakes at least this often (config reload, signals)


# --- the pure part: cadence and thresholds (unit-tested with a fake clock) ---


def next_due(first: float, interval: float, now: float) -> float:
    """The first slot of the fixed cadence first + k*interval that is not before `now` (a late loop skips
    missed slots and keeps its phase, as a scheduler that starts checks by the clock does)."""
    if now <= first:
        return first
    return first + math.ceil((now - first) / interval - 1e-9) * interval


@dataclass
class Health:
    """One instance as the ELB sees it: InService until `unhealthy` consecutive failures, then OutOfService
    until `healthy` consecutive successes (a registered instance starts InService, as HAProxy's servers do)."""

    healthy_threshold: int
    unhealthy_threshold: int
    in_service: bool = True
    streak: int = 0  # consecutive results against the current state
    last: str = ""  # last check's result: ok, refused, timeout or an errno name
    last_ms: int | None = None
    checks: int = 0  # made since the checker started

    def record(self, result: str, ms: int | None) -> bool:
        """Count one check's result; True if the instance changed state."""
        self.last, self.last_ms = result, ms
        self.checks += 1
        against = (result != "ok") if self.in_service else (result == "ok")
        self.streak = self.streak + 1 if against else 0
        limit = self.unhealthy_threshold if self.in_service else self.healthy_threshold
        if self.streak >= limit:
            self.in_service = not self.in_service
            self.streak = 0
            return True
        return False

    @property
    def state(self) -> str:
        return "InService" if self.in_service else "OutOfService"

    @property
    def status(self) -> str:
        """UP / DOWN, with the run of checks against it: "UP, 2/6 failed", "DOWN, 1/2 passed"."""
        if self.in_service:
            return f"UP, {self.streak}/{self.unhealthy_threshold} failed" if self.streak else "UP"
        return f"DOWN, {self.streak}/{self.healthy_threshold} passed" if self.streak else "DOWN"

    def agent_reply(self) -> str:
        """HAProxy's agent protocol: a state word, then '#' and a description HAProxy shows as last_agt."""
        last = f"{self.last} in {self.last_ms} ms" if self.last_ms is not None else (self.last or "none yet")
        return f"{'up' if self.in_service else 'down'} #{self.status}; last check {last}\n"


@dataclass
class Target:
    instance: str
    ip: str
    port: int
    first: float  # monotonic time of its first check
    health: Health
    due: float = 0.0


@dataclass
class Pending:
    target: Target
    port: int
    started: float
    deadline: float
    sock: socket.socket = field(repr=False)


def classify(err: int) -> str:
    """A finished connect's SO_ERROR as the ELB reports it."""
    if err == 0:
        return "ok"
    if err == errno.ECONNREFUSED:
        return "refused"
    if err == errno.ETIMEDOUT:
        return "timeout"
    return errno.errorcode.get(err, str(err)).lower()


# --- the process ---


class Checker:
    """One ELB node's checks: a single-threaded loop over non-blocking connects, the agent port and the status
    socket."""

    def __init__(self, config_path: str, status_socket: str | None, clock: Callable[[], float] = time.monotonic):
        self.path = config_path
        self.clock = clock
        self.sel = selectors.DefaultSelector()
        self.targets: dict[str, Target] = {}
        self.config: dict[str, Any] = {}
        self.seen: tuple[int, int, int] | None = None  # the config file's (inode, mtime, size) when last read
        self.next_reload = 0.0
        self.running = True
        self._load()
        self.agent = socket.create_server(("127.0.0.1", int(self.config["agent_port"])), backlog=64)
        self.agent.setblocking(False)
        self.sel.register(self.agent, selectors.EVENT_READ, "agent")
        self.status = None
        if status_socket:
            if os.path.exists(status_socket):
                os.unlink(status_socket)
            self.status = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.status.bind(status_socket)  # bound once the agent port is: the supervisor's readiness probe
            self.status.listen(8)
            self.status.setblocking(False)
            self.sel.register(self.status, selectors.EVENT_READ, "status")

    def _load(self) -> None:
        st = os.stat(self.path)
        # The inode too: a file replaced twice within the kernel's coarse mtime tick still reads as changed.
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen == self.seen:
            return
        with open(self.path) as f:
            cfg = json.load(f)
        self.seen = seen
        now = self.clock()
        start = now if not self.config else None
        old, self.targets = self.targets, {}
        for t in cfg["targets"]:
            prev = old.get(t["instance"])
            if prev is not None:  # same instance: keep its state and its place in the cadence
                prev.ip, prev.port = t["ip"], int(t["port"])
                self.targets[prev.instance] = prev
                continue
            first = (start if start is not None else now) + float(t["offset_s"])
            health = Health(int(cfg["healthy_threshold"]), int(cfg["unhealthy_threshold"]))
            self.targets[t["instance"]] = Target(t["instance"], t["ip"], int(t["port"]), first, health, first)
        if self.config:
            self._log({"event": "config", "ports": {n: t.port for n, t in self.targets.items()}})
        self.config = cfg

    def _log(self, record: dict[str, Any]) -> None:
        line = {"ts": round(time.time(), 3), "elb": self.config.get("elb", ""), **record}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    def _start_check(self, target: Target, now: float) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        # Close with a reset, as HAProxy's TCP check does: no TIME_WAIT left behind per check.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        pending = Pending(target, target.port, now, now + float(self.config["timeout_s"]), s)
        err = s.connect_ex((target.ip, target.port))
        if err in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
            self.sel.register(s, selectors.EVENT_WRITE, pending)
        else:
            self._finish(pending, classify(err), now)

    def _finish(self, p: Pending, result: str, now: float) -> None:
        if p.sock.fileno() >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(p.sock)
            p.sock.close()
        ms = round((now - p.started) * 1000)
        changed = p.target.health.record(result, ms)
        h = p.target.health
        self._log({"instance": p.target.instance, "ip": p.target.ip, "port": p.port, "result": result,
                   "ms": ms, "state": h.state, "status": h.status})  # fmt: skip
        if changed:
            self._log({"instance": p.target.instance, "event": h.state, "after": f"{result} x{self._limit(h)}"})

    @staticmethod
    def _limit(h: Health) -> int:
        return h.healthy_threshold if h.in_service else h.unhealthy_threshold

    def _answer_agent(self) -> None:
        try:
            conn, _ = self.agent.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self.sel.register(conn, selectors.EVENT_READ, ("agent-conn", b""))

    def _agent_read(self, conn: socket.socket, buf: bytes) -> None:
        try:
            data = conn.recv(256)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        buf += data
        if data and b"\n" not in buf and len(buf) < 256:
            self.sel.modify(conn, selectors.EVENT_READ, ("agent-conn", buf))
            return
        self.sel.unregister(conn)
        target = self.targets.get(buf.split(b"\n", 1)[0].decode(errors="replace").strip())
        reply = target.health.agent_reply() if target else "down #not an instance of this ELB node\n"
        with contextlib.suppress(OSError):
            conn.send(reply.encode())
        conn.close()

    def _answer_status(self) -> None:
        try:
            conn, _ = self.status.accept()
        except BlockingIOError:
            return
        view = {n: {"state": t.health.state, "status": t.health.status, "last": t.health.last,
                    "ms": t.health.last_ms, "port": t.port, "checks": t.health.checks}
                for n, t in self.targets.items()}  # fmt: skip
        try:
            conn.setblocking(True)
            conn.settimeout(0.2)
            conn.sendall(json.dumps(view).encode())
        except OSError:
            pass  # the supervisor's readiness probe hangs up at once
        conn.close()

    def step(self) -> None:
        """One turn of the loop: reload, start due checks, wait for answers, time out the late ones."""
        now = self.clock()
        if now >= self.next_reload:
            self.next_reload = now + RELOAD_EVERY
            try:
                self._load()
            except (OSError, ValueError, KeyError) as exc:
                self._log({"event": "config-error", "error": str(exc)})
        interval = float(self.config["interval_s"])
        for t in self.targets.values():
            if t.due <= now:
                self._start_check(t, now)
                t.due = next_due(t.first, interval, now + 1e-6)
        pending = [k.data for k in self.sel.get_map().values() if isinstance(k.data, Pending)]
        wake = min([t.due for t in self.targets.values()] + [p.deadline for p in pending] + [now + MAX_WAIT])
        for key, _ in self.sel.select(timeout=max(0.0, wake - self.clock())):
            if key.data == "agent":
                self._answer_agent()
            elif key.data == "status":
                self._answer_status()
            elif isinstance(key.data, tuple):
                self._agent_read(key.fileobj, key.data[1])
            elif isinstance(key.data, Pending):
                err = key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                self._finish(key.data, classify(err), self.clock())
        now = self.clock()
        for key in list(self.sel.get_map().values()):
            if isinstance(key.data, Pending) and key.data.deadline <= now:
                self._finish(key.data, "timeout", now)

    def run(self) -> None:
        self._log({"event": "start", "interval_s": self.config["interval_s"], "timeout_s": self.config["timeout_s"],
                   "instances": {n: f"{t.ip}:{t.port}" for n, t in self.targets.items()}})  # fmt: skip
        while self.running:
            self.step()


def read_status(path: str, timeout: float = 2.0) -> dict[str, Any]:
    """A running checker's view of its instances, from its --socket: state, status, last, ms, port, checks."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return json.loads(data)


def wait_for_config(path: str, config_text: str, timeout: float) -> bool:
    """Wait until the checker behind socket `path` checks the ports `config_text` names (it reloads its file
    within RELOAD_EVERY); False if it did not in time."""
    wanted = {t["instance"]: int(t["port"]) for t in json.loads(config_text)["targets"]}
    deadline = time.monotonic() + timeout
    while True:
        try:
            if {n: v["port"] for n, v in read_status(path).items()} == wanted:
                return True
        except (OSError, ValueError):
            pass  # restarting: its socket comes back with the file's ports
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -S elbcheck.py")
    parser.add_argument("config", help="the checker's JSON config (lab.render.healthcheck)")
    parser.add_argument("--socket", help="a unix socket that answers each connection with the instances' state")
    args = parser.parse_args(argv)
    checker = Checker(args.config, args.socket)

    def stop(*_: Any) -> None:
        checker.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    checker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
