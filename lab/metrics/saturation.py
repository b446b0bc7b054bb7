"""Is the lab itself the bottleneck? Samples the machine and the lab each interval and judges a run lab-limited.

On one small machine the load generator, HAProxy (the ELB nodes), the kernel's packet path (kube-proxy's
rules run in softirq) and the pod servers share the same cores. Past what the machine can do, the lab
makes timeouts and latency of its own, which no hypothesis caused. Each sample reads, without starting
a program (the sampling must not load the machine it measures):

- the machine's CPU split (/proc/stat: user, system, softirq, iowait);
- the CPU of the lab's processes: everything inside the lab's namespaces (HAProxy, the pod servers, the
  load workers, anything else started there), the lab's supervisor, and this process (the recorder);
- HAProxy's backend queues (`show stat` qcur/qmax) and, in every ELB and pod namespace, the connections
  its listeners dropped with a full accept queue (TcpExt ListenOverflows) and then the queues' depth
  (/proc/<pid>/net/tcp);
- which faults are injected (a fault may fill queues on purpose: then the queue is the hypothesis).

The load generator's lag behind its open-loop schedule comes with the client slices (`send_lag`), and
recorder gaps from the intervals' lengths. `section()` turns two samples into an interval's `saturation`
record; `assess()` (pure) judges a run from its sections. The thresholds and why: docs/metrics.md.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.faults.model import NOT_INJECTED
from lab.faults.store import FaultStore
from lab.haproxy_stats import queues, show_stat
from lab.hosts import pids_in_netns
from lab.lab import Lab

CLK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1

# Thresholds (docs/metrics.md says why each value).
CPU_BUSY = 0.95  # the machine counts as saturated in an interval this busy (all cores, any work)...
CPU_WAIT_MS = 1.0  # ...and the lab's processes on the request path waited this long per wake-up for a CPU
CPU_MIN_SECONDS = 3.0  # ...and the run as CPU-limited when saturated this long
CPU_MIN_SHARE = 0.10  # ...and for at least this share of the recorded time
LAG_P99_MS = 100.0  # the generator is behind when 1% of an interval's requests were sent this late
GAP_FACTOR = 2.0  # an interval longer than GAP_FACTOR x nominal + GAP_SLACK_S is a recorder gap
GAP_SLACK_S = 1.0  # the first interval is up to a second longer (intervals end on whole seconds)

# Process groups by the role of the lab host they run in.
GROUPS = {"elb": "HAProxy", "pod": "pods", "client": "load generator", "node": "nodes", "router": "routers"}
PATH_GROUPS = ("HAProxy", "pods", "load generator")  # a request waits for each of these to run
CHECKER = "ELB health checkers"  # the other process of an ELB namespace (lab.runtime.elbcheck): off the request path


def group_of(role: str, proc_stat: str) -> str:
    """A lab process's group from its host's role and its /proc/<pid>/stat (whose second field is its name)."""
    if role == "elb" and "(haproxy)" not in proc_stat:
        return CHECKER
    return GROUPS.get(role, role)


SUPERVISOR, SELF = "supervisor", "lab (this process: recorder, load collector)"

_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


# --- pure parsers ---


def parse_proc_stat(text: str) -> dict[str, int]:
    """The machine-wide `cpu` line of /proc/stat, in clock ticks by kind (guest time is already in user)."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1 : 1 + len(_STAT_FIELDS)]]
            return dict(zip(_STAT_FIELDS, values + [0] * (len(_STAT_FIELDS) - len(values)), strict=True))
    raise ValueError("no cpu line in /proc/stat")


def cpu_split(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """Shares of all cores' time between two /proc/stat readings: busy, user, system, softirq, iowait."""
    d = {k: max(0, after.get(k, 0) - before.get(k, 0)) for k in _STAT_FIELDS}
    total = sum(d.values())
    if total == 0:
        return {"busy": 0.0, "user": 0.0, "system": 0.0, "softirq": 0.0, "iowait": 0.0}
    return {
        "busy": round(1 - (d["idle"] + d["iowait"]) / total, 3),
        "user": round((d["user"] + d["nice"]) / total, 3),
        "system": round(d["system"] / total, 3),
        "softirq": round((d["softirq"] + d["irq"]) / total, 3),
        "iowait": round(d["iowait"] / total, 3),
    }


def parse_proc_pid_stat(text: str) -> int:
    """utime + stime of a /proc/<pid>/stat line, in clock ticks (all threads of the process)."""
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def parse_schedstat(text: str) -> tuple[int, int]:
    """/proc/<pid>/schedstat: (ns waited on a run queue, timeslices run) of the process's main thread -
    the thread that accepts (pods), runs the event loop (HAProxy, load workers)."""
    fields = text.split()
    return int(fields[1]), int(fields[2])


def parse_listen_overflows(text: str) -> int:
    """TcpExt ListenOverflows of a /proc/net/netstat text (0 if the kernel does not have it)."""
    lines = [ln.split() for ln in text.splitlines() if ln.startswith("TcpExt:")]
    if len(lines) < 2:
        return 0
    values = dict(zip(lines[0][1:], lines[1][1:], strict=False))
    return int(values.get("ListenOverflows", 0))


def accept_queue(lines: list[str]) -> int:
    """The longest accept queue of the LISTEN rows of /proc/net/tcp (rx_queue of a listener: queued
    connections not yet accepted)."""
    longest = 0
    for line in lines:
        parts = line.split()
        if len(parts) > 4 and parts[3] == _LISTEN:
            longest = max(longest, int(parts[4].split(":")[1], 16))
    return longest


# --- sampling ---


@dataclass
class Snapshot:
    t: float
    cpu: dict[str, int]
    procs: dict[int, tuple[str, int]]  # pid -> (group, CPU ticks so far)
    # role ("elb" | "pod") -> host -> (ListenOverflows so far in its namespace, longest accept queue now)
    listen: dict[str, dict[str, tuple[int, int]]]
    haproxy: dict[str, dict[str, int]]  # ELB node -> {"queued": qcur, "queued_max": qmax}
    faults: list[str] = field(default_factory=list)  # kinds injected now
    waits: dict[int, tuple[int, int]] = field(default_factory=dict)  # pid -> (ns waited for a CPU, timeslices)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _listen_rows(pid: int, limit: int = 64) -> list[str]:
    """The head of /proc/<pid>/net/tcp: the kernel lists listeners first, so parsing stops at the first
    other row (an ELB node keeps thousands of connections in TIME_WAIT)."""
    rows = []
    with open(f"/proc/{pid}/net/tcp") as f:
        next(f, None)
        for line in f:
            parts = line.split(None, 4)
            if len(parts) < 4 or parts[3] != _LISTEN or len(rows) >= limit:
                break
            rows.append(line)
    return rows


class SaturationSampler:
    """take() a Snapshot now; section(prev, cur, ...) is the interval's `saturation` record."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.failed = 0  # samples of the recorder that failed since the last section (set by the recorder)
        self._overflows: dict[str, int] = {}  # host -> ListenOverflows at the last sample
        self._supervisor = int((lab.info or {}).get("supervisor_pid") or 0)
        self._stats_sockets: dict[str, Path] = {}
        for e in lab.topology.elb_nodes:
            with contextlib.suppress(Exception):
                self._stats_sockets[e.name] = lab.backend.elb_stats_socket(lab, e.name)

    def take(self) -> Snapshot:
        """Read everything; a part that cannot be read (a process gone, a socket busy) is left out."""
        t = time.time()
        cpu = parse_proc_stat(_read("/proc/stat"))
        hosts = self.lab.hosts.values()  # asked each time: the backend knows when a host changed (a new pod)
        group = {h.netns: (h.name, h.role) for h in hosts}
        procs: dict[int, tuple[str, int]] = {}
        waits: dict[int, tuple[int, int]] = {}
        pid_of: dict[str, int] = {}
        for netns, pids in pids_in_netns(list(group)).items():
            host, role = group[netns]
            for pid in pids:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    stat = _read(f"/proc/{pid}/stat")
                    procs[pid] = (group_of(role, stat), parse_proc_pid_stat(stat))
                    waits[pid] = parse_schedstat(_read(f"/proc/{pid}/schedstat"))
                    pid_of.setdefault(host, pid)
        for pid, group in ((self._supervisor, SUPERVISOR), (os.getpid(), SELF)):
            if pid:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    procs[pid] = (group, parse_proc_pid_stat(_read(f"/proc/{pid}/stat")))
        listen: dict[str, dict[str, tuple[int, int]]] = {"elb": {}, "pod": {}}
        for h in hosts:
            pid = pid_of.get(h.name)
            if pid is None or h.role not in listen:
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                overflows = parse_listen_overflows(_read(f"/proc/{pid}/net/netstat"))
                # The queue's depth only where a listener dropped connections since the last sample (elsewhere
                # it stayed below its backlog): reading /proc/net/tcp walks the kernel's whole connection
                # table, 2-3 ms per namespace, most of a sample's cost.
                overflowed = overflows > self._overflows.get(h.name, overflows)
                self._overflows[h.name] = overflows
                listen[h.role][h.name] = (overflows, accept_queue(_listen_rows(pid)) if overflowed else 0)
        haproxy = {}
        for elb, sock in self._stats_sockets.items():
            with contextlib.suppress(Exception):
                haproxy[elb] = queues(show_stat(sock))
        return Snapshot(t, cpu, procs, listen, haproxy, self._faults(), waits)

    def _faults(self) -> list[str]:
        try:
            return sorted({f.kind for f in FaultStore(self.lab.state).load() if f.state != NOT_INJECTED})
        except Exception:
            return []

    def section(
        self, prev: Snapshot, cur: Snapshot, nominal_s: float, client: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The `saturation` record of the interval between two snapshots (client: the interval's client slice)."""
        out = saturation_section(prev, cur, nominal_s, client, failed=self.failed)
        self.failed = 0
        return out


def saturation_section(
    prev: Snapshot, cur: Snapshot, nominal_s: float, client: dict[str, Any] | None = None, failed: int = 0
) -> dict[str, Any]:
    """Two snapshots (and the interval's client figures) -> the interval's `saturation` record. Pure."""
    seconds = max(cur.t - prev.t, 1e-9)
    lab_ticks: dict[str, int] = {}
    for pid, (group, ticks) in cur.procs.items():
        before = prev.procs.get(pid)
        # A process first seen now started during the interval (a load worker, a restarted pod): all its time.
        used = ticks - before[1] if before is not None and before[0] == group else ticks
        lab_ticks[group] = lab_ticks.get(group, 0) + max(0, used)
    lab_cpu = {g: round(n / CLK / seconds, 3) for g, n in sorted(lab_ticks.items())}
    # Run-queue waits of the lab's processes in the lab's namespaces: a busy machine harms the lab only
    # if they wait for a CPU. Per group: the share of the interval spent waiting (summed over processes)
    # and the mean wait per timeslice (each wake-up of an event loop or accept loop waits this long).
    waited: dict[str, list[int]] = {}
    for pid, (ns, slices) in cur.waits.items():
        before = prev.waits.get(pid, (0, 0))
        w = waited.setdefault(cur.procs[pid][0], [0, 0])
        w[0] += max(0, ns - before[0])
        w[1] += max(0, slices - before[1])
    cpu_wait = {
        g: {"share": round(ns / 1e9 / seconds, 3), "per_slice_ms": round(ns / 1e6 / n, 3) if n else 0.0}
        for g, (ns, n) in sorted(waited.items())
    }
    lag = None
    sent = (client or {}).get("send_lag") or {}
    if sent.get("count"):
        lag = {"p99": sent["p99_ms"], "max": sent["max_ms"], "count": sent["count"]}

    def listen(role: str) -> dict[str, Any]:
        now, before = cur.listen.get(role, {}), prev.listen.get(role, {})
        dropped = {h: n - before[h][0] for h, (n, _) in now.items() if h in before and n > before[h][0]}
        return {"accept_queue": max((q for _, q in now.values()), default=0), "listen_overflows": dropped}

    return {
        "seconds": round(seconds, 3),
        "nominal_s": nominal_s,
        "failed_samples": failed,
        "cpu": {**cpu_split(prev.cpu, cur.cpu), "cores": CORES},
        "lab_cpu": lab_cpu,  # cores used, by process group
        "cpu_wait": cpu_wait,
        "send_lag_ms": lag,
        "haproxy": {
            "queued": sum(q.get("queued", 0) for q in cur.haproxy.values()),
            "queued_max": max((q.get("queued_max", 0) for q in cur.haproxy.values()), default=0),
            **listen("elb"),
        },
        "pods": listen("pod"),
        "faults": sorted(set(prev.faults) | set(cur.faults)),
    }


# --- judging ---


@dataclass
class Assessment:
    lab_limited: bool
    limited_reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"lab_limited": self.lab_limited, "limited_reasons": list(self.limited_reasons)}


def _path_wait(section: dict[str, Any]) -> tuple[str, float]:
    """The process group on the request path that waited longest per wake-up for a CPU, and that wait (ms)."""
    waits = [(g, w.get("per_slice_ms", 0.0)) for g, w in section.get("cpu_wait", {}).items() if g in PATH_GROUPS]
    return max(waits, key=lambda gw: gw[1], default=("lab", 0.0))


def _pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def assess(sections: list[dict[str, Any]], lags: list[dict[str, Any]] | None = None) -> Assessment:
    """Was the run limited by the lab? `sections`: the intervals' `saturation` records; `lags`: per-slice
    send lag ({"seconds", "p99", "max"}) when it comes from elsewhere than the sections (lab load). Pure."""
    reasons: list[str] = []
    total = sum(s.get("seconds", 0.0) for s in sections)

    busy = [s for s in sections if s.get("cpu", {}).get("busy", 0.0) >= CPU_BUSY and _path_wait(s)[1] >= CPU_WAIT_MS]
    busy_s = sum(s["seconds"] for s in busy)
    if busy and busy_s >= CPU_MIN_SECONDS and busy_s >= CPU_MIN_SHARE * total:
        worst = max(busy, key=lambda s: _path_wait(s)[1])
        cpu = worst["cpu"]
        waiter, wait_ms = _path_wait(worst)
        groups = sorted(worst.get("lab_cpu", {}).items(), key=lambda kv: -kv[1])
        used = sum(v for _, v in groups)
        top = ", ".join(f"{g} {v:.2f}" for g, v in groups[:3] if v >= 0.01)
        reasons.append(
            f"machine CPU {_pct(CPU_BUSY)} busy or more for {busy_s:.0f} of {total:.0f} s recorded, the lab "
            f"waiting for it (at worst {_pct(cpu['busy'])} busy: user {_pct(cpu['user'])}, system "
            f"{_pct(cpu['system'])}, softirq {_pct(cpu['softirq'])}; the {waiter} waited {wait_ms:.1f} ms for a CPU "
            f"per wake-up); the lab's processes used {used:.1f} of {cpu.get('cores', CORES)} cores"
            + (f" ({top})" if top else "")
        )

    if lags is None:
        lags = [{"seconds": s.get("seconds", 0.0), **s["send_lag_ms"]} for s in sections if s.get("send_lag_ms")]
    late = [x for x in lags if x.get("p99", 0.0) >= LAG_P99_MS]
    if late:
        worst_ms = max(x.get("max", 0.0) for x in late)
        reasons.append(
            f"the load generator sent requests up to {worst_ms:.0f} ms late (1% or more of them over "
            f"{LAG_P99_MS:.0f} ms late in {sum(x.get('seconds', 0.0) for x in late):.0f} s): its schedule could not "
            "be kept"
        )

    gaps = [s for s in sections if s.get("seconds", 0.0) > GAP_FACTOR * s.get("nominal_s", 1.0) + GAP_SLACK_S]
    if gaps:
        longest = max(gaps, key=lambda s: s["seconds"])
        reasons.append(
            f"the recorder fell behind: {len(gaps)} interval(s) lasted longer than {GAP_FACTOR:g}x their "
            f"{longest['nominal_s']:g} s (the longest {longest['seconds']:.1f} s)"
        )
    failed = sum(s.get("failed_samples", 0) for s in sections)
    if failed:
        reasons.append(f"{failed} sample(s) of the recorder failed (a tool did not answer in time)")

    for key, what, why in (
        ("pods", "pods' accept queues", "the pod servers could not accept connections as fast as they came"),
        ("haproxy", "ELB nodes' (HAProxy's) accept queues", "HAProxy could not accept as fast as they came"),
    ):
        dropped: dict[str, int] = {}
        for s in sections:
            if s.get("faults"):
                continue  # a fault is injected: full queues are its doing (the hypothesis), not the lab's
            for host, n in s.get(key, {}).get("listen_overflows", {}).items():
                dropped[host] = dropped.get(host, 0) + n
        if dropped:
            hosts = ", ".join(f"{h} {n}" for h, n in sorted(dropped.items()))
            reasons.append(
                f"the {what} overflowed with no fault injected ({sum(dropped.values())} connections dropped: "
                f"{hosts}): {why} on this machine"
            )
    return Assessment(bool(reasons), reasons)


def slice_lags(per_second: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The send lag of a load result's per-second client slices, as assess() takes it. Pure."""
    return [
        {"seconds": s["t_end"] - s["t_start"], "p99": s["send_lag"]["p99_ms"], "max": s["send_lag"]["max_ms"]}
        for s in per_second
        if (s.get("send_lag") or {}).get("count")
    ]


def assess_intervals(intervals: list[dict[str, Any]]) -> Assessment:
    """assess() over a recorded run's interval records (those without a `saturation` section are skipped)."""
    return assess([r["saturation"] for r in intervals if r.get("saturation")])


class SaturationWatch:
    """Samples every `interval` seconds in a thread, without a recorder (for `lab load`); stop() -> sections."""

    def __init__(self, lab: Lab, interval: float = 1.0):
        self.sampler = SaturationSampler(lab)
        self.interval = interval
        self.sections: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        prev = self.sampler.take()

        def loop() -> None:
            nonlocal prev
            while not self._stop.wait(self.interval):
                try:
                    cur = self.sampler.take()
                except Exception:
                    self.sampler.failed += 1
                    continue
                self.sections.append(self.sampler.section(prev, cur, self.interval))
                prev = cur

        self._thread = threading.Thread(target=loop, name="lab-saturation", daemon=True)
        self._thread.start()

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return self.sections
