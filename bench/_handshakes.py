"""A WireGuard handshake initiator for benchmarks, built from the project's own core.

:class:`Initiator` is sans-IO: it is fed ``now`` and received datagrams and
hands back datagrams to send.  It speaks Noise_IKpsk2 initiations
(:mod:`nbgateway.wireguard.noise`) with MAC1/MAC2 (:class:`~nbgateway.wireguard.cookie.
CookieGenerator`), and follows the whitepaper's initiator rules: a cookie reply is
stored, never answered at once; the initiation is retried after REKEY_TIMEOUT plus
jitter (a fresh ephemeral and timestamp each time, MAC2 while the cookie is younger
than COOKIE_REFRESH_TIME), and given up after REKEY_ATTEMPT_TIME.
:meth:`Initiator.prepare` does an initiation's X25519 work ahead of time (the
bench machine's cores are the gateway's too: 1,000 initiations are ~1 s of
CPU here, which would otherwise land inside the measured burst); the MACs
(MAC2 from the cookie received meanwhile) are added when it is sent.

:func:`burst` drives many initiators over one UDP socket, or one socket each
(distinct source ports, as distinct peers have distinct endpoints), blocking
and epoll-based, no reactor: all initiations at once, then responses, cookie
replies and retries until every handshake completed or the deadline passed.
"""

from __future__ import annotations

import os
import random
import selectors
import socket
import struct
import time
from dataclasses import dataclass, field

from nbgateway.wireguard import constants as C
from nbgateway.wireguard import noise
from nbgateway.wireguard._crypto import dh, tai64n
from nbgateway.wireguard.cookie import CookieGenerator
from nbgateway.wireguard.messages import CookieReply, Response

MSG_RESPONSE, MSG_COOKIE = 2, 3


@dataclass(slots=True)
class Initiator:
    """One peer's initiator side towards one responder (sans-IO)."""

    private: bytes
    remote_public: bytes
    index: int
    preshared_key: bytes = bytes(32)
    rng: random.Random = field(default_factory=random.Random)
    identity: noise.StaticIdentity = field(init=False)
    cookies: CookieGenerator = field(init=False)
    state: noise.InitiatorState | None = field(default=None, init=False)
    keys: noise.SessionKeys | None = field(default=None, init=False)
    first_sent: float | None = field(default=None, init=False)
    next_retry: float = field(default=float("inf"), init=False)
    completed_at: float | None = field(default=None, init=False)
    attempts: int = field(default=0, init=False)
    cookie_replies: int = field(default=0, init=False)
    _last_ts: bytes = field(default=b"", init=False)
    _static_static: bytes = field(default=b"", init=False)
    _prepared: list = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.identity = noise.StaticIdentity(self.private)
        self.cookies = CookieGenerator(self.remote_public)
        self._static_static = dh(self.private, self.remote_public)

    def _create(self, walltime: float | None) -> tuple[noise.InitiatorState, bytes]:
        hash0, _, _ = noise.derive_public(self.remote_public)
        state, msg = noise.create_initiation(
            self.identity, self.remote_public, hash0, self._static_static, self.preshared_key,
            self.index, self._timestamp(time.time() if walltime is None else walltime),
            os.urandom(32))
        return state, msg.pack_without_macs()

    def prepare(self, n: int = 1, walltime: float | None = None) -> None:
        """Do the next ``n`` initiations' key work now (fresh ephemerals, increasing
        timestamps); :meth:`initiation` uses them in order, then computes afresh."""
        for _ in range(n):
            self._prepared.append(self._create(walltime))

    @property
    def done(self) -> bool:
        return self.completed_at is not None

    @property
    def gave_up(self) -> bool:
        return (not self.done and self.first_sent is not None
                and self.next_retry == float("inf"))

    def _timestamp(self, walltime: float) -> bytes:
        ts = tai64n(walltime)
        if ts <= self._last_ts:  # strictly increasing, or the responder drops it as a replay
            secs, nanos = struct.unpack(">QI", self._last_ts)
            ts = struct.pack(">QI", secs + (nanos + 1) // 1_000_000_000,
                             (nanos + 1) % 1_000_000_000)
        self._last_ts = ts
        return ts

    def initiation(self, now: float, walltime: float | None = None) -> bytes:
        """A fresh initiation (MAC2 when a cookie is fresh); arms the retry timer."""
        if self.first_sent is None:
            self.first_sent = now
        self.attempts += 1
        self.state, body = self._prepared.pop(0) if self._prepared else self._create(walltime)
        self.next_retry = now + C.REKEY_TIMEOUT + self.rng.uniform(0, C.REKEY_TIMEOUT_JITTER_MAX)
        if self.next_retry - self.first_sent > C.REKEY_ATTEMPT_TIME:
            self.next_retry = float("inf")  # this one is the last attempt
        return self.cookies.add_macs(body, now)

    def due(self, now: float) -> bool:
        return not self.done and now >= self.next_retry

    def receive(self, data: bytes, now: float) -> str:
        """Consume a response or cookie reply addressed to us: ``"done"``,
        ``"cookie"`` or ``"ignored"`` (bad, stale or not ours)."""
        if self.done or not data:
            return "ignored"
        if data[0] == MSG_COOKIE and len(data) == 64:
            reply = CookieReply.parse(data)
            if reply.receiver != self.index or not self.cookies.consume_reply(reply, now):
                return "ignored"
            self.cookie_replies += 1
            return "cookie"  # whitepaper: wait for the retry timer, do not resend now
        if data[0] == MSG_RESPONSE and len(data) == 92 and self.state is not None:
            msg = Response.parse(data)
            if msg.receiver != self.index:
                return "ignored"
            try:
                self.keys = noise.consume_response(self.identity, self.state, msg)
            except noise.HandshakeError:
                return "ignored"
            self.completed_at = now
            self.next_retry = float("inf")
            return "done"
        return "ignored"


def receiver_index(data: bytes) -> int | None:
    """The receiver index of a response or cookie reply (little-endian, offset 4 or 8)."""
    if len(data) == 92 and data[0] == MSG_RESPONSE:
        return struct.unpack_from("<I", data, 8)[0]
    if len(data) == 64 and data[0] == MSG_COOKIE:
        return struct.unpack_from("<I", data, 4)[0]
    return None


@dataclass(slots=True)
class BurstResult:
    completed: int
    total: int
    seconds_to_all: float | None  # None when not all completed
    last_completion: float
    cookie_replies: int
    initiations_sent: int
    max_attempts: int


def burst(sock: socket.socket | list[socket.socket],
          peers: list[tuple[Initiator, tuple[str, int]]],
          timeout: float = C.REKEY_ATTEMPT_TIME + 5) -> BurstResult:
    """Send every initiation at once, then serve responses, cookies and retries.
    ``sock`` is one socket for all, or a list with one socket per peer."""
    socks = sock if isinstance(sock, list) else [sock] * len(peers)
    if len(socks) != len(peers):
        raise ValueError("one socket per peer, or a single socket")
    by_index = {ini.index: ini for ini, _ in peers}
    sel = selectors.DefaultSelector()
    for s in set(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    t0 = time.monotonic()
    sent = 0
    for (ini, addr), s in zip(peers, socks, strict=True):
        s.sendto(ini.initiation(time.monotonic()), addr)
        sent += 1
    remaining = len(peers)
    deadline = t0 + timeout
    while remaining and time.monotonic() < deadline:
        now = time.monotonic()
        wake = min((ini.next_retry for ini, _ in peers if not ini.done), default=deadline)
        for key, _ in sel.select(max(0.0, min(wake, deadline) - now)):
            while True:
                try:
                    data = key.fileobj.recv(2048)
                except BlockingIOError:
                    break
                idx = receiver_index(data)
                ini = by_index.get(idx) if idx is not None else None
                if ini is not None and ini.receive(data, time.monotonic()) == "done":
                    remaining -= 1
        now = time.monotonic()
        for (ini, addr), s in zip(peers, socks, strict=True):
            if ini.due(now):
                s.sendto(ini.initiation(now), addr)
                sent += 1
        if all(ini.done or ini.gave_up for ini, _ in peers) and remaining:
            break
    sel.close()
    done = [ini for ini, _ in peers if ini.done]
    last = max((ini.completed_at for ini in done), default=t0) - t0
    return BurstResult(
        completed=len(done), total=len(peers),
        seconds_to_all=last if len(done) == len(peers) else None, last_completion=last,
        cookie_replies=sum(ini.cookie_replies for ini, _ in peers), initiations_sent=sent,
        max_attempts=max((ini.attempts for ini, _ in peers), default=0))
