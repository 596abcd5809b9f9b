"""The WireGuard UDP socket: a DatagramProtocol feeding a WireGuardDevice (or a
DeviceMux) and implementing :class:`~nbgateway.interfaces.IDatagramLink` for its
output, and :class:`BatchingPort`, a posix UDP port that hands the protocol
everything one readiness event can read (up to :data:`READ_BATCH` datagrams) in
one ``datagramsReceived`` call, so the device and the netstack above it work
per batch rather than per datagram.

Output can be held to the end of the reactor turn (``batch_sends``, on for the
gateway's port unless ``NBGW_WG_TX_BATCH=0``): what the devices send during one
turn (the responses of every upstream socket that became readable, the
replies to one read's batch) is queued per destination address and leaves
in one flush from a ``callLater(0)``, which Twisted runs before it polls
again; runs of equal-size datagrams to one address then go out in one
``sendmsg`` with UDP GSO instead of one ``sendto`` each.  Per-address order
is kept; at most :data:`HOLD_MAX` datagrams are held (more flush at once).

The first send of a turn is not held (``send_first``, on unless
``NBGW_WG_TX_FIRST=0``): it leaves at once and only what the same turn sends
after it is held.  A lone response (one connection, request after request)
so leaves as soon as it is encrypted, before the rest of the turn (the
access-log entry, the pooled connection's release, timers) runs, instead of
after it; a busy turn still sends everything after its first datagram in one
flush (one extra ``sendto`` per turn at most)."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import sys

from twisted.internet import error, udp
from twisted.internet.interfaces import IListeningPort, IReactorUDP
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from nbgateway.interfaces import IDatagramBatchLink

try:
    import fcntl
    import termios
except ImportError:  # not posix: no BatchingPort either
    fcntl = termios = None  # type: ignore[assignment]

log = Logger()


#: what a UDP send can raise: socket errors, and Twisted's own checks
#: (``MessageLengthError`` for EMSGSIZE, ``InvalidAddressError`` for an address
#: of the wrong family or not an IP literal)
SEND_ERRORS = (OSError, error.MessageLengthError, error.InvalidAddressError)


@implementer(IDatagramBatchLink)
class WireGuardProtocol(DatagramProtocol):
    """Hands every datagram to the device; sends the device's datagrams.

    Socket errors are counted in the fed object's ``events`` counter
    (``udp_send_error``, ``udp_refused``: a :class:`WireGuardDevice` and a
    :class:`~nbgateway.wireguard.mux.DeviceMux` both have one) and never raise
    into the device or the reactor."""

    def __init__(self, device, batch_sends: bool = False, send_first: bool = False) -> None:
        self.device = device
        #: hold datagrams until the end of the reactor turn (see the module doc)
        self.batch_sends = batch_sends
        #: with ``batch_sends``: the first send of a turn leaves at once, only
        #: the later ones of the same turn are held (module doc)
        self.send_first = send_first
        self._held: dict[tuple[str, int], list[bytes]] = {}
        self._held_count = 0
        self._flush_call = None
        self.held_flushes = 0  # end-of-turn flushes that sent something
        self.send_errors = 0
        # host -> usable as a sendto() address on this socket (family checked
        # once per host instead of Twisted's per-datagram isIPAddress tests)
        self._families: dict[str, bool] = {}
        #: UDP segmentation offload for runs of equal-size datagrams (Linux);
        #: switched off for good at the first send the kernel refuses
        self.gso = GSO_AVAILABLE
        self.gso_sends = 0  # sendmsg calls that carried several datagrams

    def startProtocol(self) -> None:
        self.device.link = self

    def doStop(self) -> None:
        # the held datagrams leave while the port's socket is still open
        # (the port closes it after this; ``transport`` is already gone in
        # stopProtocol)
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self.flush()
        super().doStop()

    def stopProtocol(self) -> None:
        if self.device.link is self:
            self.device.link = None

    def datagramReceived(self, datagram: bytes, addr) -> None:
        self.device.datagramReceived(datagram, (addr[0], addr[1]))

    def datagramsReceived(self, batch: list[tuple[bytes, tuple[str, int]]]) -> None:
        """From :class:`BatchingPort`: addresses are already (host, port)."""
        self.device.datagramsReceived(batch)

    def sendDatagram(self, data: bytes, addr: tuple[str, int]) -> None:
        """One datagram: :meth:`sendDatagrams` of ``[data]`` (held, or sent at
        once), without the list (the device's lone response)."""
        reactor = None
        if self.batch_sends:
            try:  # an attribute read, not a getattr() call per datagram
                reactor = self.transport.reactor
            except AttributeError:
                reactor = None
            if reactor is not None and (self._flush_call is not None or not self.send_first):
                held = self._held.get(addr)
                if held is None:
                    self._held[addr] = [data]
                else:
                    held.append(data)
                self._held_count += 1
                if self._held_count >= HOLD_MAX:
                    self.flush()
                elif self._flush_call is None:
                    self._flush_call = reactor.callLater(0, self._end_of_turn)
                return
        transport = self.transport
        try:  # the port's attributes read directly (two getattr() calls cost ~0.5k)
            sock, connected = transport.socket, transport._connectedAddr
        except AttributeError:  # no port, or one without them: as getattr(..., None)
            sock = getattr(transport, "socket", None)
            connected = getattr(transport, "_connectedAddr", None)
        if sock is not None and not connected and self._families.get(addr[0]):
            try:
                sock.sendto(data, addr)
            except OSError as exc:
                self._send_failed(exc, sock.sendto, data, addr)
        else:
            self._send_now([data], addr)
        if reactor is not None and self._flush_call is None:
            self._flush_call = reactor.callLater(0, self._end_of_turn)

    def sendDatagrams(self, datagrams: list[bytes], addr: tuple[str, int]) -> None:
        reactor = None
        if self.batch_sends:
            try:  # an attribute read, not a getattr() call per datagram
                reactor = self.transport.reactor
            except AttributeError:
                reactor = None
            if reactor is not None and (self._flush_call is not None or not self.send_first):
                held = self._held.get(addr)
                if held is None:
                    self._held[addr] = list(datagrams)
                else:
                    held.extend(datagrams)
                self._held_count += len(datagrams)
                if self._held_count >= HOLD_MAX:
                    self.flush()
                elif self._flush_call is None:
                    self._flush_call = reactor.callLater(0, self._end_of_turn)
                return
        # out now: output is not held, or this is the turn's first send (then
        # the datagram leaves before the end-of-turn call is armed, which is
        # not on its way; the call marks the turn, so what follows is held)
        transport = self.transport
        try:  # (as in sendDatagram)
            sock, connected = transport.socket, transport._connectedAddr
        except AttributeError:
            sock = getattr(transport, "socket", None)
            connected = getattr(transport, "_connectedAddr", None)
        if (len(datagrams) == 1 and sock is not None and not connected
                and self._families.get(addr[0])):
            # one datagram to a checked address (a lone response): _send_now, inlined
            data = datagrams[0]
            try:
                sock.sendto(data, addr)
            except OSError as exc:
                self._send_failed(exc, sock.sendto, data, addr)
        else:
            self._send_now(datagrams, addr)
        if reactor is not None and self._flush_call is None:
            self._flush_call = reactor.callLater(0, self._end_of_turn)

    def _end_of_turn(self) -> None:
        self._flush_call = None
        self.flush()

    def flush(self) -> None:
        """Send everything held (per address, in order)."""
        if not self._held:
            return
        held, self._held = self._held, {}
        self._held_count = 0
        self.held_flushes += 1
        for addr, datagrams in held.items():
            self._send_now(datagrams, addr)

    def _send_now(self, datagrams: list[bytes], addr: tuple[str, int]) -> None:
        transport = self.transport
        if transport is None:
            self.send_errors += len(datagrams)
            return
        sock = getattr(transport, "socket", None)
        if (sock is not None and not getattr(transport, "_connectedAddr", None)
                and (self._families.get(addr[0]) or self._sendable(addr[0], transport))):
            if len(datagrams) == 1:
                # one datagram (a lone response): _send_raw's loop, inlined
                data = datagrams[0]
                try:
                    sock.sendto(data, addr)
                except OSError as exc:
                    self._send_failed(exc, sock.sendto, data, addr)
            elif self.gso:
                self._send_gso(sock, datagrams, addr)
            else:
                self._send_raw(sock.sendto, datagrams, addr)
            return
        write = transport.write
        for data in datagrams:
            try:
                write(data, addr)
            except SEND_ERRORS as exc:  # EMSGSIZE, unreachable, bad address family ...
                self.send_errors += 1
                self.device.events["udp_send_error"] += 1
                log.debug("UDP send to {addr} failed: {err}", addr=addr, err=exc)

    def _sendable(self, host: str, transport) -> bool:
        """Is ``host`` an IP literal of the socket's family?  (What Twisted's
        ``Port.write`` checks per datagram; anything else takes that path and
        gets its ``InvalidAddressError``.)"""
        ok = self._families.get(host)
        if ok is None:
            try:
                version = ipaddress.ip_address(host).version
            except ValueError:
                version = 0
            fam = getattr(transport, "addressFamily", socket.AF_INET)
            ok = version == (6 if fam == socket.AF_INET6 else 4)
            if len(self._families) >= 1024:
                self._families.clear()
            self._families[host] = ok
        return ok

    def _send_gso(self, sock: socket.socket, datagrams: list[bytes],
                  addr: tuple[str, int]) -> None:
        """Send runs of equal-size datagrams (the last of a run may be shorter)
        with one ``sendmsg`` each, the kernel splitting them (UDP_SEGMENT, as
        wireguard-go does); what cannot be grouped goes one by one.  A kernel
        that refuses the option turns GSO off for this socket."""
        i, n = 0, len(datagrams)
        sendmsg, sendto = sock.sendmsg, sock.sendto
        while i < n:
            size = len(datagrams[i])
            j, total = i + 1, size
            limit = min(n, i + GSO_MAX_SEGMENTS)
            while j < limit and len(datagrams[j]) == size and total + size <= GSO_MAX_BYTES:
                total += size
                j += 1
            if j < limit and len(datagrams[j]) < size and total + len(datagrams[j]) <= \
                    GSO_MAX_BYTES:
                j += 1  # a shorter last segment closes the run
            if j - i < 2 or not self.gso:
                self._send_raw(sendto, datagrams[i:j], addr)
                i = j
                continue
            try:
                sendmsg([b"".join(datagrams[i:j])],
                        [(socket.IPPROTO_UDP, UDP_SEGMENT, _GSO_SIZE(size))], 0, addr)
                self.gso_sends += 1
            except OSError as exc:
                if exc.errno in _GSO_UNSUPPORTED:
                    self.gso = False
                    log.info("UDP segmentation offload refused ({err}); sending datagrams "
                             "one by one", err=exc)
                    self._send_raw(sendto, datagrams[i:j], addr)
                elif exc.errno in (errno.EINTR, errno.EMSGSIZE):
                    self._send_raw(sendto, datagrams[i:j], addr)
                else:  # a full buffer, unreachable...: the whole run is lost, counted
                    self.send_errors += j - i
                    self.device.events["udp_send_error"] += j - i
                    log.debug("UDP send to {addr} failed: {err}", addr=addr, err=exc)
            i = j

    def _send_raw(self, sendto, datagrams: list[bytes], addr: tuple[str, int]) -> None:
        """``sendto`` each datagram with Twisted's error semantics: EINTR is
        retried, ECONNREFUSED (an earlier ICMP error on an unconnected socket)
        ignored, anything else (EMSGSIZE, a full buffer, ...) counted."""
        for data in datagrams:
            try:
                sendto(data, addr)
            except OSError as exc:
                self._send_failed(exc, sendto, data, addr)

    def _send_failed(self, exc: OSError, sendto, data: bytes, addr: tuple[str, int]) -> None:
        """A ``sendto`` of ``data`` raised ``exc``: retry once on EINTR, ignore
        ECONNREFUSED, count anything else."""
        no = exc.errno
        if no == errno.EINTR:
            try:
                sendto(data, addr)
                return
            except OSError as again:
                exc, no = again, again.errno
        if no == errno.ECONNREFUSED:
            return
        self.send_errors += 1
        self.device.events["udp_send_error"] += 1
        log.debug("UDP send to {addr} failed: {err}", addr=addr, err=exc)

    def connectionRefused(self) -> None:  # ICMP port unreachable on a connected socket
        self.device.events["udp_refused"] += 1


#: datagrams held for the end-of-turn flush at most (more: flushed at once)
HOLD_MAX = 256

#: UDP generic segmentation offload (Linux >= 4.18): ``UDP_SEGMENT`` socket
#: option level SOL_UDP, at most 64 segments and 64 KiB per send
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
GSO_AVAILABLE = sys.platform.startswith("linux")
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000
_GSO_SIZE = struct.Struct("=H").pack
_GSO_UNSUPPORTED = frozenset({errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP})

#: socket buffer size asked for (bursts of handshakes or a fast sender must
#: not overflow the 208 KiB Linux default; wireguard-go asks for 7 MiB)
SOCKET_BUFFER = 4 * 1024 * 1024
_FORCE = {socket.SO_RCVBUF: getattr(socket, "SO_RCVBUFFORCE", None),
          socket.SO_SNDBUF: getattr(socket, "SO_SNDBUFFORCE", None)}


def enlarge_buffers(sock: socket.socket, size: int = SOCKET_BUFFER) -> tuple[int, int]:
    """Grow the receive and send buffers of ``sock`` towards ``size`` (beyond
    net.core.[rw]mem_max when privileged); returns the sizes obtained."""
    for opt, force in _FORCE.items():
        for name in (force, opt):
            if name is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, name, size)
                break
            except OSError:
                continue
    return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))


#: datagrams read per readiness event at most (level-triggered: the reactor
#: comes back at once if more are queued)
READ_BATCH = 64
_READ_AGAIN = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.EMSGSIZE,
                         errno.ENOBUFS, errno.ENOMEM, errno.ENETDOWN, errno.ENETUNREACH})
_READ_REFUSED = frozenset({errno.ECONNREFUSED})


class BatchingPort(udp.Port):
    """A ``twisted.internet.udp.Port`` whose ``doRead`` collects up to
    :data:`READ_BATCH` datagrams and delivers them with one
    ``protocol.datagramsReceived(batch)`` call (``(data, (host, port))`` pairs
    in arrival order).  Errors: would-block and transient conditions
    (``_READ_AGAIN``: also EMSGSIZE, ENOBUFS, ENOMEM, ENETDOWN, ENETUNREACH,
    which the stock port would raise and so close the socket) end the read;
    ICMP refusal goes to ``connectionRefused``; anything else is raised after
    the datagrams already read were delivered.

    After the first datagram, one ``FIONREAD`` ioctl asks whether another is
    queued (on Linux: the next datagram's length, 0 for none); when none is,
    the read ends there instead of with a ``recvfrom`` that fails with
    EAGAIN (a syscall plus a Python exception: the common case of a
    keep-alive exchange, one datagram per readiness event).  When more are
    queued, the loop reads until EAGAIN or :data:`READ_BATCH` as before.  A
    queued zero-length datagram also reads as 0: it is left for the next
    readiness event (epoll is level-triggered), whose first ``recvfrom``
    takes it.  ``peek_queue = False`` turns the check off."""

    peek_queue = fcntl is not None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        #: FIONREAD's int, written in place: ``fcntl.ioctl`` parses its
        #: argument as a writable buffer first, and for an immutable one it
        #: formats the failure's message (about 4,400 instructions, 30 % of a
        #: read event with one datagram) before it tries a read-only buffer
        self._fionread = bytearray(4)

    def doRead(self) -> None:
        batch: list = []
        sock = self.socket
        recvfrom = sock.recvfrom
        size = self.maxPacketSize
        v6 = self.addressFamily == socket.AF_INET6
        failure: OSError | None = None
        try:
            while len(batch) < READ_BATCH:
                item = recvfrom(size)
                if v6:  # drop flow info and scope id, as the stock port does
                    item = (item[0], item[1][:2])
                batch.append(item)
                if len(batch) == 1 and self.peek_queue:
                    queued = self._fionread
                    try:  # (_queued, inlined: once per read)
                        fcntl.ioctl(sock.fileno(), _FIONREAD, queued)
                    except OSError:
                        queued = _SOME  # a failing ioctl: the loop goes on as before
                    if queued == _NONE:
                        break
        except OSError as exc:
            no = exc.args[0]
            if no in _READ_REFUSED:
                if self._connectedAddr:
                    self.protocol.connectionRefused()
            elif no not in _READ_AGAIN:
                failure = exc
        if batch:
            try:
                self.protocol.datagramsReceived(batch)
            except BaseException:
                log.failure("datagramsReceived failed")
        if failure is not None:
            raise failure


#: FIONREAD's int buffer: nothing queued; what a failing ioctl counts as
_NONE = b"\0\0\0\0"
_SOME = b"\xff\xff\xff\xff"
_FIONREAD = getattr(termios, "FIONREAD", 0x541B)


def listen(reactor: IReactorUDP, device, port: int, interface: str = "",
           batch_sends: bool | None = None, send_first: bool | None = None) -> IListeningPort:
    """Bind the device's UDP socket (with enlarged buffers).  ``interface`` ''
    binds all IPv4 addresses; '::' binds dual-stack.  On a posix reactor the
    socket is a :class:`BatchingPort`; elsewhere the reactor's own UDP port
    delivers datagram by datagram.  ``batch_sends`` (None: on unless the
    environment says ``NBGW_WG_TX_BATCH=0``) holds output to the end of the
    reactor turn (module doc); ``send_first`` (None: on unless
    ``NBGW_WG_TX_FIRST=0``) lets the first datagram of a turn leave at once."""
    if batch_sends is None:
        batch_sends = os.environ.get("NBGW_WG_TX_BATCH", "1") != "0"
    if send_first is None:
        send_first = os.environ.get("NBGW_WG_TX_FIRST", "1") != "0"
    protocol = WireGuardProtocol(device, batch_sends=batch_sends, send_first=send_first)
    if isinstance(reactor, PosixReactorBase):
        listening = BatchingPort(port, protocol, interface, reactor=reactor)
        listening.startListening()
    else:
        listening = reactor.listenUDP(port, protocol, interface=interface)
    sock = getattr(listening, "socket", None)
    if sock is not None:
        rcv, snd = enlarge_buffers(sock)
        log.debug("WireGuard UDP buffers: receive {rcv}, send {snd}", rcv=rcv, snd=snd)
    return listening
