"""lab/programs.txt is complete (an ast scan of every program the code runs), and lab doctor's report and exit code."""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lab import doctor
from lab.cli.app import app
from lab.cli.commands import doctor as _doctor_cmd  # noqa: F401  registers `lab doctor`
from tests.conftest import REPO

SCANNED = ("lab", "services", "tests", "benchmarks")
# Calls whose list/tuple argument is an argv: subprocess's and os's, Host.run/popen, the kind backend's run and
# Command, the toolbox's _run(host, argv).
RUNNERS = {"run", "Popen", "popen", "check_output", "check_call", "Command", "_run"}
EXECS = {"execvp", "execv", "execvpe", "execlp", "execl"}  # os.exec*(program, argv)


def _literal_program(node: ast.AST) -> str | None:
    """The program of an argv literal: a list/tuple whose first element is a string ("@x": a placeholder)."""
    if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
        first = node.elts[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str) and not first.value.startswith("@"):
            return first.value
    return None


def _name(func: ast.AST) -> str:
    if ast.unparse(func) == "subprocess.call":  # a bare call(...) is an RPC here, not a program
        return "check_call"
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


WRAPPERS = {"nsenter", "ip"}  # run the program that follows them (nsenter ... --, ip netns exec NS)


def _runs_the_vararg(call: ast.Call, vararg: str) -> bool:
    """Is the function's *vararg this call's whole argv, or the command an argv literal's wrapper runs?"""
    for arg in call.args:
        if isinstance(arg, ast.Name) and arg.id == vararg:
            return True
        starred = isinstance(arg, ast.List) and arg.elts and isinstance(arg.elts[-1], ast.Starred)
        if starred and _literal_program(arg) in WRAPPERS and ast.unparse(arg.elts[-1].value) == vararg:
            return True
    return False


def command_helpers(tree: ast.Module) -> dict[str, int]:
    """Functions taking a command as *varargs (in_host(lab, host, *cmd), run(*cmd)): name -> the position
    of the program among their positional arguments. (docker(*args), whose words follow "docker", is not one.)"""
    helpers = {}
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef) or fn.args.vararg is None:
            continue
        calls = [c for c in ast.walk(fn) if isinstance(c, ast.Call) and _name(c.func) in RUNNERS | EXECS]
        if any(_runs_the_vararg(c, fn.args.vararg.arg) for c in calls):
            positional = [a.arg for a in fn.args.args]
            helpers[fn.name] = len(positional) - (1 if positional[:1] in (["self"], ["cls"]) else 0)
    return helpers


def programs_called(source: str, helpers: dict[str, int] | None = None) -> set[str]:
    """Every program `source` runs, as far as an ast can tell: argv literals (also through a variable assigned
    one) passed to a runner, os.exec*'s program, a command helper's program argument, {"argv": [...]} specs,
    and shutil.which("x")."""
    tree = ast.parse(source)
    helpers = {**(helpers or {}), **command_helpers(tree)}
    assigned: dict[str, set[str]] = {}  # argv = ["conntrack", ...]; cmd = ["ip", "netns", "exec", ns, *argv]

    def argv_programs(node: ast.AST) -> set[str]:
        """Programs of an argv expression: a literal (and the command its wrapper runs), or a name assigned one."""
        if isinstance(node, ast.Name):
            return assigned.get(node.id, set())
        program = _literal_program(node)
        if program is None:
            return set()
        last = node.elts[-1]
        if program in WRAPPERS and isinstance(last, ast.Starred) and isinstance(last.value, ast.Name):
            return {program, *assigned.get(last.value.id, set())}
        return {program}

    for _ in range(2):  # twice: a wrapper's list may be assigned before the list it wraps is seen
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and (programs := argv_programs(node.value)):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        assigned.setdefault(target.id, set()).update(programs)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "argv" and (program := _literal_program(value)):
                    found.add(program)
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        args = node.args
        if name in RUNNERS or name in EXECS:
            for arg in args:
                found |= argv_programs(arg)
        if name in EXECS and args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
            found.add(args[0].value)
        if name == "which" and args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
            found.add(args[0].value)
        # A helper is matched by its bare name only (obj.run(...) is some other run).
        if isinstance(node.func, ast.Name) and name in helpers and len(args) > helpers[name]:
            arg = args[helpers[name]]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(arg.value)
    return found


def _sources() -> list[Path]:
    return sorted(p for top in SCANNED for p in (REPO / top).rglob("*.py") if "__pycache__" not in p.parts)


def test_the_scan_finds_the_programs_it_should():
    called: dict[str, set[str]] = {}
    helpers = command_helpers(ast.parse((REPO / "tests" / "conftest.py").read_text()))  # in_host, imported
    for path in _sources():
        for program in programs_called(path.read_text(), helpers):
            called.setdefault(program, set()).add(str(path.relative_to(REPO)))
    # A few that are known to be called in each way: a scan that finds nothing would pass the next test.
    assert {"haproxy", "iptables-restore", "conntrack", "nsenter", "ping", "tcpdump", "docker", "kind"} <= set(called)
    assert {"dmesg", "xtables-monitor", "umount", "pgrep"} <= set(called)


def test_every_program_the_code_and_tests_run_is_in_the_registry():
    # lab-nfqdelay is the project's own, built by make setup; lab doctor's kernel section checks it.
    listed = {p.name for p in doctor.load_programs()} | {"lab-nfqdelay"}
    helpers = command_helpers(ast.parse((REPO / "tests" / "conftest.py").read_text()))
    unlisted = {}
    for path in _sources():
        for program in programs_called(path.read_text(), helpers) - listed:
            unlisted.setdefault(program, []).append(str(path.relative_to(REPO)))
    assert not unlisted, f"add these to lab/programs.txt (with their Debian package): {unlisted}"


SYNTHETIC = """
import os, shutil, subprocess
def helper(host, *cmd):
    return subprocess.run(["nsenter", "--net=x", "--", *cmd])
def tool(*words):
    return subprocess.run(["frob-tool", *words])
subprocess.run(["frob-run", "-x"], check=True)
subprocess.Popen(("frob-popen",))
subprocess.call(["frob-call"])
rpc.call(lab, "echo", ["not-a-program"])
argv = ["frob-var", "-a"]
host.run(argv)
os.execvp("frob-exec", ["frob-exec"])
shutil.which("frob-which")
spec = {"argv": ["frob-spec", "-db"]}
helper(h, "frob-helper", "-v")
tool("subcommand")
wrapped = ["frob-wrapped", "-q"]
subprocess.run(["ip", "netns", "exec", "ns", *wrapped])
inner = ["frob-inner"]
outer = ["nsenter", "--net=x", "--", *inner]
subprocess.run(outer)
other.run("not-a-program")
subprocess.run([sys.executable, "-m", "x"])
"""


def test_the_scan_reports_a_program_missing_from_the_registry():
    found = programs_called(SYNTHETIC)
    assert found == {"nsenter", "frob-run", "frob-popen", "frob-var", "frob-exec", "frob-which", "frob-spec",
                     "frob-helper", "frob-tool", "ip", "frob-wrapped", "frob-call", "frob-inner"}  # fmt: skip
    listed = {p.name for p in doctor.load_programs()}
    assert found - listed == found - {"nsenter", "ip"}


def test_the_registry_is_well_formed(tmp_path):
    programs = doctor.load_programs()
    names = [p.name for p in programs]
    assert len(names) == len(set(names)), "a program is listed twice"
    assert {p.scope for p in programs} == set(doctor.SCOPES)
    assert all(p.purpose and p.package for p in programs)
    bad = tmp_path / "programs.txt"
    bad.write_text("# comment\nhaproxy haproxy lab the ELB\nping iputils-ping sometimes ping\n")
    with pytest.raises(ValueError, match=r"programs.txt:3: want 'program package scope purpose'"):
        doctor.load_programs(bad)


def _install_list(*flags: str) -> set[str]:
    script = REPO / "scripts" / "install-system-deps.sh"
    out = subprocess.run([str(script), "--list", *flags], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_the_install_script_installs_what_the_registry_lists():
    programs = doctor.load_programs()
    packages = {
        scope: {p.package for p in programs if p.scope == scope and p.package != "-"} for scope in doctor.SCOPES
    }
    base = _install_list()
    assert base == packages["lab"] | packages["build"]
    assert "iputils-ping" not in base and "docker.io" not in base  # make demo never installs Docker
    assert _install_list("--test") == base | packages["test"] | packages["optional"]
    assert "iputils-ping" in _install_list("--test")


def test_a_missing_program_names_its_package_and_fails_the_verdict(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: nothing is installed
    programs = [
        doctor.Program("frob", "frob-tools", "lab", "frobs"),
        doctor.Program("pingish", "pingish-pkg", "test", "the tests"),
    ]
    checks = doctor.check_programs(programs, tests=False)
    report = doctor.Report(checks)
    assert [(c.name, c.ok, c.required) for c in checks] == [("frob", False, True), ("pingish", False, False)]
    assert not report.ok
    assert report.verdict() == "NOT READY: the lab cannot run here: missing frob (apt-get install frob-tools)"
    text = report.text()
    assert "  MISSING  frob" in text and "apt-get install frob-tools (or make setup)" in text
    assert "  absent   pingish" in text  # not required without --tests
    # --tests: the test suite's programs are required too
    report = doctor.Report(doctor.check_programs(programs, tests=True), tests=True)
    assert "missing frob, pingish (apt-get install frob-tools pingish-pkg)" in report.verdict()
    brief = report.text(brief=True).splitlines()
    assert len(brief) == 4 and brief[-1].startswith("verdict: NOT READY")


def test_lab_doctor_without_root_and_programs_exits_1(tmp_path, monkeypatch):
    # The unit tier cannot assume root: the command is run as if uid 1000 (then it probes nothing in the kernel).
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert "  MISSING  haproxy                haproxy                 lab       the ELB nodes  -> " in result.output
    assert any(line.startswith("  FAIL     root") and "run with sudo" in line for line in lines)
    assert lines[-1].startswith("verdict: NOT READY: the lab cannot run here: missing haproxy")
    assert "root: run with sudo" in lines[-1]

    result = CliRunner().invoke(app, ["doctor", "--json"])
    data = json.loads(result.output)
    assert result.exit_code == 1 and data["ok"] is False
    ping = next(c for c in data["checks"] if c["name"] == "ping")
    assert (ping["ok"], ping["required"], ping["package"], ping["scope"]) == (False, False, "iputils-ping", "test")
    assert next(c for c in data["checks"] if c["section"] == "kernel")["ok"] is None  # not probed without root


def test_lab_doctor_help_has_an_example():
    result = CliRunner().invoke(app, ["doctor", "--help"])
    assert result.exit_code == 0 and "sudo lab doctor --tests" in result.output
