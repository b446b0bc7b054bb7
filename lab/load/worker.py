"""One load worker process: enters the source host's namespace, sends its share of an open-loop schedule.

Runs asyncio with one Protocol per TCP connection (no per-read epoll changes) and checks every reply
byte for byte. Reports one slice per second (by completion time) to the parent; dies with the parent
(PR_SET_PDEATHSIG), ignores Ctrl-C (the parent decides how to stop) and leaves no socket behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import json
import os
import pickle
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from lab.load.outcomes import OK, BadReply, PeerClosed, classify
from lab.load.schedule import Ramp
from lab.load.stats import HISTOGRAMS, encode, new_histogram, record

PR_SET_PDEATHSIG = 1
SCHEDULE_SLACK_S = 0.0  # never send early: latency is measured from the due time


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


class _Conn(asyncio.Protocol):
    """One client connection; `call` sends the request and waits for exactly the expected reply."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.expect = 0
        self.waiter: asyncio.Future | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        w = self.waiter
        if w is not None and not w.done() and len(self.buf) >= self.expect:
            w.set_result(None)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(exc if exc is not None else PeerClosed("connection closed by peer"))

    async def call(self, request: bytes, reply: bytes, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        if self.lost or self.transport is None:
            raise PeerClosed("connection closed by peer")
        self.buf.clear()
        self.expect = len(reply)
        self.waiter = w = loop.create_future()
        timer = loop.call_later(timeout, lambda: w.done() or w.set_exception(TimeoutError()))
        try:
            self.transport.write(request)
            await w
        finally:
            timer.cancel()
            self.waiter = None
        if self.buf != reply:
            raise BadReply(bytes(self.buf[:64]))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Slice:
    __slots__ = ("outcomes", "details", "hists", "scheduled")

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.details: dict[str, int] = {}
        self.hists = {name: None for name in HISTOGRAMS}
        self.scheduled = 0

    def hist(self, name: str):
        h = self.hists[name]
        if h is None:
            h = self.hists[name] = new_histogram()
        return h


class Engine:
    def __init__(self, spec: WorkerSpec, send, stop, abort, t0: float) -> None:
        self.spec = spec
        self.send = send
        self.stop = stop
        self.abort = abort
        self.t0 = t0  # monotonic start, shared by all workers
        self.slices: dict[int, _Slice] = {}
        self.shipped = -1
        self.inflight: set[asyncio.Task] = set()
        self.targets = itertools.cycle(spec.targets)
        self.not_sent = 0
        self.connections = 0

    # --- bookkeeping ---

    def _slice(self, now: float) -> _Slice:
        idx = max(0, int((now - self.t0) / self.spec.slice_s))
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
            self.send(
                (
                    "slice",
                    self.spec.index,
                    idx,
                    {
                        "outcomes": s.outcomes,
                        "details": s.details,
                        "scheduled": s.scheduled,
                        "histograms": {n: (encode(h) if h is not None else "") for n, h in s.hists.items()},
                    },
                )
            )
            self.shipped = idx

    # --- connections and requests ---

    async def _connect(self) -> tuple[_Conn, float]:
        loop = asyncio.get_running_loop()
        host, port = next(self.targets)
        c0 = time.monotonic()
        async with asyncio.timeout(self.spec.connect_timeout):
            _, conn = await loop.create_connection(_Conn, host, port)
        self.connections += 1
        return conn, time.monotonic() - c0

    async def _per_request(self, due: float, sem: asyncio.Semaphore) -> None:
        spec = self.spec
        async with sem:
            conn = None
            connect_s = None
            connecting = True
            try:
                conn, connect_s = await self._connect()
                connecting = False
                r0 = time.monotonic()
                await conn.call(spec.request, spec.reply, spec.timeout)
                self._done(due, OK, None, connect_s, time.monotonic() - r0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                outcome, detail = classify(exc, connecting)
                self._done(due, outcome, detail, connect_s, None)
            finally:
                if conn is not None:
                    conn.close()  # a normal close (FIN), as a Thrift client's TSocket.close() does

    async def _pooled(self, due: float, idle: asyncio.Queue) -> None:
        spec = self.spec
        slot: list = await idle.get()  # [conn or None]; waiting here counts in latency (open loop)
        connect_s = None
        connecting = False
        try:
            if slot[0] is None or slot[0].lost:
                connecting = True
                slot[0], connect_s = await self._connect()
                connecting = False
            r0 = time.monotonic()
            await slot[0].call(spec.request, spec.reply, spec.timeout)
            self._done(due, OK, None, connect_s, time.monotonic() - r0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outcome, detail = classify(exc, connecting)
            self._done(due, outcome, detail, connect_s, None)
            if slot[0] is not None:
                slot[0].close()  # out of step with the server after any error: reconnect next time
            slot[0] = None
        finally:
            idle.put_nowait(slot)

    # --- the schedule ---

    async def run(self) -> dict[str, Any]:
        spec = self.spec
        ramp = spec.ramp
        total = ramp.total
        sem = asyncio.Semaphore(spec.max_inflight)
        idle: asyncio.Queue = asyncio.Queue()
        slots = [[None] for _ in range(max(1, spec.pool))]
        for slot in slots:
            idle.put_nowait(slot)
        reporter = asyncio.create_task(self._reporter())
        k = spec.index
        stopped = False
        while k < total:
            now = time.monotonic()
            due = self.t0 + ramp.due(k)
            if due > now + SCHEDULE_SLACK_S:
                if self.stop.is_set():
                    stopped = True
                    break
                await asyncio.sleep(due - now)
                continue
            self._slice(due).scheduled += 1
            if len(self.inflight) >= spec.max_inflight * 4:
                self.not_sent += 1  # the client itself is overwhelmed; never silently: reported
            else:
                coro = self._pooled(due, idle) if spec.mode == "pooled" else self._per_request(due, sem)
                task = asyncio.ensure_future(coro)
                self.inflight.add(task)
                task.add_done_callback(self.inflight.discard)
            k += spec.workers
        if stopped:
            self.not_sent += len(range(k, total, spec.workers))
        # Let requests in flight finish (bounded by their timeouts) unless told to abort.
        deadline = time.monotonic() + spec.connect_timeout + spec.timeout + 1.0
        while self.inflight and time.monotonic() < deadline and not self.abort.is_set():
            await asyncio.sleep(0.05)
        unfinished = len(self.inflight)
        for task in list(self.inflight):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self.inflight, return_exceptions=True)
        for slot in slots:
            if slot[0] is not None:
                slot[0].close()
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        self._ship(max(self.slices, default=self.shipped) + 1)
        await asyncio.sleep(0)  # let transports finish closing
        return {"unfinished": unfinished, "not_sent": self.not_sent, "connections": self.connections}

    async def _reporter(self) -> None:
        while True:
            now = time.monotonic()
            idx = int((now - self.t0) / self.spec.slice_s)
            self._ship(idx)
            nxt = self.t0 + (idx + 1) * self.spec.slice_s + 0.02
            await asyncio.sleep(max(0.01, min(nxt - now, 0.1)))
            if self.abort.is_set():
                for task in list(self.inflight):
                    task.cancel()


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _send(message: tuple) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def main() -> None:
    """`python -m lab.load.worker`: a pickled spec, then "go <t0>" on stdin; JSON lines out.

    SIGUSR1: stop scheduling and let requests in flight finish; SIGUSR2: abort them too.
    """
    _die_with_parent()
    parent = os.getppid()
    stop, abort = threading.Event(), threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and tells us what to do
    signal.signal(signal.SIGUSR1, lambda *_: stop.set())
    signal.signal(signal.SIGUSR2, lambda *_: (stop.set(), abort.set()))
    size = int(sys.stdin.buffer.readline())
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
    if len(line) != 2 or line[0] != "go":
        return  # the parent gave up before the start
    engine = Engine(spec, _send, stop, abort, float(line[1]))
    try:
        final = asyncio.run(engine.run())
    except BaseException as exc:
        _send(("error", spec.index, f"{type(exc).__name__}: {exc}"))
        return
    _send(("done", spec.index, final))


if __name__ == "__main__":
    main()
