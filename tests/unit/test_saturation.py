# ruff: noqa: E501  (captured /proc text kept verbatim)
"""lab.metrics.saturation without root: the /proc parsers on captured text, the interval section from synthetic
snapshots, and each lab-limited threshold from both sides."""

from __future__ import annotations

import pytest

from lab.haproxy_stats import queues
from lab.metrics import saturation as sat
from lab.metrics.saturation import Snapshot, assess, group_of, saturation_section, slice_lags

# Captured on this machine (kernel 6.18): /proc/stat's first lines, a pod's /proc/<pid>/stat and schedstat,
# the head of a pod namespace's /proc/net/tcp (one listener with 3 connections waiting) and its netstat.
PROC_STAT = "cpu  38362 0 8049 91428 605 0 269 65 0 0\ncpu0 16322 0 3592 49241 64 0 105 30 0 0\n"
PID_STAT = (
    "4242 (python3 -m lab.runtime.supervisor) S 4100 4100 4100 0 -1 4194560 3050 0 0 0 "
    "150 37 0 0 20 0 3 0 123456 50000000 4000 18446744073709551615 1 1 0 0 0 0 0 16781312 17410 0 0 0 17 1 0 0"
)
SCHEDSTAT = "97897980 118565663 387\n"
TCP_HEAD = [
    "   0: 00000000:2382 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 161880 1 0 100 0 0 10 0\n",
    "   1: 0100007F:B719 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 161881 1 0 100 0 0 10 0\n",
    "   2: 0A000105:2382 0A000010:C350 01 00000000:00000000 00:00000000 00000000     0        0 161882 1 0 20 4 30 10 -1\n",
]
NETSTAT = (
    "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops\n"
    "TcpExt: 0 0 17 17\n"
    "IpExt: InNoRoutes InTruncatedPkts\n"
    "IpExt: 0 0\n"
)


def test_proc_parsers_on_captured_text():
    assert sat.parse_proc_stat(PROC_STAT) == {
        "user": 38362, "nice": 0, "system": 8049, "idle": 91428, "iowait": 605, "irq": 0, "softirq": 269, "steal": 65,
    }  # fmt: skip
    assert sat.parse_proc_pid_stat(PID_STAT) == 150 + 37  # utime + stime, a name with spaces and parentheses
    assert sat.parse_schedstat(SCHEDSTAT) == (118565663, 387)
    assert sat.parse_listen_overflows(NETSTAT) == 17
    assert sat.parse_listen_overflows("IpExt: InNoRoutes\nIpExt: 0\n") == 0
    assert sat.accept_queue(TCP_HEAD) == 3  # the longest listener queue; the ESTABLISHED row is not a listener
    with pytest.raises(ValueError):
        sat.parse_proc_stat("intr 1 2 3\n")


def test_cpu_split_shares_of_all_cores():
    before = sat.parse_proc_stat(PROC_STAT)
    after = dict(before, user=before["user"] + 120, system=before["system"] + 30, softirq=before["softirq"] + 40,
                 idle=before["idle"] + 10)  # fmt: skip
    split = sat.cpu_split(before, after)
    assert split == {"busy": 0.95, "user": 0.6, "system": 0.15, "softirq": 0.2, "iowait": 0.0}
    assert sat.cpu_split(before, before)["busy"] == 0.0  # no time passed: nothing measured, not "busy"


def test_haproxy_queues_sum_listener_backends_only():
    rows = [
        {"pxname": "accounts", "svname": "BACKEND", "qcur": "3", "qmax": "7"},
        {"pxname": "catalog", "svname": "BACKEND", "qcur": "1", "qmax": "2"},
        {"pxname": "accounts", "svname": "node-a1", "qcur": "3", "qmax": "7"},  # a server row: counted in BACKEND
        {"pxname": "elb-health", "svname": "BACKEND", "qcur": "9", "qmax": "9"},
        {"pxname": "prometheus", "svname": "FRONTEND", "qcur": "", "qmax": ""},
    ]
    assert queues(rows) == {"queued": 4, "queued_max": 7}


def snap(t: float, busy_ticks: int = 0, idle_ticks: int = 200, **kw) -> Snapshot:
    cpu = {k: 0 for k in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")}
    cpu.update(user=busy_ticks, idle=idle_ticks)
    return Snapshot(t=t, cpu=cpu, procs=kw.pop("procs", {}), listen=kw.pop("listen", {}), haproxy={}, **kw)


def test_section_from_two_snapshots():
    prev = snap(
        100.0,
        procs={10: ("HAProxy", 50), 11: ("pods", 20)},
        waits={10: (0, 100), 11: (0, 10)},
        listen={"pod": {"accounts-0": (5, 0)}, "elb": {"elb-a1": (0, 0)}},
    )
    cur = snap(
        102.0,
        busy_ticks=380,
        idle_ticks=220,
        procs={10: ("HAProxy", 150), 11: ("pods", 60), 12: ("load generator", 30)},  # 12 started in between
        waits={10: (40_000_000, 300), 11: (10_000_000, 30)},
        listen={"pod": {"accounts-0": (9, 4)}, "elb": {"elb-a1": (0, 1)}},
        faults=["syn-backlog"],
    )
    client = {"send_lag": {"count": 120, "p99_ms": 3.5, "max_ms": 7.0}}
    s = saturation_section(prev, cur, 1.0, client, failed=1)
    ticks = sat.CLK
    assert s["seconds"] == 2.0 and s["nominal_s"] == 1.0 and s["failed_samples"] == 1
    assert s["cpu"]["busy"] == pytest.approx(380 / 400, abs=0.001)
    assert s["lab_cpu"] == {
        "HAProxy": round(100 / ticks / 2, 3), "load generator": round(30 / ticks / 2, 3), "pods": round(40 / ticks / 2, 3),
    }  # fmt: skip
    assert s["cpu_wait"]["HAProxy"] == {"share": 0.02, "per_slice_ms": 0.2}  # 40 ms over 2 s; 200 slices
    assert s["send_lag_ms"] == {"p99": 3.5, "max": 7.0, "count": 120}
    assert s["pods"] == {"accept_queue": 4, "listen_overflows": {"accounts-0": 4}}
    assert s["haproxy"]["accept_queue"] == 1 and s["haproxy"]["listen_overflows"] == {}
    assert s["faults"] == ["syn-backlog"]
    assert saturation_section(prev, cur, 1.0)["send_lag_ms"] is None  # no load running: no lag


def section(seconds: float = 1.0, busy: float = 0.3, wait_ms: float = 0.0, **kw) -> dict:
    s = {
        "seconds": seconds,
        "nominal_s": kw.pop("nominal_s", 1.0),
        "failed_samples": kw.pop("failed", 0),
        "cpu": {"busy": busy, "user": busy / 2, "system": busy / 4, "softirq": busy / 4, "iowait": 0.0, "cores": 2},
        "lab_cpu": {"pods": 0.5, "HAProxy": 0.4, "load generator": 0.3},
        "cpu_wait": {"pods": {"share": 0.2, "per_slice_ms": wait_ms}, "HAProxy": {"share": 0.1, "per_slice_ms": 0.1}},
        "send_lag_ms": kw.pop("lag", None),
        "haproxy": {"queued": 0, "queued_max": 0, "accept_queue": 0, "listen_overflows": kw.pop("elb_overflows", {})},
        "pods": {"accept_queue": 0, "listen_overflows": kw.pop("pod_overflows", {})},
        "faults": kw.pop("faults", []),
    }
    assert not kw
    return s


def test_a_healthy_run_is_not_lab_limited():
    run = [section(lag={"p99": 1.2, "max": 3.0, "count": 50}) for _ in range(30)]
    assert assess(run).to_dict() == {"lab_limited": False, "limited_reasons": []}
    assert assess([]).lab_limited is False


def test_cpu_saturation_needs_a_busy_machine_the_lab_waiting_and_time():
    hot = sat.CPU_BUSY
    slow = sat.CPU_WAIT_MS
    # Saturated and the lab's processes waiting for a CPU, 5 of 30 s: limited, with the split and the users.
    run = [section(busy=0.99, wait_ms=slow * 2) for _ in range(5)] + [section() for _ in range(25)]
    verdict = assess(run)
    assert verdict.lab_limited
    (reason,) = verdict.limited_reasons
    assert reason.startswith("machine CPU 95% busy or more for 5 of 30 s") and "softirq 25%" in reason
    assert "pods 0.50" in reason and "waited" in reason
    # Just below each threshold: not limited.
    assert not assess([section(busy=hot - 0.01, wait_ms=slow * 2)] * 5 + [section()] * 25).lab_limited
    assert not assess([section(busy=0.99, wait_ms=slow * 0.9)] * 5 + [section()] * 25).lab_limited  # others' work
    short = sat.CPU_MIN_SECONDS - 1
    assert not assess([section(seconds=short, busy=0.99, wait_ms=slow * 2)] + [section()] * 5).lab_limited
    # Long enough in seconds, but under the share of a long run.
    assert not assess([section(busy=0.99, wait_ms=slow * 2)] * 4 + [section()] * 60).lab_limited
    assert assess([section(busy=0.99, wait_ms=slow * 2)] * 7 + [section()] * 60).lab_limited


def test_generator_lag_over_threshold_is_limited():
    late = sat.LAG_P99_MS
    ok = [section(lag={"p99": late - 1, "max": 400.0, "count": 50})] * 10
    assert not assess(ok).lab_limited  # one request 400 ms late in a second is under 1%
    verdict = assess(ok + [section(lag={"p99": late, "max": 850.0, "count": 50})])
    assert verdict.limited_reasons == [
        "the load generator sent requests up to 850 ms late (1% or more of them over 100 ms late in 1 s): "
        "its schedule could not be kept"
    ]
    # lab load passes the per-second slices of its result instead.
    slices = [{"t_start": 0.0, "t_end": 1.0, "send_lag": {"count": 10, "p99_ms": 250.0, "max_ms": 300.0}},
              {"t_start": 1.0, "t_end": 2.0, "send_lag": {"count": 0}}]  # fmt: skip
    assert slice_lags(slices) == [{"seconds": 1.0, "p99": 250.0, "max": 300.0}]
    assert assess([section()], lags=slice_lags(slices)).lab_limited


def test_recorder_gaps_and_failed_samples_are_limited():
    nominal = 5.0
    edge = sat.GAP_FACTOR * nominal + sat.GAP_SLACK_S
    assert not assess([section(seconds=edge, nominal_s=nominal)]).lab_limited
    verdict = assess([section(seconds=edge + 0.5, nominal_s=nominal)])
    assert verdict.limited_reasons == [
        "the recorder fell behind: 1 interval(s) lasted longer than 2x their 5 s (the longest 11.5 s)"
    ]
    assert assess([section(failed=1)]).limited_reasons == [
        "1 sample(s) of the recorder failed (a tool did not answer in time)"
    ]


def test_accept_queue_overflows_count_only_without_a_fault():
    pods = section(pod_overflows={"accounts-0": 25, "accounts-1": 12})
    verdict = assess([pods])
    assert verdict.limited_reasons == [
        "the pods' accept queues overflowed with no fault injected (37 connections dropped: accounts-0 25, "
        "accounts-1 12): the pod servers could not accept connections as fast as they came on this machine"
    ]
    elb = section(elb_overflows={"elb-a1": 3})
    assert "ELB nodes' (HAProxy's) accept queues overflowed" in assess([elb]).limited_reasons[0]
    # syn-backlog fills the pods' queues on purpose: that is the hypothesis at work, not the lab's limit.
    assert not assess([section(pod_overflows={"accounts-0": 400}, faults=["syn-backlog"])]).lab_limited
    assert not assess([section(elb_overflows={"elb-a1": 9}, faults=["conntrack-exhaustion"])]).lab_limited
    assert not assess([section(pod_overflows={})]).lab_limited


def test_lab_metrics_shows_the_lab_and_warns_when_an_interval_is_limited():
    from lab.cli.commands.metrics import saturation_lines

    calm = saturation_lines({"saturation": section(lag={"p99": 1.2, "max": 3.0, "count": 50})})
    assert calm.startswith("Lab: machine CPU 30% busy (softirq 8%); lab processes pods 0.50, HAProxy 0.40")
    assert "send lag p99 1.2 ms" in calm and "Warning" not in calm
    hot = saturation_lines({"saturation": section(seconds=5, busy=0.99, wait_ms=5.0)})
    assert "Warning: lab-limited: machine CPU 95% busy or more for 5 of 5 s recorded" in hot
    assert saturation_lines({"elb": {}}) is None  # a series recorded before saturation sampling existed


def test_an_elb_namespaces_health_checker_is_not_counted_as_haproxy():
    assert group_of("elb", "412 (haproxy) S 1 412") == "HAProxy"
    assert group_of("elb", "413 (python3) S 1 413") == "ELB health checkers"  # off the request path
    assert group_of("pod", "414 (python3) S 1 414") == "pods"
