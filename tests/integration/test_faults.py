"""Faults on real labs: shared checks (taken with independent tools), and the engine's guarantees.

Every test applies a fault, observes it with tools that are not the fault code (iptables-save, tc, sysctl,
conntrack, ss, nstat, tcpdump, HAProxy's own stats socket, TCP connections made in the test), reverts it and
checks that the lab is exactly as before: iptables-save, tc, sysctls and processes of every host identical,
no filler conntrack entry left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

import pytest

from lab import faults, lifecycle, rpc
from lab.errors import InputError, LabError
from lab.faults.ops import CT_MARK_BASE
from lab.lab import Lab
from tests.conftest import REPO, in_host, lab_namespaces, ns

pytestmark = pytest.mark.root


# --- independent observations ----------------------------------------------------------------------------------


def snapshot(lab: Lab) -> dict[str, dict[str, str]]:
    """What revert must restore on every host, read with iptables-save, tc, sysctl and ip netns pids."""
    out = {}
    for host in lab.plan.hosts:
        name = host.name
        rules = "\n".join(ln for ln in in_host(lab.name, name, "iptables-save").splitlines() if not ln.startswith("#"))
        qdiscs = in_host(lab.name, name, "tc", "qdisc", "show")
        sysctls = "\n".join(
            ln
            for ln in in_host(lab.name, name, "sysctl", "-a", check=False).splitlines()
            if ln.startswith(("net.netfilter.", "net.ipv4.ip_forward", "net.core.somaxconn", "net.ipv4.tcp_"))
            and "nf_conntrack_count" not in ln
        )
        pids = subprocess.run(["ip", "netns", "pids", ns(lab.name, name)], capture_output=True, text=True).stdout
        procs = sorted(_comm(int(p)) for p in pids.split())
        out[name] = {"iptables": rules, "tc": qdiscs, "sysctl": sysctls, "processes": "\n".join(procs)}
    return out


def _comm(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def assert_same(before: dict, after: dict) -> None:
    for host, parts in before.items():
        for what, text in parts.items():
            if what == "processes":  # restarted pods and HAProxy keep their command lines, not their pids
                assert text == after[host][what], f"{host}: processes differ after revert"
            else:
                assert text == after[host][what], f"{host}: {what} differs after revert"


def filler_entries(lab: Lab, host: str, fault_id: int) -> int:
    out = in_host(lab.name, host, "conntrack", "-L", "-m", str(CT_MARK_BASE + fault_id), check=False)
    return len([ln for ln in out.splitlines() if ln.startswith("tcp")])


def ct_stat(lab: Lab, host: str, field: str) -> int:
    """Sum of one `conntrack -S` counter over the CPUs."""
    out = in_host(lab.name, host, "conntrack", "-S")
    return sum(int(m) for m in re.findall(rf"\b{field}=(\d+)", out))


def nstat(lab: Lab, host: str, counter: str) -> int:
    out = in_host(lab.name, host, "nstat", "-az", counter)
    m = re.search(rf"^{counter}\s+(\d+)", out, flags=re.M)
    return int(m.group(1)) if m else 0


def rule_packets(lab: Lab, host: str, table: str, pattern: str) -> int:
    """Packets counted by the first iptables-save -c rule matching `pattern`."""
    for line in in_host(lab.name, host, "iptables-save", "-c", "-t", table).splitlines():
        if re.search(pattern, line):
            return int(re.match(r"\[(\d+):", line).group(1))
    raise AssertionError(f"{host}: no {table} rule matches {pattern}")


def connect_times(lab: Lab, source: str, address: tuple[str, int], n: int, timeout: float = 5.0) -> list[float | None]:
    """Seconds each of n sequential TCP connects took from `source` (None: failed)."""

    def run() -> list[float | None]:
        out: list[float | None] = []
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                s = socket.create_connection(address, timeout=timeout)
            except OSError:
                out.append(None)
                continue
            out.append(time.perf_counter() - t0)
            s.close()
        return out

    return lab.host(source).in_netns(run)


def rpc_outcomes(lab: Lab, service: str, via: str, target: str, n: int, timeout: float = 2.0) -> dict[str, int]:
    """n one-shot RPCs (a connection each), counted by outcome: ok or the error's first words."""
    counts: dict[str, int] = {}
    tgt = rpc.resolve(lab, service, via, target)
    for _ in range(n):
        try:
            rpc.call(lab, service, "ping", [], tgt, timeout=timeout)
            key = "ok"
        except LabError as exc:
            key = "error"
            counts.setdefault("errors", 0)
            counts["errors"] += 1
            counts.setdefault(str(exc).rsplit(": ", 1)[-1], 0)
            counts[str(exc).rsplit(": ", 1)[-1]] += 1
            continue
        counts[key] = counts.get(key, 0) + 1
    return counts


def lab_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lab.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )


# --- the engine -------------------------------------------------------------------------------------------------


def test_apply_twice_is_idempotent_and_other_params_are_refused(make_lab):
    lab = make_lab()
    before = snapshot(lab)
    first = faults.apply(lab, "link", "node-a1", ["loss=10%"])
    assert not first["already"]
    during = snapshot(lab)
    second = faults.apply(lab, "link", "node-a1", ["loss=10%"])
    assert second["already"] and second["fault"]["id"] == first["fault"]["id"]
    assert snapshot(lab) == during, "applying the same fault again must change nothing"
    with pytest.raises(LabError, match=r"already applied with loss=10%; revert it first"):
        faults.apply(lab, "link", "node-a1", ["loss=20%"])
    faults.revert(lab, [first["fault"]["id"]])
    again = faults.revert(lab, [first["fault"]["id"]])
    assert again[0]["already"], "reverting twice is a no-op"
    assert_same(before, snapshot(lab))


def test_bad_input_is_one_line_and_applies_nothing(make_lab):
    lab = make_lab()
    before = snapshot(lab)
    cases = [
        (["fault", "apply", "jam", "-n", lab.name], "Error: unknown fault kind 'jam'; kinds: conntrack-exhaustion,"),
        (
            ["fault", "apply", "link", "--target", "node-z9", "loss=1%", "-n", lab.name],
            "Error: unknown target 'node-z9': not a link of this lab; choose one of: apollo-1, peering,",
        ),
        (
            ["fault", "apply", "link", "--target", "node-a1", "loss=150%", "-n", lab.name],
            "Error: fault link: parameter loss=150%: must be from 0% to 100%",
        ),
        (
            ["fault", "apply", "cross-az", "delay=20s", "-n", lab.name],
            "Error: fault cross-az: parameter delay=20s: must be from 0s to 10s",
        ),
        (
            ["fault", "apply", "conntrack-exhaustion", "--target", "node-a1", "mode=ceiling", "max=16000000",
             "-n", lab.name],
            "Error: fault conntrack-exhaustion: parameter max=16000000: must be below this machine's nf_conntrack_max",
        ),
        (["fault", "revert", "42", "-n", lab.name], "Error: no fault 42 in lab"),
    ]  # fmt: skip
    for args, start in cases:
        result = lab_cli(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1, (args, result.stderr)
        assert len(lines) == 1 and lines[0].startswith(start), (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert faults.status(lab) == [], "bad input must leave no record"
    assert_same(before, snapshot(lab))


def test_cli_apply_status_revert_and_dry_run(make_lab):
    lab = make_lab()
    before = snapshot(lab)
    dry = lab_cli("fault", "apply", "cross-az", "delay=30ms", "--dry-run", "-n", lab.name)
    assert dry.returncode == 0 and "would apply cross-az" in dry.stdout and "NFQUEUE" in dry.stdout
    assert_same(before, snapshot(lab))
    applied = lab_cli("fault", "apply", "cross-az", "delay=30ms", "loss=1%", "-n", lab.name, "--json")
    assert applied.returncode == 0, applied.stderr
    fault = json.loads(applied.stdout)["fault"]
    assert fault["state"] == "Injected" and fault["engine"] in ("nfqueue", "netem")
    rows = json.loads(lab_cli("fault", "status", "--json", "-n", lab.name).stdout)
    assert [(r["id"], r["kind"], r["target"], r["state"]) for r in rows] == [
        (fault["id"], "cross-az", "all", "Injected")
    ]
    assert rows[0]["params"]["delay"] == 0.03 and rows[0]["applied_at"]
    reverted = lab_cli("fault", "revert", "--all", "-n", lab.name)
    assert reverted.returncode == 0 and f"fault {fault['id']} reverted" in reverted.stdout
    rows = json.loads(lab_cli("fault", "status", "--json", "-n", lab.name).stdout)
    assert rows[0]["state"] == "Not Injected"
    assert_same(before, snapshot(lab))


def test_duration_reverts_by_itself(make_lab):
    lab = make_lab()
    before = snapshot(lab)
    result = faults.apply(lab, "link", "node-b1", ["partition=on"], duration=1.0)
    fid = result["fault"]["id"]
    assert result["fault"]["expires_at"]
    assert "LAB-FAULT" in in_host(lab.name, "node-b1", "iptables-save")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = json.loads(lab.state.path("faults.json").read_text())["faults"]
        if rows[0]["state"] == "Not Injected":
            break
        time.sleep(0.2)
    assert rows[0]["state"] == "Not Injected" and rows[0]["reverted_by"] == "duration"
    assert "LAB-FAULT" not in in_host(lab.name, "node-b1", "iptables-save")
    assert_same(before, snapshot(lab))
    assert not _reverters(lab.name, fid)


def test_an_expired_fault_is_reverted_by_the_next_command_if_its_reverter_died(make_lab):
    lab = make_lab()
    result = faults.apply(lab, "link", "node-b1", ["loss=5%"], duration=1.0)
    fid = result["fault"]["id"]
    for pid in _reverters(lab.name, fid):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)  # our child: reap it
    time.sleep(1.2)
    assert "LAB-FAULT" in in_host(lab.name, "node-b1", "iptables-save"), "nobody reverted it yet"
    rows = faults.status(lab)
    assert rows[0]["state"] == "Not Injected" and rows[0]["reverted_by"] == "duration"
    assert "LAB-FAULT" not in in_host(lab.name, "node-b1", "iptables-save")


def test_a_dead_delay_helper_is_reported_and_traffic_is_not_blackholed(make_lab):
    lab = make_lab()
    before = snapshot(lab)
    pod = next(p for p in lab.topology.pods if lab.topology.node(p.node).az != "us-east-1a")
    across = (str(lab.plan.ip(pod.name)), 9090)
    faults.apply(lab, "cross-az", None, ["delay=40ms"])
    assert median_ms(connect_times(lab, "elb-a1", across, 5)) >= 40
    pids = subprocess.run(["ip", "netns", "pids", ns(lab.name, "rt-cluster")], capture_output=True, text=True)
    (helper,) = [int(p) for p in pids.stdout.split() if "lab-nfqdelay" in _comm(int(p))]
    os.kill(helper, signal.SIGKILL)
    os.waitpid(helper, 0)
    # --queue-bypass: with nobody on the queue, packets pass undelayed instead of being dropped
    assert median_ms(connect_times(lab, "elb-a1", across, 5)) < 20
    (row,) = faults.status(lab)
    assert row["state"] == "Injected" and "helper process gone on rt-cluster" in row["problem"]
    faults.revert(lab)
    assert_same(before, snapshot(lab))


def _reverters(lab_name: str, fid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"lab.faults.reverter --lab {lab_name} --fault {fid}"], capture_output=True)
    return [int(p) for p in out.stdout.split()]


def test_a_crash_mid_apply_leaves_nothing_lab_clean_cannot_remove(make_lab):
    lab = make_lab()
    # A process applying a delay fault is killed right after the helper started, before the rules went in.
    code = (
        "import os, signal\n"
        "from lab.lab import Lab\n"
        "from lab import faults\n"
        "from lab.faults import ops\n"
        "real = ops.Helper.apply\n"
        "def apply(self, lab, step):\n"
        "    out = real(self, lab, step)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "ops.Helper.apply = apply\n"
        f"faults.apply(Lab.load({lab.name!r}), 'cross-az', None, ['delay=40ms'], duration=60)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    record = json.loads(lab.state.path("faults.json").read_text())["faults"][0]
    assert record["state"] == "Applying", "the record was written before the change"
    helpers = subprocess.run(["ip", "netns", "pids", ns(lab.name, "rt-cluster")], capture_output=True, text=True)
    assert any("lab-nfqdelay" in _comm(int(p)) for p in helpers.stdout.split()), "the helper was left running"
    # the next fault command undoes a half-applied fault ...
    rows = faults.status(lab)
    assert rows[0]["state"] == "Not Injected" and rows[0]["reverted_by"].startswith("recovered")
    pids = subprocess.run(["ip", "netns", "pids", ns(lab.name, "rt-cluster")], capture_output=True, text=True)
    assert not any("lab-nfqdelay" in _comm(int(p)) for p in pids.stdout.split())
    # ... and after another crash, `lab clean` removes everything, the helper included (--name: only this lab;
    # a bare `lab clean` would remove every lab on the machine, other tests' too).
    subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=60)
    pids = subprocess.run(["ip", "netns", "pids", ns(lab.name, "rt-cluster")], capture_output=True, text=True)
    helper = [int(p) for p in pids.stdout.split() if "lab-nfqdelay" in _comm(int(p))]
    assert helper
    result = lab_cli("clean", "--name", lab.name)
    assert result.returncode == 0, result.stderr
    assert lab_namespaces(lab.name) == []
    assert not [p for p in helper if os.path.exists(f"/proc/{p}") and "lab-nfqdelay" in _comm(p)]
    assert not lab.state.exists()


def test_lab_down_ends_applied_faults_and_their_reverters(make_lab):
    lab = make_lab()
    fid = faults.apply(lab, "cross-az", None, ["delay=10ms"], duration=300)["fault"]["id"]
    assert _reverters(lab.name, fid)
    lifecycle.down(lab.name)
    assert lab_namespaces(lab.name) == []
    assert not _reverters(lab.name, fid)


def test_faults_on_a_lab_that_is_not_up_are_one_line():
    result = lab_cli("fault", "status", "-n", "ghost9")
    assert result.returncode == 1 and result.stderr.startswith("Error: lab 'ghost9' is not up")


def test_unknown_fault_id_is_input_error(make_lab):
    lab = make_lab()
    with pytest.raises(InputError, match="no fault 7"):
        faults.revert(lab, [7])


def median_ms(samples: list[float | None]) -> float:
    ok = [s for s in samples if s is not None]
    assert len(ok) == len(samples), f"{len(samples) - len(ok)} connects failed"
    return statistics.median(ok) * 1000
