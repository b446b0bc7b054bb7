"""The reversible changes faults are made of, each working on a Host handle (a network namespace file).

Every op has capture (read the prior state, before anything changes), apply and revert (both idempotent:
re-applying or reverting twice is harmless; revert of a change that never happened is a no-op), and
describe (one line, for --dry-run and `lab fault status`). Only the ops named kube-proxy, pod and elb-*
go through the backend; everything else needs nothing but the namespace, so the kind backend reuses them
unchanged with /proc/<pid>/ns/net handles.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.errors import EnvironmentProblem, LabError
from lab.faults.model import Step
from lab.hosts import Host, NamespaceGone, is_zombie, netns_iproute, pids_in_netns, process_cmdline
from lab.render.healthcheck import with_port

if TYPE_CHECKING:
    from lab.lab import Lab

HELPER_READY_TIMEOUT = 5.0
TC_HANDLE = 0x1AB0000  # "1ab:" - the root qdisc a fault adds; anything else on the root is not ours
CT_MARK_BASE = 0x1AB00000  # conntrack mark of a fault's filler entries: base + fault id
CT_FILL_SRC = IPv4Address("198.18.0.0")  # RFC 2544 benchmarking range: never a lab address
CT_FILL_TIMEOUT = 86400


class Op:
    name = ""

    def capture(self, lab: Lab, step: Step) -> dict[str, Any]:
        return {}

    def apply(self, lab: Lab, step: Step) -> dict[str, Any]:
        raise NotImplementedError

    def revert(self, lab: Lab, step: Step) -> None:
        raise NotImplementedError

    def describe(self, step: Step) -> str:
        raise NotImplementedError


# --- iptables: a chain of the fault's own, hooked from built-in chains ---------------------------------------


def _tables(saved: str) -> dict[str, list[str]]:
    """iptables-save text -> table -> its lines (comments dropped)."""
    out: dict[str, list[str]] = {}
    table = None
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            out[table] = []
        elif table and line and not line.startswith("#") and line != "COMMIT":
            out[table].append(line)
    return out


def _is_jump(line: str, chain: str) -> bool:
    return line.startswith("-A ") and (line.endswith(f"-j {chain}") or f"-j {chain} " in line)


def _empty_table(lines: list[str]) -> bool:
    """Only built-in chains, policy ACCEPT, no rules: the same as no table at all."""
    return all(ln.startswith(":") and " ACCEPT " in ln for ln in lines) and not any(ln.startswith("-") for ln in lines)


def _nft_backend(host: Host) -> bool:
    return "nf_tables" in host.run(["iptables", "--version"]).stdout


class IptablesChain(Op):
    """args: chain, tables: {table: {"hooks": [[builtin, match]], "rules": [rule]}} (rules without -A CHAIN)."""

    name = "iptables"

    def capture(self, lab: Lab, step: Step) -> dict[str, Any]:
        present = _tables(lab.host(step.host).run(["iptables-save"]).stdout)
        return {"tables_absent": [t for t in step.args["tables"] if t not in present]}

    def apply(self, lab: Lab, step: Step) -> dict[str, Any]:
        host, chain = lab.host(step.host), step.args["chain"]
        present = _tables(host.run(["iptables-save"]).stdout)
        text = []
        for table, spec in step.args["tables"].items():
            lines = present.get(table, [])
            text += [f"*{table}", f":{chain} - [0:0]"]  # declaring flushes it: re-applying is idempotent
            text += [f"-A {chain} {rule}" for rule in spec["rules"]]
            for builtin, match in spec["hooks"]:
                if not any(ln.startswith(f"-A {builtin} ") and _is_jump(ln, chain) for ln in lines):
                    text.append(f"-I {builtin} 1 {match} -j {chain}".replace("  ", " "))
            text.append("COMMIT")
        host.run(["iptables-restore", "--noflush"], input="\n".join(text) + "\n")
        return {}

    def revert(self, lab: Lab, step: Step) -> None:
        host, chain = lab.host(step.host), step.args["chain"]
        present = _tables(host.run(["iptables-save"]).stdout)
        text = []
        for table in step.args["tables"]:
            lines = present.get(table, [])
            if not any(ln.split()[0] == f":{chain}" for ln in lines if ln.startswith(":")):
                continue
            text.append(f"*{table}")
            text += ["-D" + ln[2:] for ln in lines if _is_jump(ln, chain)]
            text += [f":{chain} - [0:0]", f"-X {chain}", "COMMIT"]
        if text:
            host.run(["iptables-restore", "--noflush"], input="\n".join(text) + "\n")
        absent = (step.prior or {}).get("tables_absent", [])
        if absent and _nft_backend(host):
            # iptables-nft leaves a table it created behind; drop it if it is empty again (as before the fault).
            now = _tables(host.run(["iptables-save"]).stdout)
            for table in absent:
                if table in now and _empty_table(now[table]):
                    host.run(["nft", "delete", "table", "ip", table], check=False)

    def describe(self, step: Step) -> str:
        parts = []
        for table, spec in step.args["tables"].items():
            hooks = ", ".join(f"{b}{(' ' + m) if m else ''}" for b, m in spec["hooks"])
            rules = "; ".join(spec["rules"])
            parts.append(f"{table}: {step.args['chain']} from {hooks}: {rules}")
        return f"{step.host}: iptables " + " | ".join(parts)


# --- helper processes living in a lab namespace ---------------------------------------------------------------


def find_helpers(host: Host, marker: list[str]) -> list[int]:
    """Processes in the host's namespace whose command line contains `marker` (found even after a crash)."""
    pids = pids_in_netns([host.netns]).get(host.netns, [])
    out = []
    for pid in pids:
        cmd = process_cmdline(pid)
        if all(m in cmd for m in marker):
            out.append(pid)
    return out


def stop_pids(pids: list[int], grace: float = 2.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for pid in pids:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            if is_zombie(pid):
                break
            time.sleep(0.005)
        if Path(f"/proc/{pid}").exists() and not is_zombie(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for pid in pids:  # our own children (a helper started by this process): reap them
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def helper_binary() -> str:
    """lab-nfqdelay, built by `make setup` next to this Python (the venv's bin)."""
    candidate = Path(sys.executable).parent / "lab-nfqdelay"
    if candidate.exists():
        return str(candidate)
    import shutil

    found = shutil.which("lab-nfqdelay")
    if not found:
        raise EnvironmentProblem("the NFQUEUE delay helper lab-nfqdelay is not built; run `make setup`")
    return found


def _program(word: str) -> str:
    """Placeholders in a helper's argv, resolved on this machine when it starts."""
    if word == "@nfqdelay":
        return helper_binary()
    if word == "@python":
        return sys.executable
    if word == "@responder":  # a stdlib-only script: run with -S, it starts in milliseconds
        return str(Path(__file__).with_name("responder.py"))
    return word


class Helper(Op):
    """args: argv (the program, run inside the host's namespace), marker (argv words that identify it), log."""

    name = "helper"

    def apply(self, lab: Lab, step: Step) -> dict[str, Any]:
        host = lab.host(step.host)
        running = find_helpers(host, step.args["marker"])
        if running:
            return {"pid": running[0]}
        argv = [_program(a) for a in step.args["argv"]]
        log = lab.state.path("logs", step.args["log"])
        with open(log, "ab") as err:
            proc = host.popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,  # outlives this command; revert (or lab down) stops it
                close_fds=True,
            )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], HELPER_READY_TIMEOUT)
        line = proc.stdout.readline().decode().strip() if ready else ""
        proc.stdout.close()
        if line != "ready":
            stop_pids([proc.pid])
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise LabError(f"{step.host}: {Path(argv[0]).name} did not start: {tail[0] if tail else 'no output'}")
        return {"pid": proc.pid}

    def revert(self, lab: Lab, step: Step) -> None:
        stop_pids(find_helpers(lab.host(step.host), step.args["marker"]))

    def describe(self, step: Step) -> str:
        argv = [a.lstrip("@") for a in step.args["argv"]]
        return f"{step.host}: run {' '.join(argv)}"


# --- tc qdiscs through pyroute2 --------------------------------------------------------------------------------


def _root_qdisc(ipr, index: int) -> Any:
    for q in ipr.get_qdiscs(index=index):
        if q["parent"] == 0xFFFFFFFF:
            return q
    return None


class Qdisc(Op):
    """args: ifname, chain: [{kind, parent ("root" or "1ab:1"), handle, params}] - a root tbf and/or netem."""

    name = "tc"

    def _ipr(self, host: Host):
        return netns_iproute(host.netns)

    def capture(self, lab: Lab, step: Step) -> dict[str, Any]:
        with self._ipr(lab.host(step.host)) as ipr:
            idx = ipr.link_lookup(ifname=step.args["ifname"])[0]
            root = _root_qdisc(ipr, idx)
        kind = root.get_attr("TCA_KIND") if root else None
        if root is not None and root["handle"] != TC_HANDLE and kind not in ("noqueue", "pfifo_fast", "mq", None):
            raise LabError(f"{step.host}/{step.args['ifname']} already has a {kind} root qdisc; remove it first")
        return {"root": kind}

    def apply(self, lab: Lab, step: Step) -> dict[str, Any]:
        with self._ipr(lab.host(step.host)) as ipr:
            idx = ipr.link_lookup(ifname=step.args["ifname"])[0]
            root = _root_qdisc(ipr, idx)
            if root is not None and root["handle"] == TC_HANDLE:
                ipr.tc("del", index=idx, handle=TC_HANDLE, parent=0xFFFFFFFF)  # re-apply from scratch
            for q in step.args["chain"]:
                parent = 0xFFFFFFFF if q["parent"] == "root" else _handle(q["parent"])
                verb = "add-class" if q.get("class") else "add"
                ipr.tc(verb, q["kind"], index=idx, handle=_handle(q["handle"]), parent=parent, **q["params"])
            for src in step.args.get("filters", []):  # traffic from these sources takes the delayed class 1ab:2
                net = IPv4Network(src)
                key = f"0x{int(net.network_address):08x}/0x{int(net.netmask):08x}+12"
                ipr.tc("add-filter", "u32", index=idx, parent=TC_HANDLE, prio=1, protocol=0x0800,
                       target=TC_HANDLE | 2, keys=[key])  # fmt: skip
        return {}

    def revert(self, lab: Lab, step: Step) -> None:
        with self._ipr(lab.host(step.host)) as ipr:
            found = ipr.link_lookup(ifname=step.args["ifname"])
            if not found:
                return
            root = _root_qdisc(ipr, found[0])
            if root is not None and root["handle"] == TC_HANDLE:
                ipr.tc("del", index=found[0], handle=TC_HANDLE, parent=0xFFFFFFFF)

    def describe(self, step: Step) -> str:
        parts = [f"{q['kind']} {' '.join(f'{k}={v}' for k, v in q['params'].items())}" for q in step.args["chain"]]
        text = f"{step.host}: tc qdisc on {step.args['ifname']}: " + " -> ".join(parts)
        if step.args.get("filters"):
            text += f"; delayed: traffic from {', '.join(step.args['filters'])}"
        return text


def _handle(text: str) -> int:
    major, _, minor = text.partition(":")
    return (int(major, 16) << 16) | (int(minor, 16) if minor else 0)


def netem_available(host: Host) -> bool:
    """Does this kernel have sch_netem? Probed on the namespace's loopback (nothing else sees it)."""
    probe = host.run(
        ["tc", "qdisc", "add", "dev", "lo", "root", "handle", "1ab:", "netem", "delay", "1ms"], check=False
    )
    if probe.returncode != 0:
        return False
    host.run(["tc", "qdisc", "del", "dev", "lo", "root"], check=False)
    return True


# --- conntrack filler entries ------------------------------------------------------------------------------------


def filler_lines(fault_id: int, count: int, start: int = 0) -> str:
    """conntrack -R input inserting `count` ASSURED, ESTABLISHED entries unique to this fault (its mark).

    Entry i: 198.18.<i/256 % 256>.<i % 256>:<1024 + i/65536> -> 198.19.<fault>:9 (RFC 2544 space, never routed).
    """
    mark = CT_MARK_BASE + fault_id
    dst = f"198.19.{(fault_id >> 8) & 255}.{fault_id & 255}"
    prefix = ".".join(str(CT_FILL_SRC).split(".")[:2])
    tail = f" --dport 9 --state ESTABLISHED -u ASSURED -t {CT_FILL_TIMEOUT} --mark {mark}\n"
    return "".join(
        f"-I -s {prefix}.{(i >> 8) & 255}.{i & 255} -d {dst} -p tcp --sport {1024 + (i >> 16)}{tail}"
        for i in range(start, start + count)
    )


def ct_count(host: Host) -> tuple[int, int]:
    """(this namespace's conntrack entries, the global nf_conntrack_max the table-full check compares with)."""
    return int(host.sysctl("net.netfilter.nf_conntrack_count")), int(host.sysctl("net.netfilter.nf_conntrack_max"))


def ct_flush_mark(host: Host, mark: int) -> None:
    """Delete exactly the entries carrying `mark` (one filtered flush in the kernel: fast at any size)."""
    from pyroute2 import NFCTSocket

    def flush() -> None:
        with NFCTSocket() as ct:
            ct.flush(mark=mark, mark_mask=0xFFFFFFFF)

    host.in_netns(flush)


def _conntrack_restore(host: Host, path: Path, fid: int, start: int, count: int) -> str:
    """Insert filler entries start..start+count with parallel `conntrack -R` (one per core); the last error line."""
    parts = max(1, min(os.cpu_count() or 1, 4)) if count >= 20_000 else 1
    size = -(-count // parts)
    procs, files = [], []
    try:
        for k in range(parts):
            n = min(size, count - k * size)
            if n <= 0:
                break
            f = path.with_suffix(f".{k}")
            f.write_text(filler_lines(fid, n, start=start + k * size))
            files.append(f)
            procs.append(host.popen(["conntrack", "-R", str(f)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        errors = [p.communicate(timeout=120)[1].decode(errors="replace").strip() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in files:
            f.unlink(missing_ok=True)
    return next((e.splitlines()[-1] for e in errors if e), "")


class ConntrackFill(Op):
    """args: fault, free | ceiling. Inserts filler entries so the namespace's own table is (nearly) full."""

    name = "conntrack-fill"

    def capture(self, lab: Lab, step: Step) -> dict[str, Any]:
        count, limit = ct_count(lab.host(step.host))
        return {"count": count, "max": limit}

    def apply(self, lab: Lab, step: Step) -> dict[str, Any]:
        host, fid = lab.host(step.host), step.args["fault"]
        mark = CT_MARK_BASE + fid
        ct_flush_mark(host, mark)  # re-apply: start again from the live count
        count, limit = ct_count(host)
        if step.args.get("ceiling") is not None:
            want = limit - step.args["ceiling"]
        else:
            want = limit - count - step.args["free"]
        path = lab.state.path("run", f"fault-{fid}-{step.host}.conntrack")
        inserted = 0
        # Live traffic comes and goes while we insert: top up until the table is where it should be.
        for _ in range(3):
            want = max(0, want)
            if not want:
                break
            err = _conntrack_restore(host, path, fid, inserted, want)
            inserted += want
            now, _ = ct_count(host)
            if now < count + inserted // 2:  # most inserts failed: not just the table filling up under us
                raise LabError(f"{step.host}: conntrack -R inserted too few entries: {err or 'no error'}")
            want = (
                (limit - step.args["ceiling"] - inserted) if "ceiling" in step.args else limit - now - step.args["free"]
            )
        after, _ = ct_count(host)
        return {"inserted": inserted, "count_before": count, "count_after": after, "max": limit}

    def revert(self, lab: Lab, step: Step) -> None:
        ct_flush_mark(lab.host(step.host), CT_MARK_BASE + step.args["fault"])

    def describe(self, step: Step) -> str:
        mark = f"0x{CT_MARK_BASE + step.args['fault']:x}"
        if step.args.get("ceiling") is not None:
            what = f"nf_conntrack_max - {step.args['ceiling']} entries (a table of {step.args['ceiling']} for traffic)"
        else:
            what = f"entries until {step.args['free']} slots are left"
        return f"{step.host}: conntrack: insert ASSURED filler {what}, mark {mark}"


# --- lab processes and kube-proxy (through the backend) --------------------------------------------------------


class PodControl(Op):
    """args: pod, action (stop | restart), overrides (backlog, accept_delay) for restart."""

    name = "pod"

    def _view(self, lab: Lab, pod: str) -> dict[str, Any]:
        procs = {p["name"]: p for p in lab.backend.processes(lab)}
        return procs[f"pod/{pod}"]

    def capture(self, lab: Lab, step: Step) -> dict[str, Any]:
        view = self._view(lab, step.args["pod"])
        return {"running": bool(view["wanted"]), "overrides": view.get("overrides") or {}}

    def apply(self, lab: Lab, step: Step) -> dict[str, Any]:
        pod = step.args["pod"]
        if step.args["action"] == "stop":
            lab.backend.control_pod(lab, pod, "stop")
        else:
            prior = (step.prior or {}).get("overrides", {})
            lab.backend.control_pod(lab, pod, "restart", overrides={**prior, **step.args["overrides"]})
        return {}

    def revert(self, lab: Lab, step: Step) -> None:
        prior = step.prior or {"running": True, "overrides": {}}
        pod = step.args["pod"]
        view = self._view(lab, pod)
        if not prior["running"]:
            lab.backend.control_pod(lab, pod, "stop")
        elif step.args["action"] == "stop" or (view.get("overrides") or {}) != prior["overrides"]:
            lab.backend.control_pod(lab, pod, "start", overrides=prior["overrides"])

    def describe(self, step: Step) -> str:
        if step.args["action"] == "stop":
            return f"{step.args['pod']}: stop the pod's server (kube-proxy is not told)"
        over = " ".join(f"{k}={v}" for k, v in step.args["overrides"].items())
        return f"{step.args['pod']}: restart the pod's server with {over}"


class KubeProxySync(Op):
    """args: nodes, without (pods whose endpoints the nodes' kube-proxy drops), local (services made Local)."""

    name = "kube-proxy"

    def _view(self, lab: Lab, args: dict[str, Any]) -> tuple[Any, dict | None]:
        from lab.render.kubeproxy import endpoints_from_topology

        topo = lab.topology
        if args.get("local"):
            services = [
                s.model_copy(update={"external_traffic_policy": "Local"}) if s.name in args["local"] else s
                for s in topo.services
            ]
            topo = topo.model_copy(update={"services": services})
        endpoints = None
        if args.get("without"):
            endpoints = {
                svc: [e for e in eps if e.pod not in args["without"]]
                for svc, eps in endpoints_from_topology(lab.topology, lab.plan).items()
            }
        return topo, endpoints

    def apply(self, lab: Lab, step: Step) -> dict[str, Any]:
        topo, endpoints = self._view(lab, step.args)
        lab.backend.sync_kube_proxy(lab, step.args["nodes"], endpoints=endpoints, topology=topo)
        return {}

    def revert(self, lab: Lab, step: Step) -> None:
        lab.backend.sync_kube_proxy(lab, step.args["nodes"])

    def describe(self, step: Step) -> str:
        what = []
        if step.args.get("without"):
            what.append(f"without the endpoints of {', '.join(step.args['without'])}")
        if step.args.get("local"):
            what.append(f"with externalTrafficPolicy Local for {', '.join(step.args['local'])}")
        return f"{', '.join(step.args['nodes'])}: re-sync kube-proxy {' and '.join(what)}"


class ElbCheckPort(Op):
    """args: elb, servers, port: move the ELB node's shared health check to another port (its checker's config,
    which it reloads; a file, so the move outlives a restart of the checker until the fault is reverted)."""

    name = "elb-check-port"

    def _set(self, lab: Lab, step: Step, port: int) -> None:
        elb = step.args["elb"]
        text = lab.backend.elb_checker_config(lab, elb)
        new = with_port(text, step.args["servers"], port)
        if new != text:
            lab.backend.set_elb_checker_config(lab, elb, new)

    def capture(self, lab: Lab, step: Step) -> dict[str, Any]:
        return {"port": lab.topology.health_check_port}

    def apply(self, lab: Lab, step: Step) -> dict[str, Any]:
        self._set(lab, step, step.args["port"])
        return {}

    def revert(self, lab: Lab, step: Step) -> None:
        self._set(lab, step, (step.prior or {}).get("port", lab.topology.health_check_port))

    def describe(self, step: Step) -> str:
        return (
            f"{step.args['elb']}: health check of {', '.join(step.args['servers'])} moved to port {step.args['port']}"
        )


class ElbIdleTimeout(Op):
    """args: elb, seconds: the ELB node's idle timeout (HAProxy timeout client/server), by a restart."""

    name = "elb-config"

    def capture(self, lab: Lab, step: Step) -> dict[str, Any]:
        return {"config": lab.backend.elb_config(lab, step.args["elb"])}

    def apply(self, lab: Lab, step: Step) -> dict[str, Any]:
        original = (step.prior or {})["config"]
        ms = f"{max(1, round(step.args['seconds'] * 1000))}ms"
        text = re.sub(r"(?m)^(\s+timeout (?:client|server)) \S+$", rf"\1 {ms}", original)
        if lab.backend.elb_config(lab, step.args["elb"]) != text:
            lab.backend.set_elb_config(lab, step.args["elb"], text)
        return {}

    def revert(self, lab: Lab, step: Step) -> None:
        original = (step.prior or {}).get("config")
        if original is not None and lab.backend.elb_config(lab, step.args["elb"]) != original:
            lab.backend.set_elb_config(lab, step.args["elb"], original)

    def describe(self, step: Step) -> str:
        return f"{step.args['elb']}: ELB idle timeout {step.args['seconds']:g}s (HAProxy restarted)"


OPS: dict[str, Op] = {
    op.name: op
    for op in (
        IptablesChain(),
        Helper(),
        Qdisc(),
        ConntrackFill(),
        PodControl(),
        KubeProxySync(),
        ElbCheckPort(),
        ElbIdleTimeout(),
    )
}


def run_quietly(fn: Callable[[], None]) -> str | None:
    """Run a revert; a namespace that is already gone means there is nothing left to revert."""
    try:
        fn()
    except NamespaceGone:
        return None
    except LabError as exc:
        return str(exc)
    return None
