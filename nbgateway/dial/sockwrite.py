"""Direct socket write of the upstream request (issue #20).

Owns one decision: whether a small write on an upstream connection may go
straight to its socket instead of through Twisted's buffered write.  A
``transport.write`` on a Twisted TCP connection only queues the bytes and
starts watching the socket for writability: each request then costs an
``epoll_ctl`` (watch), a reactor turn, the ``send`` and another
``epoll_ctl`` (unwatch).  When Twisted has nothing queued for the connection,
:func:`write` calls ``socket.send`` at once instead; whatever the kernel does
not take (a partial write, ``EAGAIN``) goes to ``transport.write``, so the
order of the bytes is kept and Twisted's buffering, back-pressure and
producer logic take over from there.  A socket error other than ``EAGAIN``
/ ``EINTR`` is not handled here: the bytes are handed to ``transport.write``
and Twisted's own ``doWrite`` meets the same error and ends the connection
through the normal connection-lost path.

Only plain (non-TLS) Twisted TCP transports qualify; a TLS upstream (whose
transport is a TLS protocol), a netstack (tunnel) connection -- whose write
is in-process and costs no syscall -- or any other transport keeps its own
``write``.  Reading Twisted's transport state (``dataBuffer``, ``offset``,
``_tempDataBuffer``, ``TLS``, ``disconnecting``, ``disconnected``,
``_aborting``, ``_writeDisconnected``, ``_writeDisconnecting``) is confined to
:func:`idle_socket`; ``tests/dial/test_sockwrite.py`` fails if Twisted
changes it.  ``NBGW_UPSTREAM_DIRECT_WRITE=0`` turns the direct write off
(read at import).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import tcp

ENV = "NBGW_UPSTREAM_DIRECT_WRITE"
#: the switch (``NBGW_UPSTREAM_DIRECT_WRITE=0``: always ``transport.write``)
ENABLED = os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")
#: larger writes go through Twisted (it sends at most this much per call too)
MAX_DIRECT = 64 * 1024


class _DirectWriteStats:
    """Counters of :func:`write`'s outcomes (process-wide, for tests/bench)."""

    def __init__(self) -> None:
        self.direct = 0  # the whole write went to the socket
        self.partial = 0  # the kernel took part (or nothing): the rest went to Twisted
        self.fallback = 0  # not eligible, or a socket error: all of it went to Twisted


#: the counters: an instance, not class attributes, because one is counted
#: per upstream request and CPython 3.11 specialises neither reading nor
#: writing a class's attribute (two generic lookups, ~400 instructions, a
#: count); an instance's own are ~30 each
DirectWriteStats = _DirectWriteStats()


def idle_socket(transport: Any) -> socket.socket | None:
    """The socket of a plain Twisted TCP ``transport`` that is connected,
    not closing, aborted or half-closed and has nothing queued in Twisted's write buffers; else
    None.  The one place that reads Twisted's ``FileDescriptor`` state."""
    if not isinstance(transport, tcp.Connection):
        return None
    if transport.TLS or not transport.connected or transport.disconnecting:
        return None
    if (transport.disconnected or transport._aborting or transport._writeDisconnected
            or transport._writeDisconnecting):
        return None  # closing, aborted (Twisted drops what is written) or half-closed
    if transport._tempDataBuffer or len(transport.dataBuffer) > transport.offset:
        return None
    return transport.socket


def could_write_directly(transport: Any) -> bool:
    """Can :func:`write` ever write to ``transport``'s socket (a plain
    Twisted TCP connection)?  A False transport may skip :func:`write`."""
    return isinstance(transport, tcp.Connection)


def write_fallback(transport: Any, data: bytes) -> None:
    """:func:`write` for a transport :func:`could_write_directly` refuses."""
    DirectWriteStats.fallback += 1
    transport.write(data)


def write(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, sent at once when :func:`idle_socket`
    allows it (see the module docstring)."""
    sock = idle_socket(transport) if ENABLED and len(data) <= MAX_DIRECT else None
    if sock is None:
        DirectWriteStats.fallback += 1
        transport.write(data)
        return
    try:
        sent = sock.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        # Twisted's doWrite meets the same error: the normal connection-lost path
        DirectWriteStats.fallback += 1
        transport.write(data)
        return
    if sent >= len(data):
        DirectWriteStats.direct += 1
        return
    DirectWriteStats.partial += 1
    transport.write(data[sent:])
