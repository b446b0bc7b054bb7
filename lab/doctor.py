"""Is this machine ready for the lab? Programs from lab/programs.txt, root, and kernel features probed in a netns.

The kernel probes run inside a throwaway network namespace (lab.doctor.p<pid>, tagged like a lab's so `lab
clean` would find a leftover) that is always deleted: nothing is created in or changed on the host's namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import LabError

REGISTRY = Path(__file__).with_name("programs.txt")
SCOPES = ("lab", "build", "test", "optional")
PROBE_LAB = "doctor"  # the probe namespace is lab.doctor.p<pid>: lab clean's naming and tag rules apply


@dataclass(frozen=True)
class Program:
    """One line of lab/programs.txt."""

    name: str  # looked up on PATH; an absolute path is a file that must exist (a C header)
    package: str  # Debian package, or "-" when Debian has none
    scope: str
    purpose: str

    def present(self) -> bool:
        if self.name.startswith("/"):
            return Path(self.name).exists()
        return shutil.which(self.name) is not None


def load_programs(registry: Path = REGISTRY) -> list[Program]:
    """Parse the registry; a malformed line is a ValueError naming it (a broken checkout, not user input)."""
    programs = []
    for number, raw in enumerate(registry.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 3)
        if len(parts) < 4 or parts[2] not in SCOPES:
            raise ValueError(f"{registry}:{number}: want 'program package scope purpose' with scope in {SCOPES}")
        programs.append(Program(*parts))
    return programs


@dataclass
class Check:
    """One finding: ok True/False, or None when it could not be probed (then `detail` says why)."""

    section: str  # programs | root | kernel
    name: str
    ok: bool | None
    required: bool
    detail: str = ""
    fix: str = ""
    package: str = ""  # programs: the Debian package ("-": none)
    scope: str = ""  # programs: lab | build | test | optional

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


HEADINGS = {
    "programs": f"programs (lab/{REGISTRY.name}: program, Debian package, scope, what for):",
    "root": "privileges:",
    "kernel": "kernel (probed inside a throwaway network namespace):",
}


@dataclass
class Report:
    """Every check; ok when nothing required failed."""

    checks: list[Check] = field(default_factory=list)
    tests: bool = False  # were the test suite's programs required?

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if c.required and c.ok is not True]

    @property
    def ok(self) -> bool:
        return not self.problems

    def verdict(self) -> str:
        what = "the lab and its test suite" if self.tests else "the lab"
        if self.ok:
            return f"ready: {what} can run on this machine"
        parts = []
        missing = [c for c in self.problems if c.section == "programs"]
        if missing:
            packages = " ".join(sorted({c.package for c in missing if c.package != "-"}))
            install = f" (apt-get install {packages})" if packages else ""
            parts.append(f"missing {', '.join(c.name for c in missing)}{install}")
        parts += [f"{c.name}: {c.fix or c.detail}" for c in self.problems if c.section != "programs"]
        return f"NOT READY: {what} cannot run here: {'; '.join(parts)}"

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "tests": self.tests,
            "verdict": self.verdict(),
            "checks": [c.to_json() for c in self.checks],
        }

    def text(self, brief: bool = False) -> str:
        """Every check (brief: only what is wrong, and the verdict), then one verdict line."""
        out: list[str] = []
        section = None
        for c in self.checks:
            if brief and (c.ok is True or not c.required):
                continue
            if c.section != section:
                section = c.section
                out.append(HEADINGS[section])
            mark = {True: "ok", False: "MISSING" if c.section == "programs" else "FAIL", None: "?"}[c.ok]
            if c.ok is not True and not c.required:
                mark = "absent" if c.section == "programs" else "no"
            if c.section == "programs":
                line = f"  {mark:<8} {c.name:<22} {c.package:<23} {c.scope:<9} {c.detail}"
            else:
                line = f"  {mark:<8} {c.name:<22} {c.detail}"
            if c.ok is not True and c.fix:
                line += f"  -> {c.fix}"
            out.append(line.rstrip())
        out.append(f"verdict: {self.verdict()}")
        return "\n".join(out) + "\n"


def _install_hint(p: Program) -> str:
    if p.package == "-":
        return "see docs/kind.md"
    target = "make test-deps" if p.scope in ("test", "optional") else "make setup"
    return f"apt-get install {p.package} (or {target})"


def check_programs(programs: list[Program], tests: bool) -> list[Check]:
    required_scopes = {"lab", "build", "test"} if tests else {"lab", "build"}
    out = []
    for p in programs:
        ok = p.present()
        fix = "" if ok else _install_hint(p)
        out.append(Check("programs", p.name, ok, p.scope in required_scopes, p.purpose, fix, p.package, p.scope))
    return out


def check_root() -> Check:
    uid = os.geteuid()
    if uid == 0:
        return Check("root", "root", True, True, "running as root")
    return Check(
        "root", "root", False, True, f"running as uid {uid}: the lab creates network namespaces", "run with sudo"
    )


def _probe(name: str, required: bool, fn: Callable[[], str], fix: str = "") -> Check:
    """Run one probe: its return value is the detail; a failure is a FAIL with the error's last line."""
    try:
        return Check("kernel", name, True, required, fn())
    except (LabError, OSError, subprocess.SubprocessError) as exc:
        lines = str(exc).strip().splitlines()
        return Check("kernel", name, False, required, lines[-1] if lines else type(exc).__name__, fix)


def check_kernel(programs: list[Program]) -> list[Check]:
    """Probe the kernel features the lab uses, inside a throwaway namespace that is always deleted."""
    from lab.faults.ops import helper_binary, netem_available
    from lab.hosts import Host, create_netns, delete_netns
    from lab.state import netns_name

    have = {p.name for p in programs if p.present()}
    path = Path("/run/netns") / netns_name(PROBE_LAB, f"p{os.getpid()}")
    made = _probe("network namespaces", True, lambda: _create(path, create_netns), "a kernel with CONFIG_NET_NS")
    checks = [made]
    if not made.ok:
        return checks
    if "nsenter" not in have:  # every probe below runs its tool inside the namespace through nsenter
        delete_netns(path)
        return [*checks, Check("kernel", "kernel features", None, True, "not probed: nsenter is missing", "")]
    host = Host("doctor-probe", "probe", str(path))
    try:
        if "ip" in have:  # the lab's tag: `lab clean` removes this namespace if we are killed before finally
            host.run(["ip", "link", "set", "dev", "lo", "alias", f"lab:{PROBE_LAB}"], check=False)
        if "conntrack" in have:
            checks.append(
                _probe(
                    "conntrack",
                    True,
                    lambda: f"table reachable, {host.run(['conntrack', '-C']).stdout.strip()} entries",
                    "modprobe nf_conntrack",
                )
            )
        if "tc" in have:
            netem = _probe("sch_netem", False, lambda: _netem(host, netem_available), "modprobe sch_netem")
            checks.append(netem)
            if "iptables" in have:
                # Without sch_netem, delay faults queue packets to lab-nfqdelay through NFQUEUE: then that is required.
                checks.append(_probe("NFQUEUE", not netem.ok, lambda: _nfqueue(host), "modprobe nfnetlink_queue"))
                checks.append(
                    _probe("lab-nfqdelay", not netem.ok, lambda: f"built: {helper_binary()}", "run `make setup`")
                )
        if "iptables" in have:
            checks.append(_probe("iptables backend", True, lambda: _backend(host), "apt-get install iptables"))
    finally:
        delete_netns(path)
    return checks


def _create(path: Path, create_netns: Callable[[Path], None]) -> str:
    create_netns(path)
    return f"{path.name} created (deleted after these probes)"


def _netem(host: Any, netem_available: Callable[[Any], bool]) -> str:
    if not netem_available(host):
        raise OSError("sch_netem is not available: delay and loss faults use the NFQUEUE fallback")
    return "delay and loss faults use tc netem"


def _nfqueue(host: Any) -> str:
    rule = ["OUTPUT", "-o", "lo", "-p", "udp", "--dport", "9", "-j", "NFQUEUE", "--queue-num", "7", "--queue-bypass"]
    host.run(["iptables", "-t", "mangle", "-A", *rule])
    host.run(["iptables", "-t", "mangle", "-D", *rule])
    return "the NFQUEUE target works (the delay fallback)"


def _backend(host: Any) -> str:
    version = host.run(["iptables", "--version"]).stdout.strip()
    host.run(["iptables-save"])
    kind = "nft" if "nf_tables" in version else "legacy"
    return f"{kind} ({version})"


def examine(tests: bool = False) -> Report:
    """The whole report (programs are looked up on PATH). tests=True also requires the test suite's programs."""
    programs = load_programs()
    report = Report(tests=tests)
    report.checks += check_programs(programs, tests)
    root = check_root()
    report.checks.append(root)
    if root.ok:
        report.checks += check_kernel(programs)
    else:
        report.checks.append(Check("kernel", "kernel features", None, False, "not probed: needs root"))
    return report
