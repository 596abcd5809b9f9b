"""A proxy's access-log entries (``pb.AccessLog``) as the store takes them.

* :func:`access_log_values`: one entry as a :data:`VALUE_FIELDS` tuple (the
  store's ``append_values``), ValueError when it is malformed;
  :func:`access_log_record`: the same as an :class:`AccessLogEntry`
  (SendAccessLog).
* :func:`decode_batch`: a whole ``NbgwSendAccessLogBatch`` column-wise (the
  store's ``append_columns``): every field of every entry read by one
  ``operator.attrgetter`` call per entry (C, no bytecode per field), each
  check a pass over one column (``set``, ``min``/``max``), the timestamp as
  epoch microseconds (no ``datetime`` per entry).  None when any entry is
  malformed: the caller takes the per-entry path, which skips and counts
  exactly those entries, so both paths store the same rows.  The batch's
  distinct source addresses are checked by one regular-expression match over
  their joined text (canonical dotted quads, what gateways send, need no
  conversion; a batch holding anything else takes the per-address
  :func:`canonical_ip_cached`), and failure reasons are written only for the
  entries that failed (``itertools.compress`` over a C-computed mask).
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import compress, repeat
from typing import Any

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management.ipam import canonical_tunnel_ip
from nbgateway.management.model import AccessLogEntry, utcnow
from nbgateway.management.store._accesslog import VALUE_FIELDS


@functools.lru_cache(maxsize=4096)
def canonical_ip_cached(text: str) -> tuple[int, str] | None:
    """canonical_tunnel_ip, memoised: a gateway's entries repeat few addresses."""
    return canonical_tunnel_ip(text)


#: one canonical dotted-quad IPv4 address: what ``inet_ntoa`` writes (0-255, no
#: leading zeros; ASCII digits only), so exactly the texts
#: :func:`canonical_tunnel_ip` gives back unchanged as version 4
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_QUAD = rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}"
#: newline-joined canonical dotted quads (:func:`_all_canonical_v4`)
_QUADS = re.compile(rf"{_QUAD}(?:\n{_QUAD})*")


def _all_canonical_v4(addresses: set[str]) -> bool:
    """Whether every text of the (non-empty) set is a canonical dotted-quad
    IPv4 address: one C-level match over the joined texts (~40 ns an address,
    a cache miss of :func:`canonical_ip_cached` ~600 ns).  The newline count
    makes sure no text held a newline itself (a match then covers every text
    exactly once)."""
    text = "\n".join(addresses)
    return _QUADS.fullmatch(text) is not None and text.count("\n") == len(addresses) - 1


_PROTOCOLS = frozenset(("", "http", "tcp", "udp"))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: the largest duration_ms whose nanoseconds fit the BIGINT column
_MAX_DURATION_MS = (2**63 - 1) // 1_000_000
#: the timestamp seconds a ``datetime`` holds (years 1 to 9999)
_MIN_SECONDS = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // timedelta(seconds=1)
_MAX_SECONDS = (datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) - _EPOCH) // timedelta(seconds=1)


def access_log_values(entry: pb.AccessLog) -> tuple[Any, ...]:
    """A proxy's access-log entry as the store's batch path takes it: the
    :data:`VALUE_FIELDS` tuple of ``store.access_logs.append_values``, built
    straight from the message (no :class:`AccessLogEntry` per entry, each
    field read once).  ValueError says what is malformed (the batch RPC skips
    and counts the entry, SendAccessLog answers INVALID_ARGUMENT)."""
    account_id = entry.account_id
    if not account_id:
        raise ValueError("log.account_id is required")
    source_ip = entry.source_ip
    if source_ip:
        canon = canonical_ip_cached(source_ip)
        if canon is None:
            raise ValueError("log.source_ip is not an IP")
        source_ip = canon[1]
    protocol = entry.protocol
    if protocol not in _PROTOCOLS:
        raise ValueError("log.protocol is invalid")
    code = entry.response_code
    reason = ""
    if protocol == "http" or not protocol:
        if not entry.auth_success:
            reason = "Authentication failed"
        elif code >= 400:
            reason = "Request failed"
    duration_ms = entry.duration_ms
    if not -_MAX_DURATION_MS <= duration_ms <= _MAX_DURATION_MS:
        raise ValueError("log.duration_ms is out of range")
    if entry.HasField("timestamp"):
        stamp = entry.timestamp
        if not 0 <= stamp.nanos < 1_000_000_000:
            raise ValueError("log.timestamp is invalid")
        try:  # what Timestamp.ToDatetime does, without its per-call overhead
            ts = _EPOCH + timedelta(0, stamp.seconds, stamp.nanos // 1000)
        except OverflowError:
            raise ValueError("log.timestamp is out of range") from None
    else:
        ts = utcnow()
    metadata = entry.metadata
    return (
        entry.log_id, account_id, entry.service_id, ts, source_ip, "", "", 0, "",
        entry.method, entry.host, entry.path, duration_ms * 1_000_000, code, reason,
        entry.user_id, entry.auth_mechanism, entry.bytes_upload, entry.bytes_download,
        protocol, dict(metadata) if metadata else None, entry.agent_network,
        entry.nbgw_target, None,
    )


def access_log_record(entry: pb.AccessLog) -> AccessLogEntry:
    """The store record for a proxy's access-log entry (the same values as
    :func:`access_log_values`); ValueError says what is malformed (the RPC
    answers INVALID_ARGUMENT with it)."""
    values = dict(zip(VALUE_FIELDS, access_log_values(entry), strict=True))
    values["metadata"] = values["metadata"] or {}
    return AccessLogEntry(**values)


#: every field :func:`decode_batch` reads, in one C call per entry
_FIELDS = operator.attrgetter(
    "log_id", "account_id", "service_id", "timestamp.seconds", "timestamp.nanos",
    "source_ip", "method", "host", "path", "duration_ms", "response_code", "auth_success",
    "user_id", "auth_mechanism", "bytes_upload", "bytes_download", "protocol",
    "agent_network", "nbgw_target",
)
#: an entry's metadata map, its size taken as it is read (a batch's worth of
#: map wrappers held at once made every entry cost more, as sub-messages do)
_METADATA = operator.attrgetter("metadata")
_MICROS = 1_000_000


def decode_batch(logs: Sequence[pb.AccessLog]) -> list[Sequence[Any]] | None:
    """The entries column-wise for ``store.access_logs.append_columns``: one
    sequence per :data:`VALUE_FIELDS` field, in that order, holding what
    :func:`access_log_values` gives, except the timestamp column: UTC epoch
    microseconds (an entry without a timestamp: now).  None when an entry is
    malformed (the caller decodes entry by entry instead, skipping exactly
    the entries :func:`access_log_values` refuses); empty columns for no
    entries."""
    n = len(logs)
    if not n:
        return [[] for _ in VALUE_FIELDS]
    (ids, accounts, services, seconds, nanos, ips, methods, hosts, paths, durations, codes,
     auth_ok, users, mechanisms, uploads, downloads, protocols, agents,
     targets) = zip(*map(_FIELDS, logs), strict=True)
    if "" in accounts or not _PROTOCOLS.issuperset(protocols):
        return None
    if min(durations) < -_MAX_DURATION_MS or max(durations) > _MAX_DURATION_MS:
        return None
    if min(nanos) < 0 or max(nanos) >= 1_000_000_000:
        return None
    if min(seconds) < _MIN_SECONDS or max(seconds) > _MAX_SECONDS:
        return None
    distinct = set(ips)  # a gateway's entries repeat few addresses
    distinct.discard("")
    if distinct and not _all_canonical_v4(distinct):
        canon = {}
        for ip in distinct:
            c = canonical_ip_cached(ip)
            if c is None:
                return None
            if c[1] != ip:
                canon[ip] = c[1]
        if canon:
            ips = [canon.get(ip, ip) for ip in ips]
    stamps = [s * _MICROS + ns // 1000 for s, ns in zip(seconds, nanos, strict=True)]
    if 0 in seconds:  # the epoch itself, or no timestamp at all (HasField is per entry)
        now = (utcnow() - _EPOCH) // timedelta(microseconds=1)
        stamps = [t if t or logs[i].HasField("timestamp") else now for i, t in enumerate(stamps)]
    reasons = [""] * n
    if not all(auth_ok) or max(codes) >= 400:  # only the failed entries, found in C
        failed = map(operator.or_, map(operator.not_, auth_ok),
                     map(operator.ge, codes, repeat(400)))
        for i in compress(range(n), failed):
            if protocols[i] == "http" or not protocols[i]:
                reasons[i] = "Request failed" if auth_ok[i] else "Authentication failed"
    empty, zero = [""] * n, [0] * n
    return [
        ids, accounts, services, stamps, ips, empty, empty, zero, empty, methods, hosts, paths,
        [d * 1_000_000 for d in durations], codes, reasons, users, mechanisms, uploads,
        downloads, protocols,
        [dict(e.metadata) or None for e in logs] if any(map(len, map(_METADATA, logs)))
        else [None] * n,
        agents, targets, [None] * n,
    ]
