"""Access log: one ``SendAccessLog`` per request, sent asynchronously.

Requests never wait for management: :meth:`AccessLogger.log` only appends to a
bounded queue (full -> the entry is dropped and counted).  A pump keeps at most
``max_inflight`` sends outstanding, each bounded by ``send_timeout``; failures
are counted and dropped (no retries: a log entry is not worth a retry storm
against a struggling management).  :meth:`AccessLogger.stop` flushes what it
can within a bound.  Field rules follow upstream NetBird's access log.
"""

from __future__ import annotations

import base64
import os
from collections import deque
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.routes.hosts import host_without_port

log = Logger()

INTERNAL_PREFIX = "/__netbird__/"


def new_log_id() -> str:
    """A 20-character, URL-safe, random request id (xid-sized)."""
    return base64.b32hexencode(os.urandom(15)).decode("ascii").lower()[:20]


@dataclass
class AccessLogStats:
    queued: int = 0
    sent: int = 0
    failed: int = 0
    dropped: int = 0


def build_entry(
    *,
    now: float,
    log_id: str,
    account_id: str,
    service_id: str,
    host: str,
    path: str,
    method: str,
    response_code: int,
    duration_ms: int,
    source_ip: str,
    auth_mechanism: str = "",
    user_id: str = "",
    bytes_upload: int = 0,
    bytes_download: int = 0,
    protocol: str = "http",
    metadata: dict[str, str] | None = None,
) -> pb.AccessLog:
    ts = Timestamp()
    ts.FromNanoseconds(int(now * 1e9))
    code = response_code or 200
    return pb.AccessLog(
        timestamp=ts,
        log_id=log_id,
        account_id=account_id,
        service_id=service_id,
        host=host_without_port(host),
        path=path,
        duration_ms=duration_ms,
        method=method,
        response_code=code,
        source_ip=source_ip,
        auth_mechanism=auth_mechanism,
        user_id=user_id if auth_mechanism == "oidc" else "",
        auth_success=code not in (401, 403) if protocol == "http" else False,
        bytes_upload=bytes_upload,
        bytes_download=bytes_download,
        protocol=protocol,
        metadata=metadata or {},
    )


def should_log(path: str) -> bool:
    return not path.startswith(INTERNAL_PREFIX)


class AccessLogger:
    def __init__(
        self,
        client,
        clock: IReactorTime,
        *,
        max_queue: int = 4096,
        max_inflight: int = 32,
        send_timeout: float = 10.0,
    ) -> None:
        self.client = client
        self.clock = clock
        self.max_queue = max_queue
        self.max_inflight = max_inflight
        self.send_timeout = send_timeout
        self.stats = AccessLogStats()
        self._queue: deque[pb.AccessLog] = deque()
        self._inflight = 0
        self._idle_waiters: list[Deferred] = []
        self._stopped = False

    @property
    def pending(self) -> int:
        return len(self._queue) + self._inflight

    def log(self, entry: pb.AccessLog) -> None:
        """Enqueue one entry; never blocks, never raises."""
        if self._stopped or len(self._queue) >= self.max_queue:
            self.stats.dropped += 1
            return
        self._queue.append(entry)
        self.stats.queued += 1
        self._pump()

    def _pump(self) -> None:
        while self._queue and self._inflight < self.max_inflight:
            entry = self._queue.popleft()
            self._inflight += 1
            try:
                d = self.client.send_access_log(entry)
            except Exception as exc:
                d = Deferred()
                d.errback(exc)
            d.addTimeout(self.send_timeout, self.clock)
            d.addCallbacks(self._sent, self._failed)
        if not self._queue and self._inflight == 0:
            waiters, self._idle_waiters = self._idle_waiters, []
            for w in waiters:
                w.callback(None)

    def _sent(self, _result) -> None:
        self._inflight -= 1
        self.stats.sent += 1
        self._pump()

    def _failed(self, failure) -> None:
        self._inflight -= 1
        self.stats.failed += 1
        log.debug("SendAccessLog failed: {err}", err=failure.getErrorMessage())
        self._pump()

    def stop(self, timeout: float = 5.0) -> Deferred:
        """Stop accepting entries; fire when everything queued was attempted or
        after ``timeout`` seconds (what is left is counted as dropped)."""
        self._stopped = True
        if self.pending == 0:
            return succeed(None)
        d: Deferred = Deferred()
        self._idle_waiters.append(d)

        def give_up() -> None:
            if not d.called:
                self.stats.dropped += len(self._queue)
                self._queue.clear()
                self._idle_waiters.remove(d)
                d.callback(None)

        call = self.clock.callLater(timeout, give_up)
        d.addBoth(lambda r: (call.active() and call.cancel(), r)[1])
        return d
