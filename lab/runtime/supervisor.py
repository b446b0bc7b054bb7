"""The per-lab supervisor: starts each lab process inside its namespace, restarts it, stops it.

One detached process per lab (the `lab` CLI exits after `lab up`). It is single-threaded so that it can
fork safely: pods are forked from it with the Thrift service already imported (no interpreter start
per pod), then setns(2) into the pod's namespace; HAProxy is forked and exec'd the same way.
Children get PR_SET_PDEATHSIG so a killed supervisor takes them down with it; `lab clean` also kills
whatever still runs in the lab's namespaces.

Control: JSON lines on a unix socket in the lab's state directory (see lab.runtime.control). It starts
empty (so `lab up` can launch it early and overlap its start-up with the network build) and starts the
processes of processes.json on the `load` command.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import resource
import selectors
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.hosts import enter_netns
from lab.runtime.control import receive_message, send_message

PR_SET_PDEATHSIG = 1
RESTART_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)
STOP_GRACE = 2.0


@dataclass
class Proc:
    name: str
    spec: dict[str, Any]
    pid: int | None = None
    state: str = "new"  # new | running | exited | stopped
    ready: bool = False
    restarts: int = 0
    started_at: float | None = None
    exit_code: int | None = None
    wanted: bool = True  # restart when it exits
    restart_at: float | None = None
    ready_fd: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "state": self.state,
            "ready": self.ready,
            "restarts": self.restarts,
            "started_at": self.started_at,
            "exit_code": self.exit_code,
            "wanted": self.wanted,
            "overrides": self.overrides,
        }


def _log(msg: str) -> None:
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} supervisor: {msg}\n")
    sys.stderr.flush()


class Supervisor:
    def __init__(self, state_dir: Path):
        self.dir = state_dir
        self.procs: dict[str, Proc] = {}
        self.sel = selectors.DefaultSelector()
        self.running = True
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # --- lifecycle ---

    def serve(self) -> None:
        ctl_path = self.dir / "supervisor.sock"
        ctl_path.unlink(missing_ok=True)
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ctl.bind(str(ctl_path))
        ctl.listen(16)
        ctl.setblocking(False)
        self.sel.register(ctl, selectors.EVENT_READ, "ctl")
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        signal.set_wakeup_fd(self._wake_w.fileno())
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        last_check = 0.0
        while self.running:
            for key, _ in self.sel.select(timeout=0.05):
                if key.data == "ctl":
                    self._accept(ctl)
                elif key.data == "wake":
                    try:
                        while self._wake_r.recv(512):
                            pass
                    except BlockingIOError:
                        pass
                elif isinstance(key.data, tuple) and key.data[0] == "ready":
                    self._on_ready_pipe(key.data[1])
            self._reap()
            self._poll_ready()
            self._restart_due()
            now = time.monotonic()
            if now - last_check > 1.0:
                last_check = now
                if not self.dir.is_dir():  # the lab was cleaned away under us
                    _log("state directory gone; shutting down")
                    self.running = False
        self._shutdown()
        ctl.close()
        ctl_path.unlink(missing_ok=True)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.running = False

    def _shutdown(self) -> None:
        alive = [p for p in self.procs.values() if p.pid]
        for proc in alive:
            proc.wanted = False
            self._signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while any(p.pid for p in self.procs.values()) and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)
        for proc in self.procs.values():
            if proc.pid:
                self._signal(proc, signal.SIGKILL)
        while any(p.pid for p in self.procs.values()):
            self._reap(block=True)

    # --- processes ---

    def _start(self, proc: Proc) -> None:
        spec = dict(proc.spec)
        if "pod" in spec:
            spec["pod"] = {**spec["pod"], **proc.overrides}
        ready_r, ready_w = os.pipe() if "pod" in spec else (None, None)
        log_path = self.dir / spec["log"]
        pid = os.fork()
        if pid == 0:  # child: never returns
            code = 1
            try:
                if ready_r is not None:
                    os.close(ready_r)
                _child(spec, log_path, ready_w)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        if ready_w is not None:
            os.close(ready_w)
        proc.pid = pid
        proc.state = "running"
        proc.ready = False
        proc.started_at = time.time()
        proc.exit_code = None
        proc.restart_at = None
        if ready_r is not None:
            os.set_blocking(ready_r, False)
            proc.ready_fd = ready_r
            self.sel.register(ready_r, selectors.EVENT_READ, ("ready", proc.name))
        _log(f"started {proc.name} pid {pid}")

    def _on_ready_pipe(self, name: str) -> None:
        proc = self.procs[name]
        fd = proc.ready_fd
        if fd is None:
            return
        try:
            data = os.read(fd, 16)
        except BlockingIOError:
            return
        if data:
            proc.ready = True
        self._close_ready(proc)

    def _close_ready(self, proc: Proc) -> None:
        if proc.ready_fd is not None:
            self.sel.unregister(proc.ready_fd)
            os.close(proc.ready_fd)
            proc.ready_fd = None

    def _poll_ready(self) -> None:
        for proc in self.procs.values():
            path = proc.spec.get("ready_socket")
            if proc.state != "running" or proc.ready or not path:
                continue
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(self.dir / path) if not path.startswith("/") else path)
                proc.ready = True
            except OSError:
                pass
            finally:
                s.close()

    def _reap(self, block: bool = False) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for proc in self.procs.values():
                if proc.pid == pid:
                    proc.pid = None
                    proc.ready = False
                    proc.exit_code = os.waitstatus_to_exitcode(status)
                    self._close_ready(proc)
                    if proc.wanted and self.running:
                        proc.state = "exited"
                        delay = RESTART_BACKOFF[min(proc.restarts, len(RESTART_BACKOFF) - 1)]
                        proc.restart_at = time.monotonic() + delay
                        _log(f"{proc.name} exited ({proc.exit_code}); restart in {delay}s")
                    else:
                        proc.state = "stopped"
                        _log(f"{proc.name} stopped ({proc.exit_code})")
            if block:
                return

    def _restart_due(self) -> None:
        now = time.monotonic()
        for proc in self.procs.values():
            if proc.state == "exited" and proc.wanted and proc.restart_at and proc.restart_at <= now:
                proc.restarts += 1
                self._start(proc)

    def _signal(self, proc: Proc, sig: int) -> None:
        if proc.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)

    def _stop(self, proc: Proc, sig: int = signal.SIGTERM) -> None:
        proc.wanted = False
        if not proc.pid:
            proc.state = "stopped"
            return
        self._signal(proc, sig)
        deadline = time.monotonic() + STOP_GRACE
        while proc.pid and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.01)
        if proc.pid:
            self._signal(proc, signal.SIGKILL)
            while proc.pid:
                self._reap(block=True)

    # --- control socket ---

    def _accept(self, ctl: socket.socket) -> None:
        try:
            conn, _ = ctl.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(2.0)
            try:
                reply = self._handle(receive_message(conn))
            except Exception as exc:  # a bad request must not take the supervisor down
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            with contextlib.suppress(OSError):
                send_message(conn, reply)

    def _handle(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        if cmd == "status":
            return {"ok": True, "pid": os.getpid(), "processes": [p.view() for p in self.procs.values()]}
        if cmd == "shutdown":
            self.running = False
            return {"ok": True}
        if cmd == "load":  # start every process of processes.json not yet known (lab up sends this)
            spec = json.loads((self.dir / "processes.json").read_text())
            for entry in spec["processes"]:
                if entry["name"] not in self.procs:
                    self.procs[entry["name"]] = Proc(entry["name"], entry)
                    self._start(self.procs[entry["name"]])
            return {"ok": True, "processes": len(self.procs)}
        name = req.get("name")
        if name not in self.procs:
            return {"ok": False, "error": f"no process named {name!r}"}
        proc = self.procs[name]
        if cmd == "stop":
            self._stop(proc, signal.SIGKILL if req.get("kill") else signal.SIGTERM)
            return {"ok": True, "process": proc.view()}
        if cmd in ("start", "restart"):
            if cmd == "restart" or "overrides" in req:
                self._stop(proc)
            if "overrides" in req:
                proc.overrides = dict(req["overrides"] or {})
            proc.wanted = True
            if not proc.pid:
                self._start(proc)
            return {"ok": True, "process": proc.view()}
        if cmd == "signal":
            self._signal(proc, int(req.get("signal", signal.SIGTERM)))
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {cmd!r}"}


def _child(spec: dict[str, Any], log_path: Path, ready_w: int | None) -> None:
    """In the forked child: detach from the supervisor's plumbing, enter the namespace, run."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    if os.getppid() == 1:  # the supervisor died between fork and prctl
        os._exit(1)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    # Nothing of the supervisor's (control socket, selector, other pods' pipes) leaks into the child.
    if ready_w is None:
        os.closerange(3, 65536)
    else:
        os.closerange(3, ready_w)
        os.closerange(ready_w + 1, 65536)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # HAProxy sizes itself to maxconn; give it what the hard limit allows
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    enter_netns(spec["netns"])
    if "argv" in spec:
        os.execvp(spec["argv"][0], spec["argv"])
    if "pod" in spec:
        _run_pod(spec["pod"], ready_w)
        return
    raise ValueError(f"process spec has neither argv nor pod: {spec}")


def _run_pod(pod: dict[str, Any], ready_w: int | None) -> None:
    """A pod's Thrift server: listen inside the pod's namespace, tell the supervisor, serve."""
    from labservices.server import PodIdentity, serve

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", int(pod["port"])))
    listener.listen(int(pod.get("backlog", 128)))
    if ready_w is not None:
        os.write(ready_w, b"1")
        os.close(ready_w)
    identity = PodIdentity(service=pod["service"], pod=pod["pod"], node=pod["node"], az=pod["az"], pod_ip=pod["ip"])
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    serve(listener, identity, accept_delay=float(pod.get("accept_delay", 0.0)))


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m lab.runtime.supervisor STATE_DIR", file=sys.stderr)
        return 2
    try:
        import labservices.server  # noqa: F401  pre-import once: pods fork with it loaded
    except ImportError as exc:
        _log(f"cannot import the Thrift service: {exc}")
    sup = Supervisor(Path(args[0]))
    try:
        sup.serve()
    except OSError as exc:
        if exc.errno != errno.EINTR:
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
