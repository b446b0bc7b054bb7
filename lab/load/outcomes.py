"""How a client request ended, in the classes the seed's Thrift clients saw (timeouts, refused, resets)."""

from __future__ import annotations

import errno

OK = "ok"
CONNECT_TIMEOUT = "connect-timeout"
CONNECT_REFUSED = "connect-refused"
RESET = "reset"
READ_TIMEOUT = "read-timeout"
OTHER = "other"
OUTCOMES = (OK, CONNECT_TIMEOUT, CONNECT_REFUSED, RESET, READ_TIMEOUT, OTHER)


class PeerClosed(ConnectionError):
    """The peer closed the connection (FIN) before the whole reply arrived: Thrift's 'read 0 bytes'."""


class BadReply(Exception):
    """Bytes arrived that are not the reply the call expects (a Thrift exception or a protocol error)."""


def classify(exc: BaseException, connecting: bool) -> tuple[str, str]:
    """(class, detail) for an exception raised while connecting or during the RPC.

    A connection closed by the peer (FIN or RST) before the reply counts as `reset`: through the ELB a
    failed backend connect reaches the client that way. Anything else (no route, no free local port...)
    is `other`, with the errno name as detail so the cause is not lost.
    """
    if isinstance(exc, TimeoutError):
        return (CONNECT_TIMEOUT if connecting else READ_TIMEOUT), "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return CONNECT_REFUSED, "ECONNREFUSED"
    if isinstance(exc, PeerClosed):
        return RESET, "closed-by-peer"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return RESET, errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    if isinstance(exc, BadReply):
        return OTHER, "bad-reply"
    if isinstance(exc, OSError) and exc.errno:
        return OTHER, errno.errorcode.get(exc.errno, str(exc.errno))
    return OTHER, type(exc).__name__
