"""Direct dialer: targets reached over the host network with host DNS
(``direct_upstream=true``), and the guard around it.

With a :class:`~nbgateway.dial.guard.DialPolicy` (always, in the gateway;
see :meth:`DirectDialer.for_account`) every connection goes through
:class:`GuardedEndpoint`: the target host is read as a literal address
(inet_aton spellings included) or resolved with the reactor's name resolver;
*each* resolved address is checked against the policy for the account; the
connection is then made with a TCP4/TCP6 endpoint to exactly a checked
literal address (no second resolution, so no resolve-then-dial race).  When
no address passes, the connect fails with
:class:`~nbgateway.dial.DirectUpstreamDeniedError` before any socket is opened,
and the refusal is counted in :class:`DirectDialStats`.

Without a policy the dialer is the plain ``HostnameEndpoint`` (RFC 8305
happy eyeballs) for callers that vet their targets themselves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from twisted.internet import defer, error
from twisted.internet.address import IPv4Address as TwistedIPv4
from twisted.internet.address import IPv6Address as TwistedIPv6
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IResolutionReceiver, IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from nbgateway.dial import DirectUpstreamDeniedError, IUpstreamDialer
from nbgateway.dial.guard import (
    DENY_REASONS,
    INVALID_HOST,
    LOCALHOST_ADDRESSES,
    NO_ADDRESS,
    DialPolicy,
    IPAddress,
    classify_host,
    is_localhost_name,
    normalize,
)

log = Logger()

#: at most this many resolved addresses are checked and tried per connection
MAX_ADDRESSES = 16
#: shortest connect attempt per address when several are left (seconds)
MIN_ATTEMPT = 2.0


def is_host_address(ip: IPAddress) -> bool:
    """Whether ``ip`` is an address of this host: a routing lookup (a UDP
    socket ``connect``, no packet sent) picks ``ip`` itself as the source."""
    import ipaddress
    import socket

    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((str(ip), 9))
            source = sock.getsockname()[0].split("%", 1)[0]
    except OSError:
        return False
    try:
        return normalize(ipaddress.ip_address(source)) == normalize(ip)
    except ValueError:
        return False


class DirectDialStats:
    """Counters of guarded direct dials (exported as Prometheus metrics)."""

    def __init__(self) -> None:
        self.allowed = 0
        self.denied: Counter[str] = Counter()

    def collect(self) -> Iterator[Any]:
        """A prometheus_client custom-collector ``collect``."""
        from prometheus_client.core import CounterMetricFamily

        fam = CounterMetricFamily(
            "nbgateway_direct_upstream_dials",
            "direct_upstream connections by result: allowed, or denied by the dial guard",
            labels=["result", "reason"])
        fam.add_metric(["allowed", ""], self.allowed)
        for reason in DENY_REASONS:
            fam.add_metric(["denied", reason], self.denied.get(reason, 0))
        yield fam

    def describe(self) -> list[Any]:
        return []


class DenialReports:
    """Which refused direct dials to report to management as the service's
    status (so an instance admin sees which services this gateway refused and
    why): at most one report per service per ``interval`` seconds, at most
    ``max_services`` services remembered (oldest forgotten first)."""

    def __init__(self, interval: float = 60.0, max_services: int = 10_000) -> None:
        self.interval = interval
        self.max_services = max_services
        self._last: dict[str, float] = {}
        #: the last refusal per service, until its mapping changes: a later
        #: "ACTIVE" report for the service must say this instead
        self._notes: dict[str, str] = {}

    def note(self, service_id: str) -> str | None:
        """The refusal to report for ``service_id`` (None: none since its
        mapping last changed)."""
        return self._notes.get(service_id)

    def record(self, service_id: str, message: str) -> None:
        self._notes.pop(service_id, None)
        self._notes[service_id] = message
        while len(self._notes) > self.max_services:
            del self._notes[next(iter(self._notes))]

    def forget(self, service_id: str) -> None:
        """The service's mapping changed or went away: its target may be
        allowed now, and the next refusal is reported at once."""
        self._notes.pop(service_id, None)
        self._last.pop(service_id, None)

    def due(self, service_id: str, now: float) -> bool:
        last = self._last.get(service_id)
        if last is not None and now - last < self.interval:
            return False
        self._last.pop(service_id, None)
        self._last[service_id] = now
        while len(self._last) > self.max_services:
            del self._last[next(iter(self._last))]
        return True

    @staticmethod
    def message(exc: DirectUpstreamDeniedError) -> str:
        where = f"{exc.host}:{exc.port}"
        if exc.address and exc.address != exc.host:
            where += f" ({exc.address})"
        return (f"direct_upstream target {where} refused by this gateway: {exc.reason} "
                "(the operator's --direct-upstream-allow does not cover it for this account)"
                if exc.reason != "gateway_listener" else
                f"direct_upstream target {where} refused by this gateway: it is one of the "
                "gateway's own listeners")


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects the TCP addresses one ``resolveHostName`` call produces."""

    def __init__(self) -> None:
        self.addresses: list[IPAddress] = []
        self.done: defer.Deferred[list[IPAddress]] = defer.Deferred()

    def resolutionBegan(self, resolutionInProgress: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        import ipaddress

        if len(self.addresses) >= MAX_ADDRESSES:
            return
        if not isinstance(address, TwistedIPv4 | TwistedIPv6):
            return
        try:
            ip = normalize(ipaddress.ip_address(address.host))
        except ValueError:
            return
        if ip not in self.addresses:
            self.addresses.append(ip)

    def resolutionComplete(self) -> None:
        if not self.done.called:
            self.done.callback(self.addresses)


class _Connect:
    """One guarded connect: resolve, check, dial the checked addresses in turn."""

    def __init__(self, endpoint: GuardedEndpoint, factory: Any) -> None:
        self.ep = endpoint
        self.factory = factory
        self.result: defer.Deferred[Any] = defer.Deferred(self._cancel)
        self.current: defer.Deferred[Any] | None = None
        self.cancelled = False
        reactor = endpoint.reactor
        self.deadline = reactor.seconds() + endpoint.timeout
        self.timer = reactor.callLater(endpoint.timeout, self._timed_out)

    # -- outcome
    def _finish(self, ok: bool, value: Any) -> None:
        if self.timer.active():
            self.timer.cancel()
        if self.over:
            return
        if ok:
            self.result.callback(value)
        else:
            self.result.errback(value)

    @property
    def over(self) -> bool:
        return self.cancelled or self.result.called

    def _cancel(self, _d: defer.Deferred[Any]) -> None:
        self.cancelled = True  # the result fails with CancelledError after this
        if self.timer.active():
            self.timer.cancel()
        current, self.current = self.current, None
        if current is not None:
            current.cancel()

    def _timed_out(self) -> None:
        current, self.current = self.current, None
        self._finish(False, error.TimeoutError(
            string=f"direct upstream {self.ep.host}:{self.ep.port}"))
        if current is not None:
            current.cancel()

    # -- steps
    def start(self) -> defer.Deferred[Any]:
        ep = self.ep
        kind = classify_host(ep.host)
        if kind.invalid is not None:
            self._deny(INVALID_HOST, "")
        elif kind.ip is not None:
            self._check([kind.ip])
        elif kind.name is not None and is_localhost_name(kind.name):
            self._check(list(LOCALHOST_ADDRESSES))
        else:
            receiver = _Addresses()
            d = self.current = receiver.done
            try:
                ep.reactor.nameResolver.resolveHostName(
                    receiver, kind.name, ep.port, (TwistedIPv4, TwistedIPv6), "TCP")
            except Exception as exc:  # a resolver that raises instead of reporting
                self.current = None
                self._finish(False, exc)
                return self.result
            d.addCallback(self._resolved)
            d.addErrback(self._failed)
        return self.result

    def _resolved(self, addresses: list[IPAddress]) -> None:
        self.current = None
        if not self.over:
            self._check(addresses)

    def _check(self, addresses: list[IPAddress]) -> None:
        ep = self.ep
        allowed: list[IPAddress] = []
        first_denial: tuple[str, IPAddress] | None = None
        for ip in addresses[:MAX_ADDRESSES]:
            decision = ep.policy.check(ep.account_id, ip, ep.port)
            if decision.allowed:
                allowed.append(normalize(ip))
            elif first_denial is None:
                first_denial = (decision.reason, ip)
        if not allowed:
            if first_denial is None:
                self._deny(NO_ADDRESS, "")
            else:
                self._deny(first_denial[0], str(first_denial[1]))
            return
        if ep.stats is not None:
            ep.stats.allowed += 1
        self._try(allowed, None)

    def _deny(self, reason: str, address: str) -> None:
        ep = self.ep
        if ep.stats is not None:
            ep.stats.denied[reason] += 1
        log.debug("direct upstream dial denied: account {account} {host}:{port} "
                  "({address}): {reason}", account=ep.account_id, host=ep.host,
                  port=ep.port, address=address, reason=reason)
        self._finish(False, DirectUpstreamDeniedError(reason, ep.host, ep.port, address))

    def _try(self, left: list[IPAddress], last: BaseException | None) -> None:
        if self.over:
            return
        if not left:
            self._finish(False, last or error.ConnectError(string="no address"))
            return
        ip, rest = left[0], left[1:]
        ep = self.ep
        remaining = max(self.deadline - ep.reactor.seconds(), 0.001)
        if rest:  # leave time for the other addresses (a black-holed first one)
            remaining = max(remaining / (len(rest) + 1), min(remaining, MIN_ATTEMPT))
        cls = TCP4ClientEndpoint if ip.version == 4 else TCP6ClientEndpoint
        try:
            target = cls(ep.reactor, str(ip), ep.port, timeout=remaining,
                         bindAddress=ep.bind_address)
            d = self.current = target.connect(self.factory)
        except Exception as exc:  # e.g. an address the socket layer rejects
            self._try(rest, exc)
            return

        def connected(proto: Any) -> None:
            self.current = None
            if self.over:  # timed out or cancelled meanwhile: drop the late connection
                transport = getattr(proto, "transport", None)
                if transport is not None:
                    transport.abortConnection()
                return
            self._finish(True, proto)

        def failed(failure: Any) -> None:
            self.current = None
            if self.over:
                return
            self._try(rest, failure.value)

        d.addCallbacks(connected, failed)

    def _failed(self, failure: Any) -> None:
        self.current = None
        self._finish(False, failure)


@implementer(IStreamClientEndpoint)
class GuardedEndpoint:
    """Connects to ``host:port`` only through addresses ``policy`` allows
    for ``account_id``; the whole connect is bounded by ``timeout``."""

    def __init__(self, reactor: Any, policy: DialPolicy, account_id: str, host: str,
                 port: int, timeout: float, *, bind_address: tuple[str, int] | None = None,
                 stats: DirectDialStats | None = None) -> None:
        self.reactor = reactor
        self.policy = policy
        self.account_id = account_id
        self.host = host
        self.port = port
        self.timeout = timeout if timeout and timeout > 0 else 30.0
        self.bind_address = bind_address
        self.stats = stats

    def connect(self, protocolFactory: Any) -> defer.Deferred[Any]:
        return _Connect(self, protocolFactory).start()


@implementer(IUpstreamDialer)
class DirectDialer:
    """``IUpstreamDialer`` over the host network.

    With ``policy`` every endpoint is a :class:`GuardedEndpoint` for
    ``account_id`` (get one per account with :meth:`for_account`); without,
    an unguarded ``HostnameEndpoint``.
    """

    def __init__(self, reactor: Any, bind_address: tuple[str, int] | None = None, *,
                 policy: DialPolicy | None = None, account_id: str = "",
                 stats: DirectDialStats | None = None) -> None:
        self.reactor = reactor
        self.bind_address = bind_address
        self.policy = policy
        self.account_id = account_id
        self.stats = stats
        #: the per-account dialers :meth:`for_account` made (one per account
        #: while it exists: :meth:`forget_account` drops it)
        self._accounts: dict[str, DirectDialer] = {}

    def for_account(self, account_id: str) -> DirectDialer:
        """The same dialer, guarded for ``account_id``: one object per account,
        so what the proxy keeps per dialer (its route plans' agents, the
        upstream pools' agent cache) is found again on the next request."""
        dialer = self._accounts.get(account_id)
        if dialer is None:
            dialer = self._accounts[account_id] = DirectDialer(
                self.reactor, self.bind_address, policy=self.policy,
                account_id=account_id, stats=self.stats)
        return dialer

    def forget_account(self, account_id: str) -> None:
        """The account is gone: drop its dialer."""
        self._accounts.pop(account_id, None)

    def endpoint(self, host: str, port: int, timeout: float) -> Any:
        if self.policy is not None:
            return GuardedEndpoint(self.reactor, self.policy, self.account_id, host, port,
                                   timeout, bind_address=self.bind_address, stats=self.stats)
        host = host.strip("[]")
        return HostnameEndpoint(
            self.reactor, host.encode("idna") if not host.isascii() else host, port,
            timeout=timeout, bindAddress=self.bind_address,
        )
