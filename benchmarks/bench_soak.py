"""Benchmark: a long `lab load` through the real CLI, with the lab's resources sampled every minute.

Run as root:  .venv/bin/python benchmarks/bench_soak.py [--minutes 30] [--rate 300] [--name soak]
Drives `lab load accounts -r RATE -d Nm -c per-request` with its JSON result written to a file, on the lab
NAME (brought up with the default topology if it is not up, and then removed). Every minute it samples the
lab's processes (HAProxy, the pods and their supervisor: open files, resident memory), each node's conntrack
entries, and the generator's own memory (the `lab load` process and its workers), and prints them as a
table with each column's least-squares slope per hour. At the end: seconds from the last scheduled request
to the JSON result written and to the command's exit, and the sizes of the summary and per-second files.
Not a test: figures go in docs/metrics.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lab import toolbox  # noqa: E402
from lab.errors import LabError  # noqa: E402
from lab.hosts import pids_in_netns  # noqa: E402
from lab.lab import Lab  # noqa: E402

LAB = [sys.executable, "-m", "lab.cli"]


def status_kb(pid: int, key: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def descendants(root: int) -> set[int]:
    """root and every process below it (the generator and its worker processes)."""
    parents = {int(e.name): ppid(int(e.name)) for e in os.scandir("/proc") if e.name.isdigit()}
    found, grew = {root}, True
    while grew:
        more = {p for p, pp in parents.items() if pp in found} - found
        found |= more
        grew = bool(more)
    return found


def lab_processes(lab: Lab, exclude: set[int]) -> set[int]:
    """The processes in the lab's namespaces (not the generator) and the supervisor that started them."""
    inside = {pid for pids in pids_in_netns([h.netns for h in lab.hosts.values()]).values() for pid in pids}
    inside -= exclude
    return inside | {ppid(p) for p in inside if "lab.runtime.supervisor" in cmdline(ppid(p))}


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def sample(lab: Lab, generator: int | None) -> dict[str, float]:
    gen = descendants(generator) if generator else set()
    procs = lab_processes(lab, gen)
    conntrack = [toolbox.conntrack_fill(lab.host(n.name))["count"] for n in lab.topology.k8s_nodes]
    return {
        "lab procs": len(procs),
        "lab fds": sum(open_files(p) for p in procs),
        "lab RSS MB": sum(status_kb(p) for p in procs) / 1024,
        "conntrack max": max(conntrack),
        "conntrack sum": sum(conntrack),
        "gen RSS MB": status_kb(generator) / 1024 if generator else 0.0,
        "workers RSS MB": sum(status_kb(p) for p in gen - {generator}) / 1024,
        "gen fds": open_files(generator) if generator else 0,
    }


def slope_per_hour(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx * 60 if sxx else 0.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--name", default="soak", help="lab name (brought up if not up, then removed)")
    parser.add_argument("--out", type=Path, default=None, help="directory for the result files (default: a temp dir)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 1
    ours = False
    try:
        lab = Lab.load(args.name)
    except LabError:
        subprocess.run([*LAB, "up", "-n", args.name], check=True, capture_output=True)
        lab, ours = Lab.load(args.name), True
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="lab-soak-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    result = out_dir / "result.json"
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores); lab {lab.name}; files in {out_dir}")
    cmd = [
        *LAB,
        *("load", "accounts", "-n", lab.name, "-r", f"{args.rate:g}", "-d", f"{args.minutes:g}m"),
        *("-c", "per-request", "--json", "--output", str(result)),
    ]
    print("$ lab " + " ".join(cmd[3:]), flush=True)
    rows: list[tuple[float, dict[str, float]]] = [(0.0, sample(lab, None))]
    with open(out_dir / "stdout.txt", "w") as so, open(out_dir / "stderr.txt", "w") as se:
        started = time.time()
        proc = subprocess.Popen(cmd, stdout=so, stderr=se)
        end = started + args.minutes * 60
        marks = sorted({min(started + 60 * k, end - 5) for k in range(1, math.ceil(args.minutes) + 1)})
        try:
            for due in marks:  # one sample a minute; the last just before the end
                time.sleep(max(0.0, due - time.time()))
                if proc.poll() is not None:
                    break
                rows.append(((time.time() - started) / 60, sample(lab, proc.pid)))
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
        exited = time.time()
    after = sample(lab, None)
    try:
        print_table(rows, after)
        if proc.returncode != 0:
            print(f"lab load exited {proc.returncode}: {(out_dir / 'stderr.txt').read_text()[-500:]}")
            return 1
        data = json.loads(result.read_text())
        last_request = data["started"] + data["spec"]["duration"]
        series = out_dir / data.get("per_second_file", "")
        print(
            f"\n{data['requests']:,} requests, ok {data['ok_ratio'] * 100:.3f}%, p99 "
            f"{data['histograms_ms']['latency']['p99_ms']:.2f} ms; {data['slices']} per-second slices"
        )
        print(
            f"last scheduled request -> JSON written: {result.stat().st_mtime - last_request:.2f} s; "
            f"-> command exited (summary printed): {exited - last_request:.2f} s"
        )
        print(
            f"summary JSON {result.stat().st_size / 1024:.1f} kB; per-second JSON Lines "
            f"{series.stat().st_size / 1024:.1f} kB ({series.stat().st_size / max(1, data['slices']):.0f} B a second)"
        )
    finally:
        if ours:
            subprocess.run([*LAB, "down", "-n", lab.name], capture_output=True)
    return 0


def print_table(rows: list[tuple[float, dict[str, float]]], after: dict[str, float]) -> None:
    cols = list(rows[0][1])
    print("\n" + f"{'minute':>7} " + " ".join(f"{c:>14}" for c in cols))
    for minute, r in rows:
        print(f"{minute:7.1f} " + " ".join(f"{r[c]:14.1f}" for c in cols))
    print(f"{'after':>7} " + " ".join(f"{after[c]:14.1f}" for c in cols))
    during = rows[1:]
    xs = [m for m, _ in during]
    print(f"{'slope/h':>7} " + " ".join(f"{slope_per_hour(xs, [r[c] for _, r in during]):14.2f}" for c in cols))
    print("(slope: least squares over the samples taken while the load ran, per hour; 'after': load ended)")


if __name__ == "__main__":
    sys.exit(main())
