"""Access log entries: building them (field rules follow upstream NetBird's
access log) and handing them to the shipper.

Requests never wait for management: :meth:`AccessLogger.log` (a built entry)
and :meth:`AccessLogger.record` (an HTTP request's fields as one tuple, built
into an entry when its batch is formed) only append to a bounded queue
(full -> the entry is dropped and counted); entries are shipped in batches
with one call in flight, retried without duplicates and with a fallback
to one ``SendAccessLog`` per entry (:mod:`nbgateway.mgmt.logship`).
:meth:`AccessLogger.stop` flushes what it can within a bound.
"""

from __future__ import annotations

import os
from collections import deque
from itertools import islice
from time import time as _time
from typing import Any

from twisted.logger import Logger

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.mgmt.logship import LogShipper, ShipperStats
from nbgateway.routes.hosts import host_without_port

log = Logger()

INTERNAL_PREFIX = "/__netbird__/"


#: base32hex's digits, lower case
_ALPHABET = "0123456789abcdefghijklmnopqrstuv"
#: byte -> one base32hex digit (``0-9a-v``) of its low five bits
_B32HEX = bytes.maketrans(bytes(range(256)),
                          bytes(_ALPHABET.encode()[i & 31] for i in range(256)))


#: request ids made ahead for the current second (one ``os.urandom`` call
#: per :data:`_IDS_AHEAD` ids)
_IDS: list[str] = []
_IDS_AHEAD = 256
#: digits of a request id: the Unix second's, then random ones (xid's 20)
_STAMP_DIGITS = 7
_RANDOM_DIGITS = 13
#: the second the ids in :data:`_IDS` are of
_ids_second = -1


def _stamp(second: int) -> str:
    """``second`` as :data:`_STAMP_DIGITS` base32hex digits, most significant
    first (35 bits: until the year 3058), so that ids sort by their second."""
    return "".join(_ALPHABET[(second >> (5 * i)) & 31]
                   for i in range(_STAMP_DIGITS - 1, -1, -1))


def _refill(second: int) -> None:
    """:data:`_IDS_AHEAD` ids of ``second`` (those left of another second go)."""
    global _ids_second
    n = _RANDOM_DIGITS
    stamp = _stamp(second)
    digits = os.urandom(n * _IDS_AHEAD).translate(_B32HEX).decode("ascii")
    _IDS[:] = [stamp + digits[i:i + n] for i in range(0, n * _IDS_AHEAD, n)]
    _ids_second = second


def new_log_id(now: float | None = None) -> str:
    """A 20-character, URL-safe request id, time-ordered like upstream's xids:
    7 base32hex digits of the Unix second (``now``, the current time when not
    given), then 13 random digits (65 random bits; a collision needs two ids
    of the same second).

    Why time-ordered: management stores each entry under its id (the
    idempotency key of retried batches).  Random ids put every entry of a
    batch on its own page of the id index (on SQLite the page is read,
    dirtied and written to the WAL twice per entry); ids that grow with time
    land on the index's last pages, as upstream's proxy's xids do.

    The random digits are random bytes mapped to base32hex by their low five
    bits in one ``bytes.translate``; ids are made :data:`_IDS_AHEAD` at a time
    for the current second from one ``os.urandom`` read (the same CSPRNG; one
    system call per 256 requests instead of one each), so a request pays an
    ``int()``, a comparison and a ``pop()``."""
    second = int(_time() if now is None else now)
    if second != _ids_second or not _IDS:
        _refill(second)
    return _IDS.pop()


#: the counters behind ``nbgateway_access_log_entries_total``
AccessLogStats = ShipperStats


#: the authentication mechanisms whose entries name the user (or service token)
_NAMED = ("oidc", "token", "mtls")


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
    target: str = "",
) -> pb.AccessLog:
    # Fields are set one by one and defaults skipped: about a fifth of the
    # cost of the keyword constructor with a Timestamp built from nanoseconds
    # (this runs once per request).
    entry = pb.AccessLog()
    ts = entry.timestamp
    ns = int(now * 1e9)
    ts.seconds, ts.nanos = divmod(ns, 1_000_000_000)
    code = response_code or 200
    entry.log_id = log_id
    entry.account_id = account_id
    if service_id:
        entry.service_id = service_id
    entry.host = host_without_port(host)
    entry.path = path
    entry.duration_ms = duration_ms
    entry.method = method
    entry.response_code = code
    entry.source_ip = source_ip
    if auth_mechanism:
        entry.auth_mechanism = auth_mechanism
        # users (OIDC, mTLS client certificates) and service tokens ("token:<id>") are named
        if user_id and auth_mechanism in _NAMED:
            entry.user_id = user_id
    entry.auth_success = code not in (401, 403) if protocol == "http" else False
    if bytes_upload:
        entry.bytes_upload = bytes_upload
    if bytes_download:
        entry.bytes_download = bytes_download
    entry.protocol = protocol
    if metadata:
        entry.metadata.update(metadata)
    if target:
        # the upstream target used (scheme://host:port), nbgateway extension
        entry.nbgw_target = target
    return entry


#: the order of an HTTP request's fields in the tuple :meth:`AccessLogger.record` takes
HTTP_FIELDS = ("now", "log_id", "account_id", "service_id", "host", "path", "method",
               "response_code", "duration_ms", "source_ip", "auth_mechanism", "user_id",
               "bytes_upload", "bytes_download", "target")


#: (account, service, host, auth mechanism, target) -> the entry with those
#: fields set (and method GET, code 200) and the per-request ones unset:
#: copying it and setting the rest costs about a third of setting every field
#: (the same few services, hosts and targets repeat); bounded, cleared when
#: full, and only for short strings (hosts are client-chosen).  The client's
#: address, the user, and a method or code other than GET and 200 are set per
#: entry: with them in the key, a few hundred clients or users of one service,
#: or a few dozen services' methods times codes, filled the cache over and
#: over (each miss builds the whole entry)
_TEMPLATES: dict[tuple[Any, ...], pb.AccessLog] = {}
_TEMPLATES_MAX = 1024
_TEMPLATE_MAX_LEN = 256


def entry_from_fields(fields: tuple[Any, ...]) -> pb.AccessLog:
    """The ``AccessLog`` of one HTTP request's fields (:data:`HTTP_FIELDS`
    order): the same message as :func:`build_entry` of those fields (a test
    compares them), from a cached template of the fields that repeat."""
    entry = pb.AccessLog()
    fill_entry(entry, fields)
    return entry


def _new_template(key: tuple[Any, ...]) -> pb.AccessLog:
    """The template of ``key`` (account, service, host, auth mechanism,
    target), built and cached (see :data:`_TEMPLATES`)."""
    account_id, service_id, host, auth_mechanism, target = key
    template = build_entry(now=0.0, log_id="", account_id=account_id,
                           service_id=service_id, host=host, path="", method="GET",
                           response_code=200, duration_ms=0,
                           source_ip="", auth_mechanism=auth_mechanism,
                           target=target)
    if (type(host) is str and len(host) <= _TEMPLATE_MAX_LEN
            and type(target) is str and len(target) <= _TEMPLATE_MAX_LEN):
        if len(_TEMPLATES) >= _TEMPLATES_MAX:
            _TEMPLATES.clear()
        _TEMPLATES[key] = template
    return template


def fill_entry(entry: pb.AccessLog, fields: tuple[Any, ...]) -> None:
    """Set an empty ``entry`` (a new message, or one just added to a batch
    request's repeated field: no copy into the request afterwards) to the
    entry of one HTTP request's fields (:data:`HTTP_FIELDS` order)."""
    (now, log_id, account_id, service_id, host, path, method, response_code, duration_ms,
     source_ip, auth_mechanism, user_id, bytes_upload, bytes_download, target) = fields
    key = (account_id, service_id, host, auth_mechanism, target)
    template = _TEMPLATES.get(key) or _new_template(key)
    entry.CopyFrom(template)
    ts = entry.timestamp
    ts.seconds, ts.nanos = divmod(int(now * 1e9), 1_000_000_000)
    entry.log_id = log_id
    entry.path = path
    entry.source_ip = source_ip
    if method != "GET":  # the template's method
        entry.method = method
    code = response_code or 200
    if code != 200 or type(code) is not int:  # the template's code and auth_success
        entry.response_code = code
        entry.auth_success = code not in (401, 403)
    if user_id and auth_mechanism in _NAMED:  # as build_entry
        entry.user_id = user_id
    if duration_ms:
        entry.duration_ms = duration_ms
    if bytes_upload:
        entry.bytes_upload = bytes_upload
    if bytes_download:
        entry.bytes_download = bytes_download


def should_log(path: str) -> bool:
    return not path.startswith(INTERNAL_PREFIX)


#: seconds an access-log entry waits for others before its batch goes out.
#: Each batch RPC costs about 0.5 ms of grpc.aio work on the asyncio thread
#: with the GIL held, whatever its size (plus the reactor's share): at
#: ~3,000 requests/s, 0.05 s meant ~20 RPCs/s, i.e. a GIL hand-over that
#: stalls the reactor for about one request in 75 (a p99 item); 0.25 s
#: means ~4/s (docs/performance.md, issue 20).  The entries reach management
#: at most this much later; ``max_batch`` (1,000) still sends a full batch at once.
ACCESS_LOG_LINGER = 0.25

#: one account's entries take at most this fraction (1/n) of the queue: the
#: queue is shared by every account, and one account's flood (while a batch
#: is in flight or waiting for its retry) must not drop the others' entries
ACCOUNT_QUEUE_SHARE = 4


def _account_of(item: Any) -> str:
    """The account of a queued item (a :meth:`AccessLogger.record` tuple or
    a built entry); "" for anything else (it is dropped when built)."""
    account = (item[2] if len(item) > 2 else "") if type(item) is tuple else getattr(
        item, "account_id", "")
    return account if type(account) is str else ""


class AccessLogger(LogShipper):
    """The gateway's access log: :meth:`log` hands an entry to the batching
    shipper (:class:`nbgateway.mgmt.logship.LogShipper`); it never blocks and
    never raises, a full queue drops the entry and counts it.  Entries linger
    :data:`ACCESS_LOG_LINGER` unless ``linger`` is given."""

    def __init__(self, client: Any, clock: Any, **kw: Any) -> None:
        kw.setdefault("linger", ACCESS_LOG_LINGER)
        super().__init__(client, clock, **kw)
        #: queued entries per account (accounts with none are not kept)
        self._held: dict[str, int] = {}
        #: the most entries one account may have queued
        self.account_share = max(1, self.max_queue // ACCOUNT_QUEUE_SHARE)
        self._half = self._room // 2

    def log(self, entry: pb.AccessLog) -> None:
        """Enqueue one entry; never blocks, never raises."""
        self.submit(entry)

    def submit(self, entry: Any) -> None:
        """Queue one entry (a :meth:`record` tuple or a built entry) unless
        the queue is full or its account holds its share; never blocks,
        never raises."""
        account = entry[2] if type(entry) is tuple and len(entry) > 2 else _account_of(entry)
        held = self._held.get(account, 0)
        queue = self._queue
        n = len(queue)
        # an account past its share is refused only once the queue is half
        # full: a gateway with one busy account keeps the whole queue's slack
        if n < self._room and (held < self.account_share or n < self._half):
            self._held[account] = held + 1
            queue.append(entry)
            self.stats.queued += 1
            if len(queue) >= self._kick:
                self._kicked()
        else:
            self.stats.dropped += 1

    def _release(self, account: str) -> None:
        """One queued entry of ``account`` left the queue."""
        held = self._held.get(account, 0) - 1
        if held > 0:
            self._held[account] = held
        else:
            self._held.pop(account, None)

    #: ``record(fields)``: enqueue one HTTP request's fields
    #: (:data:`HTTP_FIELDS` order) as the tuple itself; never blocks, never
    #: raises.  The request path appends one tuple, and the ``AccessLog``
    #: message is built when its batch is formed, in place in the batch
    #: request (:meth:`take`, at most ``form_slice`` per reactor turn), so an
    #: entry dropped on a full queue costs nothing and a queued one holds a
    #: tuple, not a message.  It is :meth:`submit` itself (no second call
    #: per request).
    record = submit

    def prepare(self, item: Any) -> Any:
        """A queued item as a standalone entry (tuples from :meth:`record`);
        batches are built by :meth:`add_to_batch` instead."""
        return entry_from_fields(item) if type(item) is tuple else item

    #: the request whose ``logs`` field is the batch being formed or sent
    _request: pb.NbgwSendAccessLogBatchRequest | None = None

    def new_batch(self) -> Any:
        """The repeated ``logs`` field of a new ``NbgwSendAccessLogBatchRequest``:
        entries are built in place (no standalone message per entry and no
        copy of it into a list; the container keeps its request alive)."""
        self._request = req = pb.NbgwSendAccessLogBatchRequest()
        return req.logs

    def batch_call(self, batch: Any) -> Any:
        """The batch RPC: a client with ``send_access_log_batch_request`` gets
        the request the batch was built in (sent as it is: no copy of every
        entry into a new request); otherwise ``send_access_log_batch(batch)``."""
        send = getattr(self.client, "send_access_log_batch_request", None)
        req = self._request
        if send is not None and req is not None and batch is req.logs:
            return send(req)
        return self.client.send_access_log_batch(batch)

    def take(self, batch: Any, queue: deque[Any], n: int) -> int:
        """Build the first ``n`` queued items into the forming batch in one
        loop: a :meth:`record` tuple as :meth:`add_to_batch` builds it
        (:func:`fill_entry`, inline: no two calls per entry), anything else
        by :meth:`add_to_batch`.  An item that cannot be built leaves no
        element behind and is dropped and logged; returns how many were.
        A subclass with its own :meth:`add_to_batch` has it called for each
        item (:meth:`LogShipper.take`)."""
        if type(self).add_to_batch is not AccessLogger.add_to_batch:
            for item in islice(queue, n):
                self._release(_account_of(item))
            return super().take(batch, queue, n)
        add, popleft, get, other = batch.add, queue.popleft, _TEMPLATES.get, self.add_to_batch
        release = self._release
        bad = 0
        for _ in range(n):
            fields = popleft()
            release(_account_of(fields))
            if type(fields) is not tuple:
                try:
                    other(batch, fields)
                except Exception:
                    bad += 1
                    log.failure("access log: an entry could not be built; dropped")
                continue
            entry = add()
            try:
                # fill_entry(entry, fields), inline (a test compares the two)
                (now, log_id, account_id, service_id, host, path, method, response_code,
                 duration_ms, source_ip, auth_mechanism, user_id, bytes_upload,
                 bytes_download, target) = fields
                key = (account_id, service_id, host, auth_mechanism, target)
                entry.CopyFrom(get(key) or _new_template(key))
                ts = entry.timestamp
                ts.seconds, ts.nanos = divmod(int(now * 1e9), 1_000_000_000)
                entry.log_id = log_id
                entry.path = path
                entry.source_ip = source_ip
                if method != "GET":
                    entry.method = method
                code = response_code or 200
                if code != 200 or type(code) is not int:
                    entry.response_code = code
                    entry.auth_success = code not in (401, 403)
                if user_id and auth_mechanism in _NAMED:
                    entry.user_id = user_id
                if duration_ms:
                    entry.duration_ms = duration_ms
                if bytes_upload:
                    entry.bytes_upload = bytes_upload
                if bytes_download:
                    entry.bytes_download = bytes_download
            except Exception:
                del batch[-1]
                bad += 1
                log.failure("access log: an entry could not be built; dropped")
            except BaseException:
                del batch[-1]
                raise
        return bad

    def add_to_batch(self, batch: Any, item: Any) -> None:
        """Build one queued item into the forming batch: a :meth:`record`
        tuple is filled into a new element of the repeated field (removed
        again if it cannot be built); a built entry is copied in."""
        if type(item) is tuple:
            entry = batch.add()
            try:
                fill_entry(entry, item)
            except BaseException:
                del batch[-1]
                raise
        elif type(item) is pb.AccessLog:
            batch.append(item)
        else:
            batch.append(self.prepare(item))
