"""One load worker process: enters the source host's namespace, sends its share of an open-loop schedule.

A small epoll loop drives non-blocking sockets directly (asyncio's per-connection machinery cost several
times more CPU per request than the lab's own HAProxy: the generator must not be the bottleneck). Every
reply is checked byte for byte. Reports one slice per second (by completion time) to the parent; dies with
the parent (PR_SET_PDEATHSIG), ignores Ctrl-C (the parent decides how to stop) and leaves no socket behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import heapq
import json
import os
import pickle
import resource
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from lab.load.outcomes import OK, BadReply, PeerClosed, classify
from lab.load.schedule import Ramp
from lab.load.stats import HISTOGRAMS, encode, new_histogram, record

PR_SET_PDEATHSIG = 1
IN, OUT = select.EPOLLIN, select.EPOLLOUT
ERR = select.EPOLLERR | select.EPOLLHUP
CONNECTING, IDLE, BUSY = 0, 1, 2


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    workers: int
    netns: str
    targets: tuple[tuple[str, int], ...]  # new connections go round robin over these (DNS round robin)
    ramp: Ramp
    mode: str  # "pooled" | "per-request"
    pool: int  # this worker's pooled connections
    connect_timeout: float
    timeout: float
    request: bytes
    reply: bytes
    slice_s: float = 1.0
    max_inflight: int = 20000


class _Conn:
    """One client socket and the request it carries (at most one: Thrift calls do not overlap)."""

    __slots__ = ("sock", "fd", "state", "due", "t0", "connect_s", "out", "buf", "gen", "events")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.state = CONNECTING
        self.due = 0.0
        self.t0 = 0.0
        self.connect_s: float | None = None
        self.out = memoryview(b"")
        self.buf = bytearray()
        self.gen = 0  # the live timer's id; any other timer for this fd is void
        self.events: int | None = 0  # None: not registered with epoll (parked in the pool)


class _Slice:
    __slots__ = ("outcomes", "details", "hists", "scheduled")

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.details: dict[str, int] = {}
        self.hists = dict.fromkeys(HISTOGRAMS)
        self.scheduled = 0

    def hist(self, name: str):
        h = self.hists[name]
        if h is None:
            h = self.hists[name] = new_histogram()
        return h


class Engine:
    """The open-loop schedule of one worker over an epoll set: run() returns when done, stopped or aborted."""

    def __init__(self, spec: WorkerSpec, send, stop, abort, t0: float, grid: float | None = None) -> None:
        self.spec = spec
        self.send = send
        self.stop = stop
        self.abort = abort
        self.t0 = t0  # monotonic start, shared by all workers
        # Slices start on this monotonic grid (the parent puts it on whole wall-clock seconds, where a
        # recorder's intervals also start, so client and ELB figures cover the same time).
        self.grid = t0 if grid is None else grid
        self.slices: dict[int, _Slice] = {}
        self.shipped = -1
        self.ep = select.epoll()
        self.conns: dict[int, _Conn] = {}  # fd -> connection
        self.idle: deque[_Conn | None] = deque()  # pooled: free slots (None: not connected yet)
        self.waiting: deque[float] = deque()  # due times of requests waiting for a connection
        self.timers: list[tuple[float, int, int, int]] = []  # (deadline, seq, fd, gen)
        self.timer_seq = 0
        self.target = 0
        self.busy = 0  # requests on a connection right now
        self.not_sent = 0
        self.connections = 0

    # --- bookkeeping ---

    def _slice(self, t: float) -> _Slice:
        idx = max(0, int((t - self.grid) / self.spec.slice_s))
        s = self.slices.get(idx)
        if s is None:
            s = self.slices[idx] = _Slice()
        return s

    def _done(self, due: float, outcome: str, detail: str | None, connect_s: float | None, rpc_s: float | None):
        now = time.monotonic()
        s = self._slice(now)
        s.outcomes[outcome] = s.outcomes.get(outcome, 0) + 1
        if detail and outcome != OK:
            key = f"{outcome}:{detail}"
            s.details[key] = s.details.get(key, 0) + 1
        if connect_s is not None:
            record(s.hist("connect"), connect_s)
        if outcome == OK:
            record(s.hist("latency"), now - due)
            if rpc_s is not None:
                record(s.hist("rpc"), rpc_s)

    def _ship(self, upto: int) -> None:
        """Send every slice before index `upto` (empty ones too: the parent counts them to know a slice is whole)."""
        for idx in range(self.shipped + 1, upto):
            s = self.slices.pop(idx, None) or _Slice()
            payload = {
                "outcomes": s.outcomes,
                "details": s.details,
                "scheduled": s.scheduled,
                "histograms": {n: (encode(h) if h is not None else "") for n, h in s.hists.items()},
            }
            self.send(("slice", self.spec.index, idx, payload))
            self.shipped = idx

    # --- connections ---

    def _timer(self, conn: _Conn, seconds: float) -> None:
        # Generations are unique across connections: a closed socket's fd is soon reused by a new one.
        self.timer_seq += 1
        conn.gen = self.timer_seq
        heapq.heappush(self.timers, (time.monotonic() + seconds, self.timer_seq, conn.fd, conn.gen))

    def _watch(self, conn: _Conn, events: int) -> None:
        if conn.events is None:
            self.ep.register(conn.fd, events)
            conn.events = events
        elif conn.events != events:
            self.ep.modify(conn.fd, events)
            conn.events = events

    def _park(self, conn: _Conn) -> None:
        """An idle pooled connection is not watched, as a Thrift client pool does not watch its sockets
        (TSocket.isOpen() stays true after the server closes): the next call on it finds out, and fails."""
        self.ep.unregister(conn.fd)
        conn.events = None

    def _open(self, due: float) -> _Conn | None:
        """A new non-blocking connection, connecting; None if it failed at once (the request is then done)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small requests, answered before the next
        addr = self.spec.targets[self.target % len(self.spec.targets)]
        self.target += 1
        conn = _Conn(sock)
        conn.due, conn.t0 = due, time.monotonic()
        err = sock.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self._done(due, *classify(OSError(err, os.strerror(err)), True), None, None)
            return None
        self.conns[conn.fd] = conn
        conn.events = OUT
        self.ep.register(conn.fd, OUT)
        self.connections += 1
        self._timer(conn, self.spec.connect_timeout)
        return conn

    def _close(self, conn: _Conn) -> None:
        self.conns.pop(conn.fd, None)
        with contextlib.suppress(OSError):
            self.ep.unregister(conn.fd)
        conn.gen = 0
        conn.sock.close()  # a normal close (FIN), as a Thrift client's TSocket.close() does

    def _begin(self, conn: _Conn) -> None:
        """Connected: send the request and wait for the reply."""
        conn.state = BUSY
        conn.buf.clear()
        conn.t0 = time.monotonic()
        conn.out = memoryview(self.spec.request)
        self._timer(conn, self.spec.timeout)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        try:
            n = conn.sock.send(conn.out)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._fail(conn, exc)
            return
        conn.out = conn.out[n:]
        self._watch(conn, IN | OUT if len(conn.out) else IN)

    def _finish(self, conn: _Conn, outcome: str, detail: str | None) -> None:
        rpc_s = time.monotonic() - conn.t0 if outcome == OK else None
        self._done(conn.due, outcome, detail, conn.connect_s, rpc_s)
        self.busy -= 1
        if self.spec.mode == "pooled" and outcome == OK:
            conn.state, conn.connect_s, conn.gen = IDLE, None, 0
            self._park(conn)
            self.idle.append(conn)
            return
        self._close(conn)
        if self.spec.mode == "pooled":
            self.idle.append(None)  # out of step with the server after any error: reconnect on next use

    def _fail(self, conn: _Conn, exc: BaseException) -> None:
        self._finish(conn, *classify(exc, conn.state == CONNECTING))

    def _event(self, conn: _Conn, ev: int) -> None:
        if conn.state == CONNECTING:
            err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(conn, OSError(err, os.strerror(err)))
                return
            conn.connect_s = time.monotonic() - conn.t0
            self._begin(conn)
            return
        if ev & OUT and len(conn.out):
            self._write(conn)
            if self.conns.get(conn.fd) is not conn:
                return  # the write failed and the connection is gone
        if ev & (IN | ERR):
            try:
                data = conn.sock.recv(262144)
            except BlockingIOError:
                return
            except OSError as exc:
                self._fail(conn, exc)
                return
            if not data:
                self._fail(conn, PeerClosed("connection closed by peer"))
                return
            conn.buf += data
            want = len(self.spec.reply)
            if len(conn.buf) >= want:
                if conn.buf == self.spec.reply:
                    self._finish(conn, OK, None)
                else:
                    self._fail(conn, BadReply(bytes(conn.buf[:64])))

    def _dispatch(self) -> None:
        """Give waiting requests a connection: a free pooled one, or a new one (per-request)."""
        spec = self.spec
        while self.waiting:
            if spec.mode == "pooled":
                if not self.idle:
                    return
                slot = self.idle.popleft()
                due = self.waiting.popleft()
                self.busy += 1
                if slot is None:
                    conn = self._open(due)
                    if conn is None:
                        self.busy -= 1
                        self.idle.append(None)
                else:
                    slot.due = due
                    self._begin(slot)
            else:
                if self.busy >= spec.max_inflight:
                    return
                due = self.waiting.popleft()
                self.busy += 1
                if self._open(due) is None:
                    self.busy -= 1

    def _expire(self, now: float) -> None:
        while self.timers and self.timers[0][0] <= now:
            _, _, fd, gen = heapq.heappop(self.timers)
            conn = self.conns.get(fd)
            if conn is not None and conn.gen == gen and conn.state != IDLE:
                self._fail(conn, TimeoutError())

    # --- the schedule ---

    def run(self) -> dict[str, Any]:
        spec = self.spec
        ramp = spec.ramp
        total = ramp.total
        if spec.mode == "pooled":
            self.idle.extend([None] * max(1, spec.pool))
        k = spec.index
        next_due = self.t0 + ramp.due(k) if k < total else float("inf")
        stopping_at: float | None = None
        unfinished = 0
        while True:
            now = time.monotonic()
            if stopping_at is None and self.stop.is_set():
                self.not_sent += len(range(k, total, spec.workers))
                k, next_due = total, float("inf")
                stopping_at = now + spec.connect_timeout + spec.timeout + 1.0
            while next_due <= now:  # never early: latency is measured from the due time
                due_slice = self._slice(next_due)
                due_slice.scheduled += 1
                # How late this loop got to the request: the generator's own lag (a starved CPU), not the server's.
                record(due_slice.hist("send_lag"), now - next_due)
                if len(self.waiting) >= spec.max_inflight * 4:
                    self.not_sent += 1  # the client itself is overwhelmed; never silently: reported
                else:
                    self.waiting.append(next_due)
                k += spec.workers
                next_due = self.t0 + ramp.due(k) if k < total else float("inf")
            self._dispatch()
            self._expire(now)
            self._ship(int((now - self.grid) / spec.slice_s))
            if k >= total and not self.waiting and self.busy == 0:
                break
            if self.abort.is_set() or (stopping_at is not None and now >= stopping_at):
                unfinished = self.busy + len(self.waiting)
                break
            wake = min(next_due, self.timers[0][0] if self.timers else now + 0.1, now + 0.1)
            for fd, ev in self.ep.poll(max(0.0, wake - time.monotonic())):
                conn = self.conns.get(fd)
                if conn is not None:
                    self._event(conn, ev)
        for conn in list(self.conns.values()):
            self._close(conn)
        self.ep.close()
        self._ship(max(self.slices, default=self.shipped) + 1)
        return {"unfinished": unfinished, "not_sent": self.not_sent, "connections": self.connections}


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _send(message: tuple) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def main() -> None:
    """`python -m lab.load.worker`: a pickled spec, then "go <t0> <grid>" on stdin; JSON lines out.

    SIGUSR1: stop scheduling and let requests in flight finish; SIGUSR2: abort them too.
    """
    _die_with_parent()
    parent = os.getppid()
    stop, abort = threading.Event(), threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and tells us what to do
    signal.signal(signal.SIGUSR1, lambda *_: stop.set())
    signal.signal(signal.SIGUSR2, lambda *_: (stop.set(), abort.set()))
    header = sys.stdin.buffer.readline()
    if not header.strip().isdigit():
        return  # not started by a LoadRun (or it died first): nothing to do
    size = int(header)
    spec: WorkerSpec = pickle.loads(sys.stdin.buffer.read(size))
    if os.getppid() != parent:
        return
    try:
        from lab.hosts import enter_netns

        enter_netns(spec.netns)  # one thread so far: every socket this process makes is in the lab host
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except BaseException as exc:
        _send(("error", spec.index, f"{type(exc).__name__}: {exc}"))
        return
    _send(("ready", spec.index, None))
    line = sys.stdin.readline().split()
    if len(line) != 3 or line[0] != "go":
        return  # the parent gave up before the start
    engine = Engine(spec, _send, stop, abort, float(line[1]), float(line[2]))
    try:
        final = engine.run()
    except BaseException as exc:
        _send(("error", spec.index, f"{type(exc).__name__}: {exc}"))
        return
    _send(("done", spec.index, final))


if __name__ == "__main__":
    main()
