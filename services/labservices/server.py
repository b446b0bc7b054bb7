"""LabService Thrift server: one thread per connection, on a listener the lab (or main()) created."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from thriftpy2.protocol import TCyBinaryProtocol
from thriftpy2.thrift import TProcessor
from thriftpy2.transport import TCyBufferedTransport, TSocket, TTransportException

from labservices.idl import LabService, PodInfo

log = logging.getLogger(__name__)

DEFAULT_PORT = 9090
DEFAULT_BACKLOG = 128
# A blocked accept() wakes this often to see the stop event: bounds shutdown time
# without a watcher thread or wake-up pipe per server.
ACCEPT_POLL_S = 0.2

# Identity env vars, as a Kubernetes manifest sets them (downward API for pod name,
# node name and pod IP; the zone is a node label, so the manifest has to spell it out).
IDENTITY_ENV = {
    "service": "SERVICE_NAME",
    "pod": "POD_NAME",
    "node": "NODE_NAME",
    "az": "NODE_ZONE",
    "pod_ip": "POD_IP",
}


@dataclass(frozen=True)
class PodIdentity:
    """What whoami() reports about the serving pod."""

    service: str
    pod: str
    node: str = ""
    az: str = ""
    # Empty: report the local address of each connection (the pod IP inside a pod netns).
    pod_ip: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **given: str | None) -> PodIdentity:
        """Build from IDENTITY_ENV variables; non-None keyword arguments win over the environment."""
        environ = os.environ if environ is None else environ
        values = {}
        for field, var in IDENTITY_ENV.items():
            value = given.get(field)
            values[field] = value if value is not None else environ.get(var, "")
        if not values["service"] or not values["pod"]:
            raise ValueError(
                f"service and pod are required (--service/--pod or ${IDENTITY_ENV['service']}/${IDENTITY_ENV['pod']})"
            )
        return cls(**values)


class _Handler:
    """LabService for one connection: whoami() needs that connection's addresses."""

    __slots__ = ("_info", "_local", "_peer")

    def __init__(self, info: PodIdentity, local: tuple, peer: tuple) -> None:
        self._info, self._local, self._peer = info, local, peer

    def ping(self) -> None:
        return None

    def echo(self, payload: bytes | None) -> bytes:
        return payload or b""

    def work(self, milliseconds: int | None) -> int:
        ms = milliseconds or 0
        if ms > 0:
            time.sleep(ms / 1000)
        return ms

    def whoami(self) -> PodInfo:
        info = self._info
        return PodInfo(
            service_name=info.service,
            pod=info.pod,
            node=info.node,
            az=info.az,
            pod_ip=info.pod_ip or self._local[0],
            client_ip=self._peer[0],
            client_port=self._peer[1],
        )


def _serve_connection(conn: socket.socket, peer: tuple, info: PodIdentity, idle_timeout: float | None, forget) -> None:
    """Answer requests on one connection until the client closes it (pooled or one-shot alike)."""
    try:
        conn.settimeout(idle_timeout)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        proto = TCyBinaryProtocol(TCyBufferedTransport(TSocket(sock=conn)))
        processor = TProcessor(LabService, _Handler(info, conn.getsockname(), peer))
        while True:
            processor.process(proto, proto)
    except (TTransportException, OSError):
        pass  # client closed or reset, idle timeout, or server shutdown: all normal ends
    except Exception as exc:  # e.g. not Thrift at all (an HTTP probe): drop just this connection
        log.warning("dropping connection from %s:%s: %s: %s", peer[0], peer[1], type(exc).__name__, exc)
    finally:
        forget(conn)
        conn.close()


def serve(
    listener: socket.socket,
    info: PodIdentity,
    stop: threading.Event | None = None,
    *,
    backlog: int | None = None,
    accept_delay: float = 0.0,
    idle_timeout: float | None = None,
) -> None:
    """Serve LabService on `listener` until `stop` is set (forever if None).

    `listener` is a bound TCP socket the caller owns (and closes after serve returns). If
    `backlog` is given, listen(backlog) is called with exactly that value (it also resizes
    an already-listening socket); otherwise the socket must already be listening.
    `accept_delay` (seconds) is slept after each accepted connection, before the next
    accept(), to emulate a busy pod whose accept queue fills up (at most 1/accept_delay
    accepts per second). `idle_timeout` closes connections idle that long (None: never,
    like Thrift's TThreadedServer). Starts no thread before it is called, so it is safe to
    call in a process forked from a pre-imported zygote. On return, connections blocked
    waiting for a request are shut down; a thread inside work() finishes its sleep first.
    """
    stop = stop or threading.Event()
    if backlog is not None:
        listener.listen(backlog)
    elif not listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ValueError("listener is not listening: call listen(backlog) or pass backlog=")
    listener.settimeout(ACCEPT_POLL_S)

    conns: set[socket.socket] = set()
    lock = threading.Lock()

    def forget(conn: socket.socket) -> None:
        with lock:
            conns.discard(conn)

    try:
        while not stop.is_set():
            try:
                conn, peer = listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if listener.fileno() < 0:
                    break  # the caller closed the listener: treat as stop
                # ECONNABORTED, EMFILE...: keep serving, but do not spin if it persists.
                log.warning("accept failed: %s", exc)
                stop.wait(0.1)
                continue
            with lock:
                conns.add(conn)
            # Plain threads, not a pool: the lab wants TThreadedServer's behaviour.
            threading.Thread(
                target=_serve_connection,
                args=(conn, peer, info, idle_timeout, forget),
                name=f"conn-{peer[0]}:{peer[1]}",
                daemon=True,
            ).start()
            # A busy pod: the next accept() comes late, so the kernel's accept queue fills.
            if accept_delay > 0:
                stop.wait(accept_delay)
    finally:
        # Under the lock: a connection still in the set has not been closed by its thread.
        with lock:
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)  # wakes its thread's recv(); the thread closes it


def stop_on_signals(stop: threading.Event, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
    """Set `stop` on these signals (call from the main thread) so serve() returns and the process exits 0."""
    for sig in signals:
        signal.signal(sig, lambda _signum, _frame: stop.set())


def listen_tcp(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket with exactly `backlog` (capped by the kernel at net.core.somaxconn)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # SO_REUSEADDR so a restarted server can rebind over TIME_WAIT; no SO_REUSEPORT, so a
    # second server on the same port fails loudly instead of sharing the accept queue.
    return socket.create_server((host, port), family=family, backlog=backlog)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m labservices.server", description=__doc__)
    env = IDENTITY_ENV
    p.add_argument("--service", help=f"service name (default ${env['service']})")
    p.add_argument("--pod", help=f"pod name (default ${env['pod']})")
    p.add_argument("--node", help=f"node name (default ${env['node']})")
    p.add_argument("--az", help=f"availability zone (default ${env['az']})")
    p.add_argument("--pod-ip", help=f"pod IP to report (default ${env['pod_ip']}, else the local address)")
    p.add_argument("--host", default="0.0.0.0", help="address to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (default %(default)s)")
    p.add_argument("--backlog", type=int, default=DEFAULT_BACKLOG, help="listen backlog (default %(default)s)")
    p.add_argument(
        "--accept-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="sleep after each accepted connection, to emulate a busy pod (default 0)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="close connections idle this long (default: never)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        info = PodIdentity.from_env(service=args.service, pod=args.pod, node=args.node, az=args.az, pod_ip=args.pod_ip)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    stop_on_signals(stop)
    with listen_tcp(args.host, args.port, args.backlog) as listener:
        log.info(
            "serving %s/%s on %s:%d (backlog %d)",
            info.service,
            info.pod,
            args.host,
            listener.getsockname()[1],
            args.backlog,
        )
        serve(listener, info, stop, accept_delay=args.accept_delay, idle_timeout=args.idle_timeout)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
