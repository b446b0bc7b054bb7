"""A TCP port that accepts and closes every connection: a health endpoint that says nothing about services.

Run inside a node's namespace by the healthcheck-misroute fault (variant wrong-port), as kube-proxy's
healthz port or an sshd answers an ELB's TCP check whatever the node's services do.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -S responder.py")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fault", required=True, help="the fault that started it (finds it again on revert)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with socket.create_server(("0.0.0.0", args.port), backlog=128, reuse_port=False) as listener:
        print("ready", flush=True)
        while True:
            conn, _ = listener.accept()
            conn.close()


if __name__ == "__main__":
    sys.exit(main())
