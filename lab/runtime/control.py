"""Talk to a lab's supervisor over its control socket (one JSON request, one JSON reply)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from lab.errors import LabStateError


def send_message(s: socket.socket, message: dict[str, Any]) -> None:
    """One JSON object on one line: the framing of both ends of the control socket."""
    s.sendall(json.dumps(message).encode() + b"\n")


def receive_message(s: socket.socket) -> dict[str, Any]:
    """The JSON object of one line (an empty object when the peer closed without sending one)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return json.loads(data or b"{}")


def request(control_socket: Path, req: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(control_socket))
        send_message(s, req)
        reply = receive_message(s)
    except (FileNotFoundError, ConnectionRefusedError):
        raise LabStateError(f"the lab's supervisor is not running (no answer on {control_socket})") from None
    except TimeoutError:
        raise LabStateError(f"the lab's supervisor did not answer within {timeout:g}s") from None
    finally:
        s.close()
    if not reply.get("ok"):
        raise LabStateError(f"supervisor: {reply.get('error', 'no reply')}")
    return reply


def alive(control_socket: Path) -> bool:
    try:
        request(control_socket, {"cmd": "status"}, timeout=2.0)
        return True
    except LabStateError:
        return False
