"""LabService client helpers for the lab CLI and load generator: wrap a connected socket, call by name.

The lab connects sockets itself (from inside a network namespace), so nothing here connects.

Reusing one connection for many calls (a pooled client, as the incident's services did)::

    sock = socket.create_connection((host, port))      # or connected inside a netns
    client = client_on_socket(sock, timeout=2.0)
    for _ in range(1000):
        client.ping()                                   # same TCP connection every time
    info = client.whoami()                              # PodInfo of the pod behind it
    sock.close()                                        # the socket stays the caller's

One client per connection, one call at a time: calls on one client are not thread-safe
(use one client per thread). After a timeout or any other error the connection is out of
step with the server (a late reply would be read as the next call's reply, and Thrift's
client does not check sequence ids), so close the socket and connect a new one.
Per-request clients are the same with a fresh socket for each call.
"""

from __future__ import annotations

import socket
import time

from thriftpy2.protocol import TCyBinaryProtocol
from thriftpy2.thrift import TClient
from thriftpy2.transport import TCyBufferedTransport, TSocket

from labservices.idl import LabService

METHODS = ("ping", "echo", "work", "whoami")
_PATTERN = bytes(range(256))


def client_on_socket(sock: socket.socket, timeout: float | None) -> TClient:
    """A LabService client speaking binary protocol / buffered transport on an already connected socket.

    `timeout` (seconds, None = block) applies to each send and receive on the socket.
    """
    sock.settimeout(timeout)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        # Requests are small writes answered before the next one: never wait on Nagle.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return TClient(LabService, TCyBinaryProtocol(TCyBufferedTransport(TSocket(sock=sock))))


def echo_payload(arg: str) -> bytes:
    """The echo argument as bytes: all digits is a size ("1024" -> 1024 bytes), anything else the text."""
    if arg.isdigit():
        size = int(arg)
        return (_PATTERN * (size // len(_PATTERN) + 1))[:size]
    return arg.encode()


def pod_info_dict(info) -> dict:
    """A PodInfo as a plain dict, with the field spelled `service` (a keyword in Thrift IDL)."""
    return {
        "service": info.service_name,
        "pod": info.pod,
        "node": info.node,
        "az": info.az,
        "pod_ip": info.pod_ip,
        "client_ip": info.client_ip,
        "client_port": info.client_port,
    }


def call(client: TClient, method: str, args: list[str]) -> dict:
    """Call `method` with CLI string args; returns a JSON-able dict including the round-trip time.

    ping; echo SIZE_OR_TEXT; work MILLISECONDS; whoami. Raises ValueError for a bad method or
    arguments, and whatever the transport raises (TTransportException, OSError) on failure.
    """
    want = {"ping": 0, "echo": 1, "work": 1, "whoami": 0}
    if method not in want:
        raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    if len(args) != want[method]:
        raise ValueError(f"{method} takes {want[method]} argument(s), got {len(args)}")

    out: dict = {"method": method}
    start = time.perf_counter()
    if method == "ping":
        client.ping()
    elif method == "echo":
        sent = echo_payload(args[0])
        got = client.echo(sent)
        out.update(sent_bytes=len(sent), received_bytes=len(got), intact=got == sent)
    elif method == "work":
        try:
            ms = int(args[0])
        except ValueError:
            raise ValueError(f"work takes milliseconds, got {args[0]!r}") from None
        out.update(requested_ms=ms, result=client.work(ms))
    else:
        out.update(pod_info_dict(client.whoami()))
    out["rtt_ms"] = round((time.perf_counter() - start) * 1000, 3)
    return out
