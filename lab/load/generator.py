"""A load run: where it goes, its worker processes, the per-second client slices and the final result.

Open loop: request k is due at a time fixed by the schedule (constant rate or linear ramp) and its
latency is measured from that time, so a stall shows as latency instead of hiding in a slower send rate.
Workers are processes (the generator must not be the bottleneck) that enter the source host's network
namespace; they die with this process and are always reaped, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import queue as queue_mod
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from lab.errors import InputError, LabError
from lab.lab import Lab
from lab.load import wire
from lab.load.outcomes import OK, OUTCOMES
from lab.load.schedule import Ramp
from lab.load.stats import HISTOGRAMS, ClientSlice, Tally
from lab.load.worker import WorkerSpec
from lab.rpc import VIAS, resolve

MODES = ("pooled", "per-request")
MAX_RATE = 100_000
MAX_DURATION = 24 * 3600.0
READY_TIMEOUT = 15.0
# One worker keeps up with this many requests/s on this kind of machine (asyncio, one core); above, add one.
RATE_PER_WORKER = 3000


@dataclass(frozen=True)
class LoadSpec:
    """What to send, how fast and how: the inputs of `lab load`."""

    service: str
    rate: float
    duration: float
    rate_end: float | None = None
    connections: str = "pooled"
    pool: int = 16
    connect_timeout: float = 1.0  # seconds
    timeout: float = 2.0  # seconds, for the RPC once connected
    method: str = "ping"
    payload: int = 0  # echo: bytes; work: milliseconds
    via: str = "elb"
    target: str | None = None
    source: str | None = None
    workers: int | None = None

    def validate(self) -> None:
        """Raise InputError naming the bad field and how to fix it (no lab needed)."""
        if not (self.rate > 0) or math.isinf(self.rate):
            raise InputError(f"--rate must be > 0 requests per second, got {self.rate:g}")
        if self.rate > MAX_RATE or (self.rate_end or 0) > MAX_RATE:
            raise InputError(f"--rate must be at most {MAX_RATE}")
        if self.rate_end is not None and self.rate_end < 0:
            raise InputError(f"--rate-end must be >= 0, got {self.rate_end:g}")
        if not (0 < self.duration <= MAX_DURATION):
            raise InputError(f"--duration must be > 0 and at most 24h, got {self.duration:g}s")
        if self.connections not in MODES:
            raise InputError(f"--connections {self.connections!r}: choose pooled or per-request")
        if self.pool < 1:
            raise InputError(f"--pool must be >= 1, got {self.pool}")
        if not (0 < self.connect_timeout <= 600) or not (0 < self.timeout <= 600):
            raise InputError("--connect-timeout and --timeout must be > 0 and at most 10m")
        if self.method not in wire.METHODS:
            raise InputError(f"--method {self.method!r}: choose one of {', '.join(wire.METHODS)}")
        if self.payload < 0 or self.payload > 16 * 1024 * 1024:
            raise InputError(f"--payload must be 0..16777216, got {self.payload}")
        if self.via not in VIAS:
            raise InputError(f"--via {self.via!r}: choose one of {', '.join(VIAS)}")
        if self.workers is not None and not 1 <= self.workers <= 16:
            raise InputError(f"--workers must be 1..16, got {self.workers}")

    @property
    def ramp(self) -> Ramp:
        return Ramp(self.rate, self.duration, self.rate_end)

    def worker_count(self) -> int:
        if self.workers:
            return self.workers
        peak = max(self.rate, self.rate_end or 0)
        return max(1, min(os.cpu_count() or 1, math.ceil(peak / RATE_PER_WORKER)))


def resolve_targets(lab: Lab, spec: LoadSpec) -> tuple[str, list[tuple[str, str, int]]]:
    """(source host, [(hop, ip, port)...]): every ELB node (DNS round robin) or node, or the chosen pod(s)."""
    topo = lab.topology
    if spec.service not in {s.name for s in topo.services}:
        raise InputError(f"unknown service '{spec.service}'; services: {', '.join(s.name for s in topo.services)}")
    if spec.target:
        hops = [spec.target]
    elif spec.via == "elb":
        hops = [e.name for e in topo.elb_nodes]
    elif spec.via == "node":
        hops = [n.name for n in topo.k8s_nodes]
    else:
        hops = [p.name for p in topo.pods_of(spec.service)]
    targets = [resolve(lab, spec.service, spec.via, hop, spec.source) for hop in hops]
    if not targets:
        raise InputError(f"service '{spec.service}' has nowhere to send to via {spec.via}")
    # Pods: one source for all (a node reaches every pod over the VPC's pod routes); the first pod's node.
    source = targets[0].source
    return source.name, [(t.hop, t.ip, t.port) for t in targets]


@dataclass
class LoadResult:
    spec: LoadSpec
    source: str
    targets: list[str]
    started: float
    ended: float
    total: ClientSlice
    slices: list[ClientSlice]  # in memory: all, or the last LoadRun.history
    workers: int
    slice_count: int = 0  # completed in the run
    connections: int = 0
    unfinished: int = 0
    not_sent: int = 0
    interrupted: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return self.total.requests

    @property
    def ok_ratio(self) -> float:
        return self.total.outcomes.get(OK, 0) / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The summary: its size does not grow with the run's length (the per-second series is per_second())."""
        spec = asdict(self.spec)
        span = max(self.ended - self.started, 1e-9)
        return {
            "spec": spec,
            "source": self.source,
            "targets": self.targets,
            "workers": self.workers,
            "started": round(self.started, 3),
            "ended": round(self.ended, 3),
            "seconds": round(span, 3),
            "interrupted": self.interrupted,
            "scheduled": spec_total(self.spec),
            "requests": self.requests,
            "achieved_rate": round(self.requests / span, 1),
            "ok_ratio": round(self.ok_ratio, 6),
            "outcomes": {k: self.total.outcomes.get(k, 0) for k in OUTCOMES},
            "details": dict(self.total.details),
            "connections_opened": self.connections,
            "unfinished": self.unfinished,
            "not_sent": self.not_sent,
            "histograms_ms": {name: self.total.summary(name) for name in HISTOGRAMS},
            "hdr": dict(self.total.histograms),
            "slices": self.slice_count or len(self.slices),
            "errors": self.errors,
        }

    def per_second(self) -> Iterator[dict[str, Any]]:
        """One dict per slice kept (summaries computed when the slice completed: nothing is walked again here)."""
        return (s.to_dict() for s in self.slices)


def spec_total(spec: LoadSpec) -> int:
    return spec.ramp.total


class LoadRun:
    """One open-loop run: start() in the background, slices() while it runs, wait() or stop() for the result."""

    def __init__(self, lab: Lab, spec: LoadSpec, slice_s: float = 1.0, history: int | None = None):
        """history: keep only the last `history` completed slices in memory (None: all of them). A long run
        that streams its slices elsewhere sets it, so its memory does not grow with its length; readers
        (slices(), take_client) must then keep up within that many slices."""
        spec.validate()
        self.lab = lab
        self.spec = spec
        self.slice_s = slice_s
        self.source, self.targets = resolve_targets(lab, spec)
        self.call = wire.build_call(spec.method, payload=spec.payload, work_ms=spec.payload)
        self.n_workers = spec.worker_count()
        self._procs: list = []
        self._lock = threading.Condition()
        self.history = history
        self._slices: list[ClientSlice] = []  # the kept ones; _dropped older ones are gone (absolute index)
        self._dropped = 0
        self._total = Tally()
        self._pending: dict[int, list[dict]] = {}
        self._shipped = [-1] * self.n_workers
        self._finals: dict[int, dict] = {}
        self._errors: list[str] = []
        self._taken = 0
        self._done = False
        self._interrupted = False
        self._collector: threading.Thread | None = None
        self._listeners: list[Callable[[ClientSlice], None]] = []
        self.t0_wall = 0.0
        self.t0_mono = 0.0
        self.grid_wall = 0.0
        self.ended = 0.0

    # --- lifecycle ---

    def start(self) -> None:
        host = self.lab.host(self.source)
        addrs = tuple((ip, port) for _, ip, port in self.targets)
        per_worker_pool = max(1, math.ceil(self.spec.pool / self.n_workers))
        self._queue: queue_mod.Queue = queue_mod.Queue()
        ready: set[int] = set()
        try:
            for i in range(self.n_workers):
                # Each worker starts at a different target so new connections spread from the first one on.
                rotated = addrs[i % len(addrs) :] + addrs[: i % len(addrs)]
                ws = WorkerSpec(
                    index=i,
                    workers=self.n_workers,
                    netns=host.netns,
                    targets=rotated,
                    ramp=self.spec.ramp,
                    mode=self.spec.connections,
                    pool=per_worker_pool,
                    connect_timeout=self.spec.connect_timeout,
                    timeout=self.spec.timeout,
                    request=self.call.request,
                    reply=self.call.reply,
                    slice_s=self.slice_s,
                )
                # A fresh interpreter per worker (not fork: the caller may have threads; not multiprocessing's
                # spawn: it re-imports the caller's __main__).
                proc = subprocess.Popen(
                    [sys.executable, "-m", "lab.load.worker"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,  # Ctrl-C reaches only us; we decide how the workers stop
                )
                self._procs.append(proc)
                blob = pickle.dumps(ws)
                proc.stdin.write(b"%d\n" % len(blob) + blob)
                proc.stdin.flush()
                threading.Thread(target=self._read, args=(i, proc), name=f"lab-load-read-{i}", daemon=True).start()
            deadline = time.monotonic() + READY_TIMEOUT
            while len(ready) < self.n_workers:
                try:
                    kind, idx, payload = self._queue.get(timeout=max(0.05, deadline - time.monotonic()))
                except queue_mod.Empty:
                    raise LabError(f"load workers did not start within {READY_TIMEOUT:g}s") from None
                if kind in ("error", "exit"):
                    raise LabError(f"load worker {idx} failed to start: {payload}")
                if kind == "ready":
                    ready.add(idx)
            # A common start a little ahead, so no worker begins late (late = latency charged to the lab).
            self.t0_mono = time.monotonic() + 0.05
            self.t0_wall = time.time() + 0.05
            # Slices on whole wall-clock seconds (before the start: slice 0 is the start's second).
            self.grid_wall = math.floor(self.t0_wall / self.slice_s) * self.slice_s
            grid_mono = self.t0_mono - (self.t0_wall - self.grid_wall)
            for proc in self._procs:
                proc.stdin.write(f"go {self.t0_mono!r} {grid_mono!r}\n".encode())
                proc.stdin.flush()
        except BaseException:
            self._kill()
            raise
        self._collector = threading.Thread(target=self._collect, name="lab-load-collector", daemon=True)
        self._collector.start()

    def _read(self, index: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            try:
                self._queue.put(tuple(json.loads(line)))
            except ValueError:
                continue
        proc.wait()
        err = proc.stderr.read().decode(errors="replace").strip().splitlines()
        self._queue.put(("exit", index, f"exit code {proc.returncode}" + (f": {err[-1]}" if err else "")))

    def _signal(self, sig: int) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    def stop(self, abort: bool = False) -> LoadResult:
        """Stop scheduling; with abort, also cancel requests in flight. Returns the (partial) result."""
        self._interrupted = True
        self._signal(signal.SIGUSR2 if abort else signal.SIGUSR1)
        return self.wait(timeout=3.0 if abort else None)

    def wait(self, timeout: float | None = None) -> LoadResult:
        """Block until every worker has finished (or `timeout`), reap them, and build the result."""
        limit = None if timeout is None else time.monotonic() + timeout
        try:
            with self._lock:
                while not self._done:
                    left = None if limit is None else limit - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._lock.wait(timeout=0.2 if left is None else min(0.2, left))
        finally:
            self.close()
        return self.result()

    def close(self) -> None:
        """Reap the workers (killing any still running) and the collector; idempotent."""
        deadline = time.monotonic() + 2.0
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        self._kill()
        if self._collector is not None:
            self._collector.join(timeout=2.0)
        if not self.ended:
            self.ended = time.time()

    def _kill(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2.0)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                with contextlib.suppress(OSError):
                    pipe.close()

    def __enter__(self) -> LoadRun:
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._done:
            self.stop(abort=True)
        self.close()

    # --- the per-slice stream ---

    def _collect(self) -> None:
        finished: set[int] = set()
        while len(finished) < self.n_workers:
            kind, idx, *rest = self._queue.get()
            if kind == "slice":
                slice_idx, payload = rest
                with self._lock:
                    self._pending.setdefault(slice_idx, []).append(payload)
                    self._shipped[idx] = max(self._shipped[idx], slice_idx)
            elif kind == "done":
                self._finals[idx] = rest[0]
            elif kind == "error" or (kind == "exit" and idx not in self._finals):
                self._errors.append(f"load worker {idx}: {rest[0]}")
            if kind == "exit":  # its last words are in: whatever it shipped still counts
                finished.add(idx)
                with self._lock:
                    self._shipped[idx] = 1 << 30
            self._complete_slices()
        with self._lock:
            self._complete_slices(final=True)
            self.ended = time.time()
            self._done = True
            self._lock.notify_all()

    def _complete_slices(self, final: bool = False) -> None:
        with self._lock:
            upto = min(self._shipped)
            ready = sorted(i for i in self._pending if i <= upto or final)
            new = []
            for i in ready:
                parts = [ClientSlice.from_dict(p) for p in self._pending.pop(i)]
                t_start = self.grid_wall + i * self.slice_s
                s = ClientSlice.merged(parts, t_start, t_start + self.slice_s)
                self._total.add(s)  # the run's total grows slice by slice: nothing is left to add at the end
                self._slices.append(s)
                new.append(s)
            if self.history is not None and len(self._slices) > 2 * self.history:  # trimmed in batches
                cut = len(self._slices) - self.history
                del self._slices[:cut]
                self._dropped += cut
            if new:
                self._lock.notify_all()
        for s in new:
            for fn in list(self._listeners):
                with contextlib.suppress(Exception):
                    fn(s)

    def on_slice(self, fn: Callable[[ClientSlice], None]) -> None:
        """Call fn(slice) for every completed one-second slice, from the collector thread."""
        self._listeners.append(fn)

    def slices(self, poll: float = 0.2) -> Iterator[ClientSlice]:
        """Completed slices as they come, until the run ends."""
        seen = 0  # absolute slice index
        while True:
            with self._lock:
                while seen >= self._completed and not self._done:
                    self._lock.wait(timeout=poll)
                batch = self._slices[max(0, seen - self._dropped) :]
                seen = self._completed
                done = self._done
            yield from batch
            if done and seen >= self._completed:
                return

    def take_client(self, until_wall: float) -> ClientSlice | None:
        """Merge the completed slices that end by `until_wall` and were not taken yet (for the recorder)."""
        with self._lock:
            batch = []
            self._taken = max(self._taken, self._dropped)
            while (
                self._taken < self._completed and self._slices[self._taken - self._dropped].t_end <= until_wall + 1e-6
            ):
                batch.append(self._slices[self._taken - self._dropped])
                self._taken += 1
        if not batch:
            return None
        return ClientSlice.merged(batch, batch[0].t_start, batch[-1].t_end)

    @property
    def done(self) -> bool:
        return self._done

    @property
    def drained(self) -> bool:
        """Finished, and every slice taken by take_client (a recorder may let go of it)."""
        with self._lock:
            return self._done and self._taken >= self._completed

    @property
    def _completed(self) -> int:
        return self._dropped + len(self._slices)

    def snapshot(self) -> list[ClientSlice]:
        """The completed slices kept in memory (all of them unless `history` is set)."""
        with self._lock:
            return list(self._slices)

    # --- the result ---

    def result(self) -> LoadResult:
        with self._lock:
            slices = list(self._slices)
            finals = dict(self._finals)
            total = self._total.slice(self.t0_wall, self.ended or time.time())
            count = self._completed
        return LoadResult(
            spec=self.spec,
            source=self.source,
            targets=[f"{hop} ({ip}:{port})" for hop, ip, port in self.targets],
            started=self.t0_wall,
            ended=self.ended or time.time(),
            total=total,
            slices=slices,
            slice_count=count,
            workers=self.n_workers,
            connections=sum(f.get("connections", 0) for f in finals.values()),
            unfinished=sum(f.get("unfinished", 0) for f in finals.values()),
            not_sent=sum(f.get("not_sent", 0) for f in finals.values()),
            interrupted=self._interrupted,
            errors=list(self._errors),
        )


def run_load(lab: Lab, spec: LoadSpec, on_slice: Callable[[ClientSlice], None] | None = None) -> LoadResult:
    """Run to the end (Ctrl-C: stop, abort what is in flight, return the partial result marked interrupted)."""
    run = LoadRun(lab, spec)
    if on_slice:
        run.on_slice(on_slice)
    run.start()
    try:
        return run.wait()
    except KeyboardInterrupt:
        return run.stop(abort=True)
    finally:
        run.close()
