"""Unit tests for the sample Thrift service (labservices): loopback only, no root needed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
from labservices.client import call, client_on_socket, echo_payload
from labservices.idl import LabService
from labservices.server import PodIdentity, serve
from thriftpy2.protocol import TCyBinaryProtocol
from thriftpy2.thrift import TMessageType
from thriftpy2.transport import TCyMemoryBuffer

INFO = PodIdentity(service="users", pod="users-0", node="node-a", az="az-a")


def conn_threads() -> int:
    return sum(t.name.startswith("conn-") for t in threading.enumerate())


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def listen_backlog(port: int) -> int:
    """The configured backlog of the listener on `port`: Send-Q of a LISTEN socket in `ss -ltn`."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True)
    lines = out.stdout.split("\n")
    listening = [ln.split() for ln in lines if ln.startswith("LISTEN")]
    assert len(listening) == 1, out.stdout
    return int(listening[0][2])


def start_server(**kwargs):
    """serve() in a thread on an ephemeral loopback port; returns (address, stop, thread, listener)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    kwargs.setdefault("backlog", 7)
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(listener, INFO, stop), kwargs=kwargs, daemon=True)
    thread.start()
    assert wait_for(lambda: listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    return listener.getsockname(), stop, thread, listener


@pytest.fixture
def server():
    addr, stop, thread, listener = start_server()
    yield addr
    stop.set()
    thread.join(timeout=5)
    listener.close()
    assert not thread.is_alive()
    assert wait_for(lambda: conn_threads() == 0), "connection threads leaked"


def connect(addr, timeout: float = 5.0):
    sock = socket.create_connection(addr, timeout=timeout)
    return sock, client_on_socket(sock, timeout)


def test_import_starts_no_thread():
    # The lab forks pods from a process that imported these modules: nothing may run yet.
    code = "import threading, labservices.server, labservices.client; print(threading.active_count())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_ping_work_whoami(server):
    sock, client = connect(server)
    with sock:
        assert client.ping() is None
        assert client.work(20) == 20
        assert client.work(0) == 0
        info = client.whoami()
        local_ip, local_port = sock.getsockname()
        assert (info.client_ip, info.client_port) == (local_ip, local_port)
        assert (info.service_name, info.pod, info.node, info.az) == ("users", "users-0", "node-a", "az-a")
        assert info.pod_ip == "127.0.0.1"  # no pod_ip given: the connection's local address


@pytest.mark.parametrize("size", [0, 1, 1 << 20])
def test_echo_is_byte_exact(server, size):
    payload = os.urandom(size)
    sock, client = connect(server)
    with sock:
        got = client.echo(payload)
    assert isinstance(got, bytes)
    assert got == payload


def test_call_parses_cli_args(server):
    sock, client = connect(server)
    with sock:
        assert call(client, "ping", [])["method"] == "ping"
        echo = call(client, "echo", ["1024"])
        assert (echo["sent_bytes"], echo["received_bytes"], echo["intact"]) == (1024, 1024, True)
        assert call(client, "echo", ["hello"])["sent_bytes"] == 5
        assert call(client, "work", ["5"])["result"] == 5
        who = call(client, "whoami", [])
        assert (who["service"], who["client_port"]) == ("users", sock.getsockname()[1])
        for method, args in [("nope", []), ("work", ["soon"]), ("echo", [])]:
            with pytest.raises(ValueError):
                call(client, method, args)
    assert echo_payload("3") == b"\x00\x01\x02"


def test_pooled_and_per_request_clients(server):
    sock, client = connect(server)
    with sock:
        for _ in range(200):
            client.ping()
    for _ in range(50):
        sock, client = connect(server)
        with sock:
            client.ping()
    assert wait_for(lambda: conn_threads() == 0), "a thread outlived its connection"


def test_backlog_is_exactly_what_was_passed():
    addr, stop, thread, listener = start_server(backlog=3)
    try:
        assert listen_backlog(addr[1]) == 3
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_serve_refuses_a_socket_that_is_not_listening():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError):
            serve(sock, INFO, threading.Event())


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def request_bytes(method: str, **kwargs) -> bytes:
    """One binary-protocol CALL message, as a client would send it."""
    buf = TCyMemoryBuffer()
    proto = TCyBinaryProtocol(buf)
    proto.write_message_begin(method, TMessageType.CALL, 1)
    getattr(LabService, f"{method}_args")(**kwargs).write(proto)
    proto.write_message_end()
    return buf.getvalue()


def test_client_reset_mid_call_does_not_hurt_the_server(server, caplog):
    # Reset while the server sleeps in work(): its reply then hits a dead connection.
    sock, _ = connect(server)
    sock.sendall(request_bytes("work", milliseconds=100))
    reset(sock)
    # Reset halfway through sending a 1 MiB echo request.
    big = request_bytes("echo", payload=os.urandom(1 << 20))
    sock, _ = connect(server)
    sock.sendall(big[: len(big) // 2])
    reset(sock)
    time.sleep(0.2)  # let work() finish and write into the reset connection
    assert not caplog.records, "a reset is a normal end of a connection, not worth a warning"
    # Not Thrift at all (an HTTP health check on the Thrift port): just that connection is dropped.
    sock, _ = connect(server)
    with sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(100) == b""
    assert wait_for(lambda: any("dropping connection" in r.getMessage() for r in caplog.records))
    sock, client = connect(server)
    with sock:
        assert client.ping() is None
        assert client.echo(b"still here") == b"still here"


def test_idle_timeout_closes_idle_connections():
    addr, stop, thread, listener = start_server(idle_timeout=0.2)
    try:
        sock, client = connect(addr)
        with sock:
            client.ping()
            assert sock.recv(1) == b""  # the server closed it after 0.2 s idle
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_accept_delay_holds_new_connections():
    addr, stop, thread, listener = start_server(accept_delay=0.3)
    try:
        for _ in range(2):
            start = time.monotonic()
            sock, client = connect(addr)
            with sock:
                client.ping()
        # The second connection waited a whole delay in the accept queue.
        assert time.monotonic() - start >= 0.25
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_identity_from_env():
    env = {"SERVICE_NAME": "orders", "POD_NAME": "orders-1", "NODE_NAME": "n1", "NODE_ZONE": "z1", "POD_IP": "10.0.0.5"}
    assert PodIdentity.from_env(env) == PodIdentity("orders", "orders-1", "n1", "z1", "10.0.0.5")
    assert PodIdentity.from_env(env, pod="orders-2", node=None).pod == "orders-2"
    with pytest.raises(ValueError):
        PodIdentity.from_env({})


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_standalone_serves_and_exits_0_on_sigterm():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "labservices.server",
            "--service",
            "users",
            "--pod",
            "users-0",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--backlog",
            "5",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NODE_NAME": "node-env"},
    )
    try:
        line = proc.stderr.readline()  # "... serving users/users-0 on 127.0.0.1:PORT (backlog 5)"
        assert "serving" in line, line
        port = int(line.split("127.0.0.1:")[1].split()[0])
        assert listen_backlog(port) == 5
        sock, client = connect(("127.0.0.1", port))
        with sock:
            assert client.whoami().node == "node-env"
            # An idle pooled connection must not hold the shutdown up.
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_idl_methods():
    assert set(LabService.thrift_services) == {"ping", "echo", "work", "whoami"}
