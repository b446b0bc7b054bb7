"""Benchmark the LabService server on loopback: pooled RPC/s and new connections/s.

The server runs in a forked child (as a pod forked from the lab's zygote); load comes from
forked client processes. Everything stays on 127.0.0.1 in this network namespace.

    .venv/bin/python benchmarks/bench_thrift_service.py [--seconds 3] [--server lab|stock]

--server stock runs thriftpy2's TThreadedServer instead, for comparison.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import socket
import threading
import time

from labservices.client import client_on_socket
from labservices.idl import LabService
from labservices.server import PodIdentity, serve, stop_on_signals

LOOPBACK = "127.0.0.1"
BACKLOG = 1024  # deep enough that the benchmark measures the server, not SYN drops


def _run_lab_server(listener: socket.socket) -> None:
    stop = threading.Event()
    stop_on_signals(stop, (signal.SIGTERM,))
    serve(listener, PodIdentity("bench", "bench-0", "node", "az"), stop)


def _run_stock_server(listener: socket.socket) -> None:
    from thriftpy2.protocol import TCyBinaryProtocolFactory
    from thriftpy2.server import TThreadedServer
    from thriftpy2.thrift import TProcessor
    from thriftpy2.transport import TCyBufferedTransportFactory, TServerSocket

    class Handler:
        def ping(self) -> None:
            return None

    # Hand thriftpy2 our already-listening socket instead of letting it bind its own.
    trans = TServerSocket(client_timeout=None)
    trans.sock = listener
    trans.listen = lambda: None
    TThreadedServer(
        TProcessor(LabService, Handler()),
        trans,
        daemon=True,
        itrans_factory=TCyBufferedTransportFactory(),
        iprot_factory=TCyBinaryProtocolFactory(),
    ).serve()


def start_server(kind: str) -> tuple[int, tuple[str, int]]:
    """Fork a server process on a fresh loopback listener; returns (pid, address)."""
    listener = socket.create_server((LOOPBACK, 0), backlog=BACKLOG)
    addr = listener.getsockname()
    pid = os.fork()
    if pid == 0:
        try:
            (_run_lab_server if kind == "lab" else _run_stock_server)(listener)
        finally:
            os._exit(0)
    listener.close()
    return pid, addr


def _pooled(addr, deadline: float, out) -> None:
    with socket.create_connection(addr) as sock:
        client = client_on_socket(sock, 5.0)
        n = 0
        while time.monotonic() < deadline:
            client.ping()
            n += 1
    out.put(n)


def _new_conns(addr, deadline: float, out) -> None:
    n = errors = 0
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(addr, timeout=5.0) as sock:
                client_on_socket(sock, 5.0).ping()
            n += 1
        except OSError:
            errors += 1
    out.put(n)
    if errors:
        print(f"  client saw {errors} connection errors")


def measure(target, addr, procs: int, seconds: float) -> float:
    """Run `procs` client processes for `seconds`; returns completed operations per second."""
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    deadline = time.monotonic() + seconds + 0.2  # +0.2 s for the workers to start
    workers = [ctx.Process(target=target, args=(addr, deadline, out)) for _ in range(procs)]
    for w in workers:
        w.start()
    total = sum(out.get(timeout=seconds + 30) for _ in workers)
    for w in workers:
        w.join()
    return total / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--server", choices=("lab", "stock"), default="lab")
    p.add_argument("--pooled-conns", type=int, default=4, help="client processes, one connection each")
    p.add_argument("--conn-procs", type=int, default=2, help="client processes opening connections")
    args = p.parse_args()

    pid, addr = start_server(args.server)
    try:
        time.sleep(0.2)
        rpc = measure(_pooled, addr, args.pooled_conns, args.seconds)
        print(f"{args.server} server, {os.cpu_count()} cores, loopback:")
        print(f"  pooled ping RPC/s ({args.pooled_conns} connections):    {rpc:8.0f}")
        conns = measure(_new_conns, addr, args.conn_procs, args.seconds)
        print(f"  new connections/s (connect, ping, close; {args.conn_procs} procs): {conns:8.0f}")
    finally:
        os.kill(pid, signal.SIGTERM if args.server == "lab" else signal.SIGKILL)
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
