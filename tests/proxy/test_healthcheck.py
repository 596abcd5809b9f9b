"""Active health checks: LoopingCall on a task.Clock, real HTTP upstreams."""

from __future__ import annotations

from google.protobuf import duration_pb2
from twisted.internet import defer, task
from twisted.trial import unittest
from twisted.web import resource

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.proxy.healthcheck import HealthChecks
from nbgateway.routes.service import entry_from_mapping

from ._harness import ProxyHarness, listen_site, wait_for


class Health(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.status = 200
        self.paths: list[bytes] = []
        self.agents: list[bytes] = []

    def render_GET(self, request):
        self.paths.append(request.path)
        self.agents.append(request.getHeader(b"user-agent"))
        request.setResponseCode(self.status)
        return b"ok"


def mapping(ports: list[int], **balancing) -> pb.ProxyMapping:
    m = pb.ProxyMapping(id="svc1", account_id="acc1", domain="hc.example")
    for port in ports:
        pm = m.path.add(path="/api", target=f"http://127.0.0.1:{port}/")
        pm.options.nbgw_balancing.CopyFrom(pb.NbgwBalancing(**balancing))
    return m


class HealthCheckTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.h = ProxyHarness(clock=self.clock)
        self.addCleanup(self.h.close)
        self.res = [Health(), Health()]
        self.ports = []
        for r in self.res:
            port, _site = listen_site(r)
            self.addCleanup(port.stopListening)
            self.ports.append(port.getHost().port)
        self.checks = HealthChecks(self.h.proxy, self.clock)
        self.addCleanup(self.checks.stop)

    @defer.inlineCallbacks
    def test_failing_checks_take_a_target_out_and_a_pass_puts_it_back(self):
        self.res[1].status = 503
        m = mapping(self.ports, health_path="/healthz", max_failures=2,
                    health_interval=duration_pb2.Duration(seconds=5),
                    health_status=200)
        self.checks.mapping_added(m)  # first round at once
        pool = self.h.proxy.balancers.get("svc1", "/api")
        a, b = pool.states
        yield wait_for(lambda: b.check_failures == 1 and not self.checks.checks["svc1"][0].busy)
        self.assertTrue(pool.healthy(b, self.clock.seconds()))  # one failure is not enough
        self.clock.advance(5)
        yield wait_for(lambda: b.check_failures == 2)
        self.assertFalse(pool.healthy(b, self.clock.seconds()))
        self.assertTrue(pool.healthy(a, self.clock.seconds()))
        self.assertEqual(self.res[0].paths, [b"/healthz", b"/healthz"])
        self.assertEqual(self.res[0].agents[0], b"nbgateway-health-check")
        # the target recovers: one passing check puts it back
        self.res[1].status = 200
        yield wait_for(lambda: not self.checks.checks["svc1"][0].busy)
        self.clock.advance(5)
        yield wait_for(lambda: b.check_failures == 0)
        self.assertTrue(pool.healthy(b, self.clock.seconds()))

    @defer.inlineCallbacks
    def test_loops_follow_the_mapping(self):
        m = mapping(self.ports, health_path="/h", health_interval=duration_pb2.Duration(seconds=2))
        self.checks.mapping_added(m)
        loop = self.checks.checks["svc1"][0].loop
        self.assertTrue(loop.running)
        yield wait_for(lambda: len(self.res[1].paths) == 1)
        # changed: no more active checks -> the loop stops, the pool stays for requests
        plain = mapping(self.ports)
        self.checks.mapping_changed(m, plain)
        self.assertFalse(loop.running)
        self.assertNotIn("svc1", self.checks.checks)
        self.clock.advance(10)
        self.assertEqual(len(self.clock.getDelayedCalls()), 0)
        # requests made a pool for the path; removal forgets it
        self.h.proxy.balancers.pool("svc1", entry_from_mapping(plain).service.router.match("/api"))
        self.checks.mapping_removed(plain)
        self.assertIsNone(self.h.proxy.balancers.get("svc1", "/api"))

    def test_no_health_path_no_loop_and_l4_ignored(self):
        self.checks.mapping_added(mapping(self.ports))
        self.assertEqual(self.checks.checks, {})
        l4 = pb.ProxyMapping(id="t1", account_id="acc1", mode="tcp", listen_port=9000)
        l4.path.add(target="127.0.0.1:1")
        self.checks.mapping_added(l4)
        self.assertEqual(self.checks.checks, {})

    def test_changed_mapping_forgets_the_pools_of_paths_gone(self):
        m = mapping(self.ports)
        self.h.proxy.balancers.pool("svc1", entry_from_mapping(m).service.router.match("/api"))
        moved = pb.ProxyMapping()
        moved.CopyFrom(m)
        for pm in moved.path:
            pm.path = "/v2"
        self.checks.mapping_changed(m, m)  # same paths: the pool (and its health) stays
        self.assertIsNotNone(self.h.proxy.balancers.get("svc1", "/api"))
        self.checks.mapping_changed(m, moved)
        self.assertIsNone(self.h.proxy.balancers.get("svc1", "/api"))
        self.assertEqual(self.checks.checks, {})


class HealthCheckGuardTests(unittest.TestCase):
    """An active health check is a dial like any other: a ``direct_upstream``
    target is checked only through the operator's allow-list, for the
    mapping's own account (a tenant cannot probe the gateway host with it)."""

    def setUp(self) -> None:
        from nbgateway.dial.direct import DirectDialer
        from nbgateway.dial.guard import DialPolicy, parse_allow_list

        self.clock = task.Clock()
        self.h = ProxyHarness(clock=self.clock)
        self.addCleanup(self.h.close)
        guarded = DirectDialer(self.h.direct.reactor,
                               policy=DialPolicy(parse_allow_list("127.0.0.0/8@acc-ok")))
        self.h.dialer_for = lambda account, direct: (  # type: ignore[method-assign]
            guarded.for_account(account) if direct else self.h.tunnel)
        self.h.proxy.dialer_for = self.h.dialer_for
        self.res = Health()
        port, _site = listen_site(self.res)
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        self.checks = HealthChecks(self.h.proxy, self.clock)
        self.addCleanup(self.checks.stop)

    def direct_mapping(self, sid: str, account: str) -> pb.ProxyMapping:
        m = pb.ProxyMapping(id=sid, account_id=account, domain=f"{sid}.example")
        pm = m.path.add(path="/", target=f"http://127.0.0.1:{self.port}/")
        pm.options.direct_upstream = True
        pm.options.nbgw_balancing.CopyFrom(pb.NbgwBalancing(
            health_path="/probe", max_failures=1,
            health_interval=duration_pb2.Duration(seconds=5)))
        return m

    @defer.inlineCallbacks
    def test_direct_checks_go_through_the_guard_of_the_mappings_account(self):
        self.checks.mapping_added(self.direct_mapping("other", "acc-other"))
        other = self.h.proxy.balancers.get("other", "/").states[0]
        yield wait_for(lambda: not self.checks.checks["other"][0].busy)
        self.assertEqual(self.res.paths, [])  # refused before any connection
        # the gateway's own refusal is no verdict on the target
        self.assertEqual(other.check_failures, 0)
        self.checks.mapping_added(self.direct_mapping("ok", "acc-ok"))
        yield wait_for(lambda: self.res.paths == [b"/probe"])
        ok = self.h.proxy.balancers.get("ok", "/").states[0]
        self.assertEqual(ok.check_failures, 0)
