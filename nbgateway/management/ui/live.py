"""Server-sent events for the dashboard's live view (``/ui/live/events``).

Owns the fan-out of store changes to open event streams.  :class:`LiveHub` is
sans-IO (no reactor, the clock is injected): it bounds the number of streams
(in total, per session and per account), coalesces changes per stream (a stream carries
"something you show changed; re-fetch", never data, so memory per stream is a
flag and a timestamp), says when a heartbeat comment is due and when a stream
has lived long enough to be closed (the browser's EventSource reconnects, and
the reconnect re-checks the session).  :class:`LiveStreams` is the thin
Twisted adapter: it writes the frames to requests and drives the hub with one
repeating timer.  Store listeners run in store threads, so they hand changes to
the reactor with ``callFromThread``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from nbgateway.management.model import ChangeKind

log = Logger()

MAX_STREAMS = 64
MAX_PER_SESSION = 3
#: streams of one account's sessions together (a tenant signing in many times
#: must not take the live view from every other account)
MAX_PER_ACCOUNT = 16
HEARTBEAT = 15.0
#: a stream is closed after this long; EventSource reconnects (and re-authenticates)
LIFETIME = 300.0
#: at most one change event per stream this often (changes in between coalesce)
MIN_GAP = 0.5
#: the reconnect delay the browser is told, milliseconds
RETRY_MS = 3000
#: changes that alter what the live view shows
LIVE_KINDS = frozenset({ChangeKind.PROXY, ChangeKind.PROXY_TOKEN, ChangeKind.SERVICE_CREATED,
                        ChangeKind.SERVICE_UPDATED, ChangeKind.SERVICE_DELETED,
                        ChangeKind.SERVICE_STATUS,
                        ChangeKind.DOMAIN, ChangeKind.ACCOUNT})


@dataclass(eq=False)
class Stream:
    session: str
    account_id: str
    #: sees every account's changes (instance admin)
    everything: bool
    opened: float
    last_sent: float
    pending: bool = False
    out: list[bytes] = field(default_factory=list)


class LiveHub:
    """Bounded set of event streams fed by store changes."""

    def __init__(self, clock: Callable[[], float], *, max_streams: int = MAX_STREAMS,
                 max_per_session: int = MAX_PER_SESSION,
                 max_per_account: int = MAX_PER_ACCOUNT, heartbeat: float = HEARTBEAT,
                 lifetime: float = LIFETIME, min_gap: float = MIN_GAP) -> None:
        self._clock = clock
        self.streams: list[Stream] = []
        self.max_streams, self.max_per_session = max_streams, max_per_session
        self.max_per_account = max_per_account
        self.heartbeat, self.lifetime, self.min_gap = heartbeat, lifetime, min_gap
        self.refused = 0
        self.dropped_changes = 0

    def open(self, session: str, account_id: str, everything: bool = False) -> Stream | None:
        """A new stream, its first frame queued; None when a bound is reached."""
        if (len(self.streams) >= self.max_streams
                or sum(s.session == session for s in self.streams) >= self.max_per_session
                or sum(s.account_id == account_id for s in self.streams)
                >= self.max_per_account):
            self.refused += 1
            return None
        now = self._clock()
        stream = Stream(session, account_id, everything, now, now)
        stream.out.append(f"retry: {RETRY_MS}\n: connected\n\n".encode())
        self.streams.append(stream)
        return stream

    def close(self, stream: Stream) -> None:
        if stream in self.streams:
            self.streams.remove(stream)

    def changed(self, kind: str, account_id: str) -> None:
        """A committed store change; marks the streams that show it."""
        if kind not in LIVE_KINDS:
            return
        for s in self.streams:
            # account "" is management-wide (global proxies, their tokens)
            if s.everything or not account_id or s.account_id == account_id:
                s.pending = True

    def tick(self) -> list[Stream]:
        """Queue due change events and heartbeats; the streams to close now."""
        now = self._clock()
        expired = []
        for s in self.streams:
            if now - s.opened >= self.lifetime:
                expired.append(s)
                continue
            if s.pending and now - s.last_sent >= self.min_gap:
                s.pending = False
                s.out.append(b"event: change\ndata: live\n\n")
                s.last_sent = now
            elif now - s.last_sent >= self.heartbeat:
                s.out.append(b": heartbeat\n\n")
                s.last_sent = now
        for s in expired:
            self.close(s)
        return expired


class LiveStreams:
    """Twisted side: requests per stream, a timer that drives the hub."""

    def __init__(self, hub: LiveHub, reactor: Any, interval: float = 0.25) -> None:
        self.hub = hub
        self._reactor = reactor
        self._interval = interval
        self._requests: dict[Stream, Any] = {}
        self._timer: Any = None

    def store_listener(self, kind: Any, account_id: str, ids: Any) -> None:
        """For ``store.add_listener``; runs in a store thread.  A change no
        stream could show (no stream open, or a kind the live view ignores)
        costs no reactor wake-up: every REST write passes here."""
        if not self.hub.streams or kind not in LIVE_KINDS:
            return
        self._reactor.callFromThread(self.hub.changed, str(kind), account_id)

    def start(self, request: Any, session: str, account_id: str, everything: bool) -> bool:
        """Begin streaming on *request*; False when the hub refuses (bounded)."""
        stream = self.hub.open(session, account_id, everything)
        if stream is None:
            return False
        request.setHeader("Content-Type", "text/event-stream; charset=utf-8")
        request.setHeader("X-Accel-Buffering", "no")
        self._requests[stream] = request
        request.notifyFinish().addBoth(lambda _: self._gone(stream))
        self._flush(stream)
        if self._timer is None:
            self._timer = self._reactor.callLater(self._interval, self._tick)
        return True

    def _gone(self, stream: Stream) -> None:
        self.hub.close(stream)
        self._requests.pop(stream, None)

    def _flush(self, stream: Stream) -> None:
        request = self._requests.get(stream)
        if request is None:
            return
        frames, stream.out = stream.out, []
        for frame in frames:
            request.write(frame)

    def _tick(self) -> None:
        self._timer = None
        try:
            for stream in self.hub.tick():
                request = self._requests.pop(stream, None)
                if request is not None and not request.finished:
                    request.finish()
            for stream in list(self._requests):
                self._flush(stream)
        except Exception:
            log.failure("live view tick failed")
        if self._requests:
            self._timer = self._reactor.callLater(self._interval, self._tick)
