"""The bytes of one LabService call and of its expected reply, encoded once with thriftpy2 (binary protocol).

The load generator sends the same request many times and checks each reply byte for byte against what
the server must answer (seqid 0, unframed binary protocol as TBufferedTransport sends it), so it needs no
per-call decoding and still notices a wrong or exceptional reply.
"""

from __future__ import annotations

from dataclasses import dataclass

from labservices.client import echo_payload
from labservices.idl import LabService
from thriftpy2.protocol import TBinaryProtocol
from thriftpy2.thrift import TMessageType
from thriftpy2.transport import TMemoryBuffer

METHODS = ("ping", "echo", "work")


@dataclass(frozen=True)
class Call:
    method: str
    request: bytes
    reply: bytes


def _message(name: str, mtype: int, struct) -> bytes:
    buf = TMemoryBuffer()
    proto = TBinaryProtocol(buf)
    proto.write_message_begin(name, mtype, 0)
    proto.write_struct(struct)
    proto.write_message_end()
    return buf.getvalue()


def build_call(method: str, payload: int = 0, work_ms: int = 0) -> Call:
    """ping; echo with `payload` bytes; work for `work_ms` milliseconds."""
    if method == "ping":
        args, result = LabService.ping_args(), LabService.ping_result()
    elif method == "echo":
        data = echo_payload(str(payload))
        args, result = LabService.echo_args(payload=data), LabService.echo_result(success=data)
    elif method == "work":
        args, result = LabService.work_args(milliseconds=work_ms), LabService.work_result(success=work_ms)
    else:
        raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    return Call(method, _message(method, TMessageType.CALL, args), _message(method, TMessageType.REPLY, result))
