"""Benchmark (not a test): the natural SNAT source-port race on this kernel, legacy vs modern kube-proxy rules.

The hypothesis of scenarios/snat-collision.yaml (docs/faults.md, "snat-port-range: what this kernel does, and
what the lab shows"): a node masquerading forwarded NodePort traffic picks the new source port when the SYN is
NATed but reserves it only when conntrack confirms the connection; two SYNs NATed at once on two CPUs can get
the same port, the second insert fails (`conntrack -S` insert_failed, drop), the SYN is lost and resent 1 s
later. Legacy rules (MASQUERADE without --random-fully) first try to keep the client's own port, so clients
whose source ports coincide make every pair of concurrent SYNs a candidate; modern rules (--random-fully) pick
a random port every time.

For each flavour, on a fresh seed lab (topologies/seed-2017.yaml, cross-zone on; modern: Kubernetes 1.28, as
the scenario's variants): every ELB node namespace runs one process connecting as fast as it can to one node's
NodePort (default node-a1, accounts' 31001), every socket bound to the same source port (20000), each
connection closed with a reset (SO_LINGER 0: no TIME_WAIT, the port is free for the next connect at once).
The node's `conntrack -S` is read before and after. Prints per flavour: connects made, connects/s,
insert_failed, drop (and clash_resolve: clashes the kernel resolved without a drop), connects that took >= 1 s
(a lost SYN resent), timeouts and errors, and insert_failed per 10,000 connects.

All traffic is between lab namespaces (the workers run under `nsenter --net=<ELB node>`); nothing is sent from
the host's namespace.

    sudo .venv/bin/python benchmarks/bench_snat_race.py [--connects 60000] [--flavour legacy] [--json out.json]
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lab import lifecycle  # noqa: E402
from lab.hosts import Host  # noqa: E402
from lab.lab import Lab  # noqa: E402
from lab.toolbox import conntrack_stats  # noqa: E402

FLAVOURS = {
    "legacy": ["kube_proxy.flavour=legacy"],
    "modern": ["kube_proxy.flavour=modern", "cluster.kubernetes_version=1.28.0"],
}
TOPOLOGY = REPO / "topologies" / "seed-2017.yaml"
COMMON = ["elb.cross_zone=true"]
SLOW_S = 1.0  # the first SYN retransmit comes 1 s after a lost SYN
COUNTERS = ("insert_failed", "drop", "clash_resolve", "insert", "invalid", "early_drop")


# --- the worker: runs inside one ELB node's namespace (started by nsenter), stdlib only -------------------


def worker(dst: str, port: int, sport: int, count: int, connect_timeout: float) -> dict:
    """`count` connects to dst:port, each from source port `sport`, each closed with a reset."""
    linger = struct.pack("ii", 1, 0)
    durations = {"lt_0.5s": 0, "0.5-1s": 0, "1-3s": 0, "ge_3s": 0}
    ok = slow = timeouts = 0
    errors: dict[str, int] = {}
    longest = 0.0
    print("ready", flush=True)
    sys.stdin.readline()  # "go": the three workers start together
    t0 = time.monotonic()
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            s.settimeout(connect_timeout)
            s.bind(("", sport))
            a = time.monotonic()
            try:
                s.connect((dst, port))
            except TimeoutError:
                timeouts += 1
                continue
            except OSError as exc:
                name = errno.errorcode.get(exc.errno or 0, str(exc))
                errors[name] = errors.get(name, 0) + 1
                continue
            took = time.monotonic() - a
            ok += 1
            longest = max(longest, took)
            slow += took >= SLOW_S
            bucket = "lt_0.5s" if took < 0.5 else "0.5-1s" if took < 1 else "1-3s" if took < 3 else "ge_3s"
            durations[bucket] += 1
        except OSError as exc:  # bind or setsockopt
            name = "bind:" + errno.errorcode.get(exc.errno or 0, str(exc))
            errors[name] = errors.get(name, 0) + 1
        finally:
            s.close()  # SO_LINGER 0: a reset, no TIME_WAIT
    return {
        "attempts": count,
        "connects": ok,
        "seconds": round(time.monotonic() - t0, 3),
        "slow": slow,
        "timeouts": timeouts,
        "errors": errors,
        "durations": durations,
        "longest_s": round(longest, 3),
    }


# --- the driver --------------------------------------------------------------------------------------------


def run_flavour(
    flavour: str, total: int, node_name: str, service: str, sport: int, connect_timeout: float, only: list[str] | None
) -> dict:
    name = f"rc{flavour[0]}{os.getpid() % 10000}"
    lab = lifecycle.prepare(TOPOLOGY, name, COMMON + FLAVOURS[flavour])
    t_up = time.monotonic()
    lifecycle.up(lab)
    procs: list[subprocess.Popen] = []
    try:
        lab = Lab.load(name)
        up_s = time.monotonic() - t_up
        node = lab.host(node_name)
        svc = next((s for s in lab.topology.services if s.name == service), None)
        if svc is None:
            raise SystemExit(f"topology has no service {service!r}")
        elbs: list[Host] = [h for h in lab.hosts_by_role("elb") if only is None or h.name in only]
        if not elbs or node.ip is None:
            raise SystemExit("the lab has no ELB nodes, or the node has no address")
        shares = [total // len(elbs) + (i < total % len(elbs)) for i in range(len(elbs))]
        for elb, share in zip(elbs, shares, strict=True):
            argv = [sys.executable, str(Path(__file__).resolve()), "--worker", node.ip, str(svc.node_port)]
            argv += [str(sport), str(share), repr(connect_timeout)]
            procs.append(elb.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for elb, proc in zip(elbs, procs, strict=True):
            if proc.stdout is None or proc.stdout.readline().strip() != "ready":
                raise SystemExit(f"the worker in {elb.name} did not start (exit code {proc.poll()})")
        before = conntrack_stats(node)
        t0 = time.monotonic()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        per_elb = {}
        for elb, proc in zip(elbs, procs, strict=True):
            out, _ = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"the worker in {elb.name} failed (exit code {proc.returncode})")
            per_elb[elb.name] = json.loads(out.strip().splitlines()[-1])
        wall = time.monotonic() - t0
        after = conntrack_stats(node)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        lifecycle.down(name)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in COUNTERS}
    connects = sum(r["connects"] for r in per_elb.values())
    errors: dict[str, int] = {}
    for r in per_elb.values():
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {
        "flavour": flavour,
        "lab": name,
        "up_seconds": round(up_s, 1),
        "target": f"{node_name} {node.ip}:{svc.node_port} ({service})",
        "source_port": sport,
        "attempts": sum(r["attempts"] for r in per_elb.values()),
        "connects": connects,
        "seconds": round(wall, 2),
        "connects_per_s": round(connects / wall, 1) if wall else 0.0,
        "slow": sum(r["slow"] for r in per_elb.values()),
        "timeouts": sum(r["timeouts"] for r in per_elb.values()),
        "errors": errors,
        "conntrack": delta,
        "insert_failed_per_10k": round(delta["insert_failed"] * 10000 / connects, 2) if connects else None,
        "per_elb": per_elb,
    }


def show(r: dict) -> None:
    ct = r["conntrack"]
    errors = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "none"
    print(
        f"{r['flavour']:<7} {r['connects']:>8,} {r['connects_per_s']:>10,.0f} {ct['insert_failed']:>13} "
        f"{ct['drop']:>6} {ct['clash_resolve']:>13} {r['slow']:>8} {r['timeouts']:>8} "
        f"{r['insert_failed_per_10k'] if r['insert_failed_per_10k'] is not None else '-':>12}   errors: {errors}",
        flush=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connects", type=int, default=60000, help="connect attempts per flavour, over all ELB nodes")
    ap.add_argument("--flavour", choices=sorted(FLAVOURS), action="append", help="only this flavour (repeatable)")
    ap.add_argument("--node", default="node-a1", help="the node whose NodePort every ELB node connects to")
    ap.add_argument("--service", default="accounts", help="the service whose NodePort is used")
    ap.add_argument("--source-port", type=int, default=20000, help="every connect's source port")
    ap.add_argument("--connect-timeout", type=float, default=4.0, help="seconds (> 3: a SYN resent twice shows)")
    ap.add_argument("--elb", action="append", help="only this ELB node connects (repeatable; default: all of them)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", nargs=5, metavar=("DST", "PORT", "SPORT", "COUNT", "TIMEOUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        dst, port, sport, count, timeout = args.worker
        print(json.dumps(worker(dst, int(port), int(sport), int(count), float(timeout))), flush=True)
        return 0
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 1
    flavours = args.flavour or list(FLAVOURS)
    started = time.monotonic()
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(
        f"{date}: load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores); kernel {os.uname().release}; "
        f"{args.connects:,} connects per flavour from port {args.source_port}",
        flush=True,
    )
    results = []
    header = (
        f"{'flavour':<7} {'connects':>8} {'connects/s':>10} {'insert_failed':>13} {'drop':>6} {'clash_resolve':>13} "
        f"{'>= 1 s':>8} {'timeouts':>8} {'if per 10k':>12}"
    )
    for flavour in flavours:
        r = run_flavour(
            flavour, args.connects, args.node, args.service, args.source_port, args.connect_timeout, args.elb
        )
        results.append(r)
        print(f"{flavour}: lab up in {r['up_seconds']} s, {r['target']}, {r['seconds']} s of connects", flush=True)
        for elb, e in r["per_elb"].items():
            print(f"  {elb}: {e['connects']:,} connects in {e['seconds']} s, durations {e['durations']}", flush=True)
    print()
    print(header)
    for r in results:
        show(r)
    print(f"run time {time.monotonic() - started:.0f} s; load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"date": date, "kernel": os.uname().release, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
