"""The recorder: samples ELB, node and client metrics every interval into one JSON-lines time series per run.

Schema (docs/metrics.md has it in full): a `run` header line, one `interval` line per interval, `event`
lines whenever something is noted (a fault applied, a load step), and an `end` line.
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from lab import faults
from lab.errors import InputError
from lab.hosts import NamespaceGone
from lab.lab import Lab
from lab.load.stats import ClientSlice
from lab.metrics.accounting import ErrorSeries
from lab.metrics.elb import ElbNodeSample, ElbSampler, elb_interval
from lab.metrics.node import NodeSample, node_interval, sample_node
from lab.metrics.saturation import SaturationSampler

SCHEMA = 1
MIN_INTERVAL = 1.0
CLIENT_GRACE_S = 0.25  # a load run's slice ending at an interval boundary arrives a little after it


class ClientSource(Protocol):
    def take_client(self, until_wall: float) -> ClientSlice | None: ...

    @property
    def drained(self) -> bool: ...  # finished, and every slice taken: the recorder may let go of it


def check_interval(interval: float) -> float:
    if not (interval >= MIN_INTERVAL) or interval > 3600:
        raise InputError(f"--interval must be between {MIN_INTERVAL:g} and 3600 seconds, got {interval:g}")
    return float(interval)


def run_header(lab: Lab, interval: float, note: str = "") -> dict[str, Any]:
    """What a reader needs to interpret the series: the lab, the interval, and which ELB timers were scaled."""
    topo, scale = lab.topology, lab.time_scale
    hc = topo.elb.health_check
    inter, timeout = hc.interval * scale, hc.timeout * scale
    return {
        "type": "run",
        "schema": SCHEMA,
        "lab": lab.name,
        "topology": topo.name,
        "source": lab.source,
        "backend": lab.backend_name,
        "kube_proxy": topo.kube_proxy.flavour,
        "cross_zone": topo.elb.cross_zone,
        "interval_s": interval,
        "started": round(time.time(), 3),
        "note": note,
        "time_scale": scale,
        "scaled": {
            "health_check_interval_s": inter,
            "health_check_timeout_s": timeout,
            "idle_timeout_s": topo.elb.idle_timeout * scale,
        },
        # The namespaces' conntrack and TCP timers are scaled too (the plan's sysctls); these cannot be.
        "not_scaled": {
            "backend_connect_timeout_s": topo.elb.connect_timeout,  # it races the SYN retransmits
            "kernel": ["TCP's 1 s initial RTO (SYN retransmits at 1 s, 3 s, ...)", "socket TIME_WAIT"],
            "interval_s": interval,
        },
        # Per ELB node per instance: the ELB's checker starts one every `inter`, whatever the last one did
        # (HAProxy's own check would have waited `inter` after a timeout: a period of inter + timeout).
        "health_checks_per_interval": {
            "passing": round(interval / inter, 3),
            "timing_out": round(interval / inter, 3),
        },
        "elb_nodes": [
            {"name": e.name, "az": e.az, "instances": [n.name for n in topo.elb_targets(e)]} for e in topo.elb_nodes
        ],
        "nodes": [{"name": n.name, "az": n.az} for n in topo.k8s_nodes],
    }


class Recorder:
    """Samples every `interval` seconds in a background thread; start(), event(), stop()."""

    def __init__(
        self,
        lab: Lab,
        path: Path | str | None = None,
        interval: float = 60.0,
        nodes: bool = True,
        client: ClientSource | None = None,
        note: str = "",
        keep: bool = True,
    ):
        self.lab = lab
        self.path = Path(path) if path else None
        self.interval = check_interval(interval)
        self.with_nodes = nodes
        self.clients: list[ClientSource] = [client] if client is not None else []
        self.note = note
        self.keep = keep  # every interval record in `records` (a scenario's evaluation reads them); off for
        # an open-ended watch, whose memory must not grow with time
        self.elb = ElbSampler(lab)
        self.node_hosts = [lab.host(n.name) for n in lab.topology.k8s_nodes] if nodes else []
        self.series = ErrorSeries()
        self.saturation = SaturationSampler(lab)  # is the lab itself the bottleneck? (a `saturation` section)
        self.records: list[dict[str, Any]] = []
        self.header: dict[str, Any] = {}
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._file = None
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="lab-metrics")
        self._prev_elb: dict[str, ElbNodeSample] = {}
        self._prev_nodes: dict[str, NodeSample] = {}
        self._t_prev = 0.0
        self._seq = 0
        self._write_lock = threading.Lock()

    # --- public API ---

    def on_record(self, fn: Callable[[dict[str, Any]], None]) -> None:
        self._listeners.append(fn)

    def attach_client(self, client: ClientSource) -> None:
        """Add a client's outcomes and latency (e.g. a LoadRun) to the intervals from now on.

        Several may be attached (one load after another, or side by side): their slices are merged, and
        a finished one is kept until its last slice has been taken.
        """
        with self._write_lock:
            self.clients.append(client)

    def start(self) -> None:
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w")  # noqa: SIM115  (closed in stop)
        self.header = run_header(self.lab, self.interval, self.note)
        self._write(self.header)
        self._baseline()
        self._thread = threading.Thread(target=self._loop, name="lab-recorder", daemon=True)
        self._thread.start()

    def event(self, what: str, **fields: Any) -> None:
        """Note something that happened (a fault, a load step) at this moment in the series."""
        self._write({"type": "event", "t": round(time.time(), 3), "what": what, **fields})

    def stop(self, final_interval: bool = True) -> list[dict[str, Any]]:
        """Stop sampling; the partial last interval is recorded too (if >= 1 s long, or a client is attached)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        # A short tail is still recorded when a client is attached: its last requests must not go missing.
        if final_interval and (time.time() - self._t_prev >= 1.0 or self.clients):
            with contextlib.suppress(Exception):
                self._sample(final=True)
        self._write({"type": "end", "t": round(time.time(), 3), "intervals": self._seq})
        self._pool.shutdown(wait=True)
        if self._file:
            self._file.close()
            self._file = None
        return self.records

    def __enter__(self) -> Recorder:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._file is not None or not self._stop.is_set():
            self.stop()

    # --- sampling ---

    def _write(self, record: dict[str, Any]) -> None:
        with self._write_lock:
            if self._file:
                self._file.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
                self._file.flush()
            if record.get("type") == "interval" and self.keep:
                self.records.append(record)
        for fn in list(self._listeners):
            with contextlib.suppress(Exception):
                fn(record)

    def _take(self) -> tuple[float, dict[str, ElbNodeSample], dict[str, NodeSample]]:
        t = time.time()
        elb_f = {name: self._pool.submit(self.elb.sample, name, t) for name in self.elb.elbs}
        reserved = faults.conntrack_reserved(self.lab) if self.node_hosts else {}
        node_f = {h.name: self._pool.submit(sample_node, h, t, reserved.get(h.name, 0)) for h in self.node_hosts}
        return t, {n: f.result() for n, f in elb_f.items()}, {n: f.result() for n, f in node_f.items()}

    def _baseline(self) -> None:
        t, elbs, nodes = self._take()
        for name, s in elbs.items():
            for inst, counts in s.backend.items():
                self.series.step((name, inst), counts.failed)
        self._prev_elb, self._prev_nodes, self._t_prev = elbs, nodes, t
        self._prev_sat = self.saturation.take()
        # Interval ends on whole wall-clock seconds, where a load run's client slices end too.
        self._grid = float(math.ceil(t))

    def _sample(self, final: bool = False) -> dict[str, Any]:
        t, elbs, nodes = self._take()
        client = None
        with self._write_lock:
            clients = list(self.clients)
        if clients:
            time.sleep(CLIENT_GRACE_S)
            taken = []
            for c in clients:
                part = c.take_client(float("inf") if final else t)  # the last interval takes the rest
                if part is not None:
                    taken.append(part)
                elif c.drained:
                    with self._write_lock:
                        self.clients.remove(c)  # finished and fully taken
            client = ClientSlice.merged(taken, self._t_prev, t).to_dict()
        record = {
            "type": "interval",
            "seq": self._seq,
            "t_start": round(self._t_prev, 3),
            "t_end": round(t, 3),
            "elb": elb_interval(self._prev_elb, elbs, self.series),
            "nodes": {n: node_interval(self._prev_nodes.get(n), s) for n, s in nodes.items()},
            "client": client,
        }
        sat = self.saturation.take()
        record["saturation"] = self.saturation.section(self._prev_sat, sat, self.interval, client)
        self._prev_sat = sat
        self._prev_elb, self._prev_nodes, self._t_prev = elbs, nodes, t
        self._seq += 1
        self._write(record)
        return record

    def _loop(self) -> None:
        k = 1
        while not self._stop.is_set():
            due = self._grid + k * self.interval
            if self._stop.wait(max(0.0, due - time.time())):
                return
            try:
                self._sample()
            except NamespaceGone as exc:  # the lab was torn down under us: say so, keep the file valid
                self.event("sampling stopped", error=str(exc))
                return
            except Exception as exc:  # one bad sample (a tool timed out): the next interval covers both
                self.event("sampling failed", error=f"{type(exc).__name__}: {exc}")
                self.saturation.failed += 1
            k = max(k + 1, int((time.time() - self._grid) / self.interval) + 1)  # skip, never pile up


def watch(
    lab: Lab, interval: float, path: Path | str | None = None, nodes: bool = True, note: str = ""
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Record every `interval` and yield (header, interval record) as each one is written, for as long as the
    caller iterates; closing the iterator stops the recorder (no partial last interval: the caller left).
    Raises InputError when no interval arrives within a minute of when it was due (the lab went away)."""
    rec = Recorder(lab, path, interval=interval, nodes=nodes, note=note, keep=False)
    got: queue.Queue = queue.Queue()
    rec.on_record(lambda r: got.put(r) if r.get("type") == "interval" else None)
    rec.start()
    try:
        while True:
            deadline = time.monotonic() + interval + 60
            while True:
                try:
                    record = got.get(timeout=0.5)
                    break
                except queue.Empty:
                    if time.monotonic() > deadline:
                        raise InputError("no interval was recorded; is the lab still up? (lab status)") from None
            yield rec.header, record
    finally:
        rec.stop(final_interval=False)


def read_series(path: Path | str) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """(header, intervals, events) of a recorded run; raises InputError for a file that is not one."""
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    header: dict[str, Any] | None = None
    intervals, events = [], []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):
                continue  # a torn last line (the run was killed): the rest stands
            raise InputError(f"{path}:{i}: not JSON; is this a run recorded by `lab load --record`?") from None
        kind = rec.get("type")
        if kind == "run":
            header = rec
        elif kind == "interval":
            intervals.append(rec)
        elif kind == "event":
            events.append(rec)
    if header is None:
        raise InputError(f"{path}: no run header line; record one with `lab load --record` or `lab metrics --record`")
    return header, intervals, events
