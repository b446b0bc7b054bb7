"""Benchmark: `lab up` / `lab down` wall times vs. the floor of bare namespaces + veths made with `ip`.

Run as root:  .venv/bin/python benchmarks/bench_up_down.py [--runs 5]
Prints a table for the default topology and a generated 50-node topology: wall seconds of each whole CLI call
and the CPU seconds it used (on a busy machine CPU is the steadier figure). lab/'s bytecode is compiled first,
as any run without PYTHONDONTWRITEBYTECODE leaves it. Not a test: figures go in README.
"""

from __future__ import annotations

import argparse
import compileall
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lab.models.topology import Topology  # noqa: E402
from lab.models.yamlio import load_model  # noqa: E402
from lab.render.plan import build_plan  # noqa: E402

LAB = [str(REPO / ".venv" / "bin" / "lab")]


def fifty_node_topology(path: Path) -> Path:
    path.write_text(
        """\
name: bench50
description: generated for benchmarks - 50 nodes over 3 AZs, 2 services x 10 replicas
azs:
  - {name: us-east-1a, nodes: 17}
  - {name: us-east-1b, nodes: 17}
  - {name: us-east-1c, nodes: 16}
elb:
  listeners:
    - {port: 9090, service: accounts}
    - {port: 9091, service: catalog}
services:
  - {name: accounts, node_port: 30090, replicas: 10}
  - {name: catalog, node_port: 30091, replicas: 10}
"""
    )
    return path


def settle() -> None:
    # The kernel frees deleted namespaces asynchronously; let that finish so runs do not overlap it.
    time.sleep(1.0)


def timed(cmd: list[str], cpu: list[float] | None = None) -> float:
    """Wall seconds of one run; its user + system CPU seconds are appended to `cpu`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu is not None:
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return wall


def lab_times(topology: Path, name: str, runs: int) -> tuple[list[float], list[float], list[float]]:
    """Wall seconds of each `lab up` and `lab down`, and the CPU seconds of each `lab up`."""
    ups, downs, up_cpu = [], [], []
    for _ in range(runs):
        settle()
        ups.append(timed([*LAB, "up", "-t", str(topology), "--name", name], up_cpu))
        settle()
        downs.append(timed([*LAB, "down", "--name", name]))
    return ups, downs, up_cpu


def floor_times(topology: Path, runs: int) -> tuple[list[float], list[float], int, int]:
    """The same number of namespaces and veth pairs, made and removed with one `ip` command each."""
    topo = load_model(Topology, topology)
    plan = build_plan(topo)
    hosts = [h.name for h in plan.hosts]
    ups, downs = [], []
    for _ in range(runs):
        settle()
        t0 = time.perf_counter()
        for h in hosts:
            subprocess.run(["ip", "netns", "add", f"floor.{h}"], check=True)
        for i, link in enumerate(plan.links):
            subprocess.run(
                [
                    "ip",
                    "-n",
                    f"floor.{link.a.host}",
                    "link",
                    "add",
                    f"f{i}",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    link.b.ifname,
                    "netns",
                    f"floor.{link.b.host}",
                ],
                check=True,
            )
        ups.append(time.perf_counter() - t0)
        settle()
        t0 = time.perf_counter()
        for h in hosts:
            subprocess.run(["ip", "netns", "del", f"floor.{h}"], check=True)
        downs.append(time.perf_counter() - t0)
    return ups, downs, len(hosts), len(plan.links)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for package in ("lab", "services"):
        compileall.compile_dir(REPO / package, quiet=1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [
            ("default (3 nodes, 4 pods)", REPO / "topologies" / "default.yaml", "benchdef"),
            ("generated 50 nodes, 20 pods", fifty_node_topology(Path(tmp) / "bench50.yaml"), "bench50"),
        ]
        for label, topology, name in cases:
            ups, downs, up_cpu = lab_times(topology, name, args.runs)
            fups, fdowns, n_ns, n_veth = floor_times(topology, args.runs)
            rows.append(
                (
                    label,
                    n_ns,
                    n_veth,
                    statistics.median(ups),
                    statistics.median(up_cpu),
                    statistics.median(downs),
                    statistics.median(fups),
                    statistics.median(fdowns),
                )
            )
    print(f"median of {args.runs} runs; lab times are whole CLI invocations (Python start included)")
    print(
        f"{'topology':30} {'netns':>5} {'veths':>5} {'lab up':>8} {'up CPU':>8} {'lab down':>8} {'ip floor up':>11} "
        f"{'floor down':>10} {'up/floor':>8}"
    )
    for label, n_ns, n_veth, up, cpu, down, fup, fdown in rows:
        print(
            f"{label:30} {n_ns:5d} {n_veth:5d} {up:7.2f}s {cpu:7.2f}s {down:7.2f}s {fup:10.2f}s {fdown:9.2f}s "
            f"{up / fup:7.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
