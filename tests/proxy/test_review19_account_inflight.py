"""review19 F3: nothing one account holds is sized against the process's
file-descriptor budget (RLIMIT_NOFILE, shared by every account; its soft
value is often 1,024 for a service).

* :class:`~nbgateway.proxy.reverse.ReverseProxy` has a per-account in-flight
  bound (``max_inflight``, 503 beyond it), but the gateway builds its proxy
  without one (0: unlimited) and the bound skips ``direct_upstream`` targets,
  the ones that take an OS socket per upstream connection.  Every request of
  one account waiting on its own slow upstream (which simply never answers;
  the request timeout is the tenant's choice, 30 s by default, uncapped unless
  --max-dial-timeout is set) holds a client socket and an upstream socket.
* L4: one account may hold 4 x --max-relays (16,384) TCP relays, two sockets
  each for a direct target, and 4,096 UDP sessions, one socket each for a
  direct target.
* The HTTP/1.1 upstream pool keeps up to 100 idle connections per target and
  any number of targets per account, for 90 s after the burst that made them.

Once the descriptors are gone no listener accepts and nothing is dialed for
any account.  One account should hold at most a share of the budget.

Sans-IO: the gateway as :class:`~nbgateway.service.GatewayService` builds it
(task.Clock, a fake management, never started); the process's descriptor
budget is pinned at 1,024 for the test."""

from __future__ import annotations

import resource

import pytest
from twisted.internet import defer, task
from twisted.web.http_headers import Headers

from nbgateway.config import load
from nbgateway.dial.http11 import LeanAgent
from nbgateway.mgmt.fake import FakeManagementClient
from nbgateway.routes.context import RequestContext
from nbgateway.routes.paths import PathRouter, parse_target
from nbgateway.routes.service import ProxyService, TargetOptions
from nbgateway.service import GatewayService
from tests.proxy.test_reverse_streaming import _FakeRequest
from tests.proxy.test_upstream_client import OK, Collect, FakeEndpoints

FD_BUDGET = 1024
#: at most this much of the budget for one account (generous: a half)
SHARE = FD_BUDGET // 2


class _SlowAgent:
    """An upstream that never answers: counts the exchanges still waiting."""

    def __init__(self) -> None:
        self.waiting = 0

    def request(self, *a, **kw):
        self.waiting += 1

        def cancel(d: defer.Deferred) -> None:
            self.waiting -= 1
        return defer.Deferred(cancel)


class _Pools:
    def __init__(self) -> None:
        self.agents: dict[str, _SlowAgent] = {}

    def agent(self, account_id, *a, **kw):
        return self.agents.setdefault(account_id, _SlowAgent())


@pytest.fixture
def gateway(tmp_path, monkeypatch) -> GatewayService:
    real = resource.getrlimit

    def getrlimit(which):
        if which == resource.RLIMIT_NOFILE:
            return (FD_BUDGET, FD_BUDGET)
        return real(which)

    monkeypatch.setattr(resource, "getrlimit", getrlimit)
    config = load({"mgmt": "http://127.0.0.1:1", "domain": "gw.test", "wg_port": "0",
                   "datadir": str(tmp_path), "health_addr": "", "addr": "127.0.0.1:0"},
                  {"NB_PROXY_TOKEN": "t"})
    return GatewayService(config, reactor=task.Clock(), management=FakeManagementClient())


def _service(account: str, host: str, direct: bool) -> ProxyService:
    route = parse_target("/", "http://203.0.113.50:8080/",
                         TargetOptions(direct_upstream=direct))
    return ProxyService(account, host, PathRouter([route]))


def _send(proxy, service: ProxyService, n: int) -> list:
    out = []
    for _ in range(n):
        request = _FakeRequest(None)
        request.method = b"GET"
        request.requestHeaders.setRawHeaders(b"host", [service.domain.encode()])
        proxy.render(request, RequestContext(service=service))
        out.append(request)
    return out


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "tunnel"])
def test_one_accounts_slow_upstream_cannot_hold_every_descriptor(gateway, direct):
    proxy = gateway.proxy
    pools = proxy.pools = _Pools()
    proxy.dialer_for = lambda account, direct_upstream: object()
    a = _service("acct-a", "a.example", direct)
    b = _service("acct-b", "b.example", direct)
    _send(proxy, a, FD_BUDGET)  # as many slow requests as the process has descriptors
    held = pools.agents["acct-a"].waiting
    assert held <= SHARE, (
        f"one account holds {held} upstream exchanges of a {FD_BUDGET}-descriptor process")
    (req_b,) = _send(proxy, b, 1)
    assert pools.agents["acct-b"].waiting == 1 and req_b.code is None  # B is still dialed


def test_one_accounts_l4_relays_and_udp_sessions_fit_in_a_share_of_the_budget(gateway):
    # each relay of a direct target holds two sockets, each UDP session one
    assert 2 * gateway.l4.max_account_relays <= SHARE, gateway.l4.max_account_relays
    assert gateway.l4.udp.max_account_sessions <= SHARE, gateway.l4.udp.max_account_sessions


def test_one_accounts_idle_upstream_connections_fit_in_a_share_of_the_budget(gateway):
    pool = gateway.pools.pool("acct-a", True, False)  # direct: OS sockets
    eps = FakeEndpoints()
    agent = LeanAgent(pool, eps.endpoint_for)
    waiting = []
    for port in range(8080, 8090):  # ten targets of one account, 100 concurrent each
        url = b"http://203.0.113.50:%d/" % port
        for _ in range(100):
            waiting.append(agent.request(b"GET", url, Headers(), None))
    assert len(eps.conns) == 1000
    for (_t, proto), d in zip(eps.conns, waiting, strict=True):
        proto.dataReceived(OK)
        d.addCallback(lambda r: r.deliverBody(Collect()))
    idle = gateway.pools.idle_connections("acct-a")
    open_ = sum(1 for t, _p in eps.conns if not t.disconnecting)
    assert idle <= SHARE and open_ <= SHARE, (
        f"one account keeps {idle} idle upstream connections ({open_} sockets open)")
