"""Private-mode ("NetBird-only") authentication: the tunnel-peer gate and its
ValidateTunnelPeer cache, hardened: identities are per account, the tunnel
source address comes from the socket, never from headers (issue 6).

:class:`TunnelValidationCache`
    Key (listener account, tunnel IP, domain).  Only ``valid=true`` answers with
    a session token are stored; denials and errors never are.  TTL (default
    300 s, ``NB_PROXY_TUNNEL_CACHE_TTL``); at most ``max_per_account`` entries
    per account, evicted FIFO.  Concurrent misses share one RPC
    (single-flight); each caller gets its own Deferred, so a caller that goes
    away (its Deferred is cancelled) never cancels the RPC the others wait on;
    the RPC is bounded by ``rpc_timeout`` instead.  :meth:`evict_account`
    drops an account's entries (the gateway calls it whenever the account's
    services change or management pushes a network map for its proxy peer,
    which management does on every change that can alter a validation answer:
    peer groups, peer deletion, user blocked, service access groups; the map
    carries no group data, so the account is the finest grain the gateway
    can tell).  An eviction also detaches the account's in-flight RPCs: their
    answer still reaches the callers that were waiting, but is never stored,
    and a caller arriving after the eviction starts a fresh RPC instead of
    joining the stale one.

    A hit can also return a value derived once from the cached answer
    (:meth:`TunnelValidationCache.validate` with ``derive``): the gate keeps
    its allowing :class:`GateDecision` (and so the
    :class:`~nbgateway.routes.identity.Identity`) in the entry itself, so
    the derived value lives exactly as long as the cached answer (TTL, FIFO
    bound, account eviction) and a request on a hit builds nothing.

:class:`PrivateGate`
    The ordered checks: overlay origin (the listener's account is
    known), listener account == mapping account, a valid tunnel-like source,
    the local roster, then the cache/RPC.  Every doubt is a denial.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nbgateway.routes.identity import Identity
from nbgateway.routes.restrictions import parse_ip, tunnel_like

log = Logger()

DEFAULT_TTL = 300.0
DEFAULT_MAX_PER_ACCOUNT = 1024
DEFAULT_RPC_TIMEOUT = 10.0

_bucket_get = OrderedDict.get


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    joins: int = 0
    errors: int = 0
    denials: int = 0
    evictions: int = 0


class _Flight:
    """One in-flight ValidateTunnelPeer RPC and the callers waiting on it."""

    __slots__ = ("stale", "waiters")

    def __init__(self) -> None:
        self.waiters: list[Deferred] = []
        #: an eviction happened while the RPC ran: its answer must not be stored
        self.stale = False


class _Entry:
    """A cached valid answer, when it was stored, and what was derived from it."""

    __slots__ = ("derived", "response", "stored")

    def __init__(self, stored: float, response: object) -> None:
        self.stored = stored
        self.response = response
        #: ``(derive function, its value)`` for the latest ``derive`` asked
        self.derived: tuple[Callable[[object], object], object] | None = None


class TunnelValidationCache:
    def __init__(
        self,
        client,
        clock: IReactorTime,
        *,
        ttl: float = DEFAULT_TTL,
        max_per_account: int = DEFAULT_MAX_PER_ACCOUNT,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
    ) -> None:
        self.client = client
        self.clock = clock
        self.ttl = ttl
        self.max_per_account = max_per_account
        self.rpc_timeout = rpc_timeout
        self._buckets: dict[str, OrderedDict[tuple[str, str], _Entry]] = {}
        self._inflight: dict[tuple[str, str, str], _Flight] = {}
        self.stats = CacheStats()

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def evict_account(self, account_id: str) -> int:
        """Forget everything cached for ``account_id`` and detach its in-flight
        RPCs (they started before the change: their answer must not be
        stored or joined); returns how many entries were dropped."""
        bucket = self._buckets.pop(account_id, None)
        dropped = len(bucket) if bucket else 0
        detached = [k for k in self._inflight if k[0] == account_id]
        for key in detached:
            self._inflight.pop(key).stale = True
        self.stats.evictions += dropped
        if dropped or detached:
            log.debug("account {account}: {dropped} cached validations evicted, "
                      "{detached} in-flight RPCs detached", account=account_id,
                      dropped=dropped, detached=len(detached))
        return dropped

    def _entry(self, account_id: str, tunnel_ip: str, domain: str) -> _Entry | None:
        bucket = self._buckets.get(account_id)
        if not bucket:
            return None
        entry = bucket.get((tunnel_ip, domain))
        if entry is None:
            return None
        if self.clock.seconds() - entry.stored > self.ttl:
            del bucket[(tunnel_ip, domain)]
            return None
        return entry

    def lookup(self, account_id: str, tunnel_ip: str, domain: str):
        """The cached response, or None (expired entries are dropped)."""
        entry = self._entry(account_id, tunnel_ip, domain)
        return entry.response if entry is not None else None

    def cached(self, account_id: str, tunnel_ip: str, domain: str,
               derive: Callable[[object], object]) -> object | None:
        """``derive(response)`` of a cached answer (counted as a hit, derived
        once per entry as in :meth:`validate`), or None on a miss: the
        synchronous half of :meth:`validate`, no Deferred."""
        bucket = self._buckets.get(account_id)  # self._entry(...), inline
        if not bucket:
            return None
        # OrderedDict.get called as a function: bucket.get(...) is a method
        # lookup CPython 3.11 does not specialise on an OrderedDict
        entry = _bucket_get(bucket, (tunnel_ip, domain))
        if entry is None:
            return None
        if self.clock.seconds() - entry.stored > self.ttl:
            del bucket[(tunnel_ip, domain)]
            return None
        self.stats.hits += 1
        derived = entry.derived
        if derived is None or derived[0] is not derive:
            derived = entry.derived = (derive, derive(entry.response))
        return derived[1]

    def validate(self, account_id: str, tunnel_ip: str, domain: str,
                 derive: Callable[[object], object] | None = None) -> Deferred:
        """Deferred firing with the ValidateTunnelPeerResponse, or None when the
        RPC failed (error or timeout).  Never errbacks.

        With ``derive``, a *hit* fires with ``derive(response)`` instead,
        computed on the entry's first hit and kept in the entry (it dies with
        it); a miss still fires with the response (or None)."""
        entry = self._entry(account_id, tunnel_ip, domain)
        if entry is not None:
            self.stats.hits += 1
            if derive is None:
                return succeed(entry.response)
            derived = entry.derived
            if derived is None or derived[0] is not derive:
                derived = entry.derived = (derive, derive(entry.response))
            return succeed(derived[1])
        key = (account_id, tunnel_ip, domain)
        flight = self._inflight.get(key)
        if flight is not None:
            self.stats.joins += 1
            joined: Deferred = Deferred(lambda d: self._forget_waiter(flight, d))
            flight.waiters.append(joined)
            return joined
        self.stats.misses += 1
        flight = self._inflight[key] = _Flight()
        mine: Deferred = Deferred(lambda d: self._forget_waiter(flight, d))
        flight.waiters.append(mine)
        try:
            # the listener's account goes with the question (nbgw_account_id):
            # our management answers valid only for a service of that account
            rpc = self.client.validate_tunnel_peer(tunnel_ip, domain, account_id=account_id)
        except Exception as exc:  # a broken client must not break the gate
            rpc = Deferred()
            rpc.errback(exc)
        rpc.addTimeout(self.rpc_timeout, self.clock)
        rpc.addCallbacks(self._rpc_done, self._rpc_failed, callbackArgs=(key, flight),
                         errbackArgs=(key, flight))
        return mine

    @staticmethod
    def _forget_waiter(flight: _Flight, d: Deferred) -> None:
        if d in flight.waiters:
            flight.waiters.remove(d)

    def _finish(self, key, flight: _Flight, result) -> None:
        if self._inflight.get(key) is flight:
            del self._inflight[key]
        waiters, flight.waiters = flight.waiters, []
        for d in waiters:
            if not d.called:
                d.callback(result)

    def _rpc_done(self, response, key, flight: _Flight) -> None:
        account_id, tunnel_ip, domain = key
        if getattr(response, "valid", False) and getattr(response, "session_token", ""):
            if not flight.stale:
                bucket = self._buckets.setdefault(account_id, OrderedDict())
                bucket[(tunnel_ip, domain)] = _Entry(self.clock.seconds(), response)
                while len(bucket) > self.max_per_account:
                    bucket.popitem(last=False)
        else:
            self.stats.denials += 1
        self._finish(key, flight, response)

    def _rpc_failed(self, failure, key, flight: _Flight) -> None:
        self.stats.errors += 1
        log.debug("ValidateTunnelPeer failed for {ip} {domain}: {err}",
                  ip=key[1], domain=key[2], err=failure.getErrorMessage())
        self._finish(key, flight, None)


@dataclass(frozen=True)
class GateDecision:
    allowed: bool
    reason: str
    identity: Identity | None = None
    session_token: str = ""
    rpc: bool = False  # whether this decision needed the cache/RPC layer


_NOT_OVERLAY = GateDecision(False, "not_overlay")
_WRONG_ACCOUNT = GateDecision(False, "wrong_account")
_NOT_IN_ROSTER = GateDecision(False, "not_in_roster")


def identity_from_response(response) -> Identity:
    return Identity(
        user_id=response.user_id,
        email=response.user_email,
        group_ids=tuple(response.peer_group_ids),
        group_names=tuple(response.peer_group_names),
        method="oidc",
    )


@functools.lru_cache(maxsize=4096)
def _tunnel_ip(client_ip: str) -> tuple[str, str]:
    """(refusal reason or "", normalised IP) of a client address: pure, and
    asked on every private request (cached, bounded)."""
    addr = parse_ip(client_ip)
    if addr is None:
        return "invalid_ip", ""
    if not tunnel_like(addr):
        return "not_tunnel_ip", ""
    return "", str(addr)


class PrivateGate:
    """Decides whether a request may reach a private service."""

    def __init__(
        self,
        cache: TunnelValidationCache,
        in_roster: Callable[[str, str], bool],
    ) -> None:
        self.cache = cache
        self.in_roster = in_roster  # (account_id, ip) -> known peer of that account?

    def check(
        self, *, listener_account: str | None, mapping_account: str, domain: str, client_ip: str
    ) -> Deferred:
        """Deferred[GateDecision]; never errbacks."""
        decision = self.decide_now(listener_account=listener_account,
                                   mapping_account=mapping_account, domain=domain,
                                   client_ip=client_ip)
        if decision is not None:
            return succeed(decision)
        # a miss fires with the RPC's answer or None (a hit in the meantime
        # with the entry's decision, passed through)
        d = self.cache.validate(listener_account, _tunnel_ip(client_ip)[1], domain, _decide)
        d.addCallback(_decide)
        return d

    def decide_now(
        self, listener_account: str | None, mapping_account: str, domain: str, client_ip: str
    ) -> GateDecision | None:
        """The decision when it needs no RPC (a local refusal, or the cached
        answer's allowing decision), else None: then :meth:`check` asks.
        The same checks in the same order as :meth:`check`, without a
        Deferred, for the request path's common case (a cache hit).
        Positional or keyword arguments (the request path passes them
        positionally: a keyword call costs more per call)."""
        if listener_account is None:
            return _NOT_OVERLAY
        if listener_account != mapping_account:
            return _WRONG_ACCOUNT
        refused, ip = _tunnel_ip(client_ip)
        if refused:
            return GateDecision(False, refused)
        # read, then called: ``self.in_roster(...)`` is a method lookup that
        # CPython 3.11 never specialises for an instance's own attribute
        in_roster = self.in_roster
        if not in_roster(listener_account, ip):
            return _NOT_IN_ROSTER
        return self.cache.cached(listener_account, ip, domain, _decide)  # type: ignore[return-value]


def _decide(response) -> GateDecision:
    """The decision for a ValidateTunnelPeer answer (None: the RPC failed).
    Frozen, so the allowing decision of a cached answer is shared by its hits."""
    if isinstance(response, GateDecision):
        return response
    if response is None:
        return GateDecision(False, "rpc_error", rpc=True)
    if not response.valid:
        return GateDecision(False, response.denied_reason or "denied", rpc=True)
    if not response.session_token:
        return GateDecision(False, "empty_session_token", rpc=True)
    return GateDecision(True, "", identity_from_response(response), response.session_token,
                        rpc=True)


def session_cookie(token: str, max_age: int = 86400) -> str:
    """The ``Set-Cookie`` value for a session token."""
    return f"nb_session={token}; Path=/; Max-Age={max_age or 86400}; HttpOnly; Secure; SameSite=Lax"
