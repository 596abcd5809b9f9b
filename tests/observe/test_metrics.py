"""/metrics content from real objects: a WireGuard device pair carrying a real
netstack TCP connection, a TunnelValidationCache over the fake management
client, the access logger; parsed with prometheus_client's own text parser."""

from __future__ import annotations

import ipaddress
import random

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.auth.tunnel import TunnelValidationCache
from nbgateway.interfaces import IManagementClient
from nbgateway.mgmt.fake import FakeManagementClient
from nbgateway.netstack.stack import Stack
from nbgateway.observe.accesslog import AccessLogger
from nbgateway.observe.health import HealthState
from nbgateway.observe.metrics import GatewayMetrics, InstrumentedClient
from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key, public_key
from nbgateway.wireguard.testing import MemoryNetwork, ipv4_packet
from tests.netstack.tcp_fakes import RecordingUser, listen_recording

A_ADDR, B_ADDR = ("192.0.2.1", 51820), ("192.0.2.2", 51820)


def scrape(metrics: GatewayMetrics) -> dict[tuple[str, tuple], float]:
    text = generate_latest(metrics.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples, name, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


class Tunnel:
    """Gateway device+stack (``b``) and a client device+stack (``a``) on a MemoryNetwork."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000.0)
        self.net = MemoryNetwork()
        ka, kb = generate_private_key(), generate_private_key()
        self.a = WireGuardDevice(ka, self.clock, rng=random.Random(1))
        self.b = WireGuardDevice(kb, self.clock, rng=random.Random(2))
        self.net.attach(self.a, A_ADDR)
        self.net.attach(self.b, B_ADDR)
        self.a.add_peer(public_key(kb), allowed_ips=["10.0.0.2/32"], endpoint=B_ADDR)
        self.b.add_peer(public_key(ka), allowed_ips=["10.0.0.1/32"])
        self.sa = Stack(self.a, self.clock, ["10.0.0.1"])
        self.sb = Stack(self.b, self.clock, ["10.0.0.2"])
        self.a.sink, self.b.sink = self.sa, self.sb

    def run_until(self, predicate, limit: int = 500) -> None:
        for _ in range(limit):
            self.net.pump()
            if predicate():
                return
            self.clock.advance(0.01)
        raise AssertionError("condition not reached")

    def connect(self):
        _listener, accepted = listen_recording(self.sb, 80)
        user = RecordingUser()
        conn = self.sa.tcp.connect(ipaddress.ip_address("10.0.0.2"), 80, user)
        self.run_until(lambda: user.established and accepted)
        return conn, user, accepted[0]


@pytest.fixture
def tunnel() -> Tunnel:
    return Tunnel()


def test_wireguard_and_tcp_metrics_match_live_counters(tunnel):
    metrics = GatewayMetrics()
    metrics.add_account("acc1", devices=[tunnel.b], stacks=[tunnel.sb])
    conn, user, server = tunnel.connect()
    payload = b"x" * 5000
    conn.send(b"hello", tunnel.clock.seconds())
    server.conn.send(payload, tunnel.clock.seconds())
    tunnel.run_until(lambda: len(user.data) == len(payload) and bytes(server.data) == b"hello")
    # a garbage datagram and a packet for an address the gateway does not own
    tunnel.b.datagramReceived(b"\x04\x00\x00\x00garbage", A_ADDR)
    tunnel.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b""))  # UDP, truncated
    tunnel.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"", proto=99))
    tunnel.net.pump()

    s = scrape(metrics)
    gw = tunnel.b
    peer = gw.peers[tunnel.a.public_key]
    assert gw.counters["handshake_completed"] == 1
    assert value(s, "nbgateway_wireguard_handshakes_total", result="completed") == 1
    assert value(s, "nbgateway_wireguard_handshake_messages_total",
                 message="initiation", direction="rx") == 1
    assert value(s, "nbgateway_wireguard_handshake_messages_total",
                 message="response", direction="tx") == 1
    assert value(s, "nbgateway_wireguard_packets_total", direction="rx") == gw.counters["data_rx"]
    assert value(s, "nbgateway_wireguard_packets_total", direction="tx") == gw.counters["data_tx"]
    assert value(s, "nbgateway_wireguard_bytes_total", direction="rx") == peer.rx_bytes > 0
    assert value(s, "nbgateway_wireguard_bytes_total", direction="tx") == peer.tx_bytes > 5000
    for reason, count in gw.counters.items():
        if reason.startswith("drop_"):
            assert value(s, "nbgateway_wireguard_drops_total", reason=reason[5:]) == count
    assert value(s, "nbgateway_wireguard_drops_total", reason="malformed") == 1
    assert value(s, "nbgateway_wireguard_peers") == 1
    assert value(s, "nbgateway_accounts") == 1

    ns = tunnel.sb.counters
    assert value(s, "nbgateway_tcp_connections_accepted_total") == ns["tcp_passive_opens"] == 1
    assert value(s, "nbgateway_tcp_active_connections") == len(tunnel.sb.tcp.conns) == 1
    assert value(s, "nbgateway_netstack_packets_total", direction="rx") == ns["rx_packets"]
    assert value(s, "nbgateway_netstack_packets_total", direction="tx") == ns["tx_packets"]
    for reason, count in ns.items():
        if reason.startswith("drop_"):
            assert value(s, "nbgateway_netstack_drops_total", reason=reason[5:]) == count
    assert value(s, "nbgateway_netstack_drops_total", reason="udp_truncated") == 1
    assert value(s, "nbgateway_netstack_drops_total", reason="unknown_protocol") == 1


def test_outgoing_connects_refused_at_the_connection_bound_are_exported(tunnel):
    import ipaddress

    from twisted.internet.error import ConnectError

    metrics = GatewayMetrics()
    metrics.add_account("acc1", devices=[tunnel.b], stacks=[tunnel.sb])
    tunnel.connect()
    assert value(scrape(metrics), "nbgateway_tcp_connect_limit_refusals_total") == 0
    tunnel.sb.tcp.max_connections = len(tunnel.sb.tcp.conns)
    with pytest.raises(ConnectError):
        tunnel.sb.tcp.connect(ipaddress.ip_address("10.0.0.1"), 80, object())
    assert value(scrape(metrics), "nbgateway_tcp_connect_limit_refusals_total") == 1


def test_totals_stay_monotonic_when_accounts_and_peers_go(tunnel):
    metrics = GatewayMetrics()
    metrics.add_account("acc1", devices=[tunnel.b], stacks=[tunnel.sb])
    tunnel.connect()
    before = scrape(metrics)
    rx = value(before, "nbgateway_wireguard_bytes_total", direction="rx")
    # more traffic after the scrape, then the account is torn down before the next one
    tunnel.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"y" * 100))
    tunnel.net.pump()
    peer_rx = tunnel.b.peers[tunnel.a.public_key].rx_bytes
    opens = tunnel.sb.counters["tcp_passive_opens"]
    metrics.remove_account("acc1")
    after = scrape(metrics)
    assert value(after, "nbgateway_wireguard_bytes_total", direction="rx") == peer_rx > rx
    assert value(after, "nbgateway_wireguard_handshakes_total", result="completed") == 1
    assert value(after, "nbgateway_tcp_connections_accepted_total") == opens
    assert value(after, "nbgateway_accounts") == 0
    assert value(after, "nbgateway_wireguard_peers") == 0
    assert value(after, "nbgateway_tcp_active_connections") == 0


def test_tunnel_cache_and_rpc_metrics():
    clock = Clock()
    fake = FakeManagementClient()
    fake.hold = True
    metrics = GatewayMetrics()
    client = InstrumentedClient(fake, metrics.rpc, now=clock.seconds)
    assert IManagementClient.providedBy(client)
    cache = TunnelValidationCache(client, clock)
    metrics.tunnel_cache = cache

    first = cache.validate("acc1", "100.64.0.5", "app.example.com")
    second = cache.validate("acc1", "100.64.0.5", "app.example.com")  # joins the RPC
    clock.advance(0.2)
    fake.held.pop().deferred.callback(
        pb.ValidateTunnelPeerResponse(valid=True, session_token="tok", user_id="u1"))
    assert first.called and second.called
    cache.validate("acc1", "100.64.0.5", "app.example.com")  # hit
    denied = cache.validate("acc1", "100.64.0.6", "app.example.com")
    fake.held.pop().deferred.callback(pb.ValidateTunnelPeerResponse(valid=False))
    cache.validate("acc1", "100.64.0.7", "app.example.com")
    clock.advance(cache.rpc_timeout + 1)  # the held RPC times out
    assert denied.called

    s = scrape(metrics)
    st = cache.stats
    assert (st.hits, st.misses, st.joins, st.denials, st.errors) == (1, 3, 1, 1, 1)
    assert value(s, "nbgateway_tunnel_validation_lookups_total", result="hit") == 1
    assert value(s, "nbgateway_tunnel_validation_lookups_total", result="miss") == 3
    assert value(s, "nbgateway_tunnel_validation_lookups_total", result="join") == 1
    assert value(s, "nbgateway_tunnel_validation_rpc_failures_total", result="denied") == 1
    assert value(s, "nbgateway_tunnel_validation_rpc_failures_total", result="error") == 1
    assert value(s, "nbgateway_tunnel_validation_cache_entries") == len(cache) == 1

    method = "validate_tunnel_peer"
    assert value(s, "nbgateway_management_rpc_duration_seconds_count", method=method) == 3
    assert value(s, "nbgateway_management_rpc_errors_total", method=method) == 1
    # 0.2 s (first), 0 s (denied), the timed-out one waited rpc_timeout + 1
    assert value(s, "nbgateway_management_rpc_duration_seconds_bucket", method=method,
                 le="0.25") == 2
    assert value(s, "nbgateway_management_rpc_duration_seconds_sum", method=method) \
        == pytest.approx(0.2 + cache.rpc_timeout + 1)


def test_instrumented_client_records_synchronous_raise():
    class Broken:
        def validate_session(self, domain, token):
            raise RuntimeError("boom")

        name = "not an rpc"

    metrics = GatewayMetrics()
    client = InstrumentedClient(Broken(), metrics.rpc)
    with pytest.raises(RuntimeError):
        client.validate_session("d", "t")
    assert client.name == "not an rpc"
    assert metrics.rpc.errors["validate_session"] == 1


def test_requests_access_log_and_health_gauges():
    clock = Clock()
    metrics = GatewayMetrics()
    r = metrics.requests
    for status, seconds in ((200, 0.003), (200, 0.2), (403, 0.001), (502, 3.0)):
        r.started()
        r.finished(status, seconds)
    r.started()  # one still in flight

    fake = FakeManagementClient()
    fake.hold = True
    logger = AccessLogger(fake, clock, max_queue=2)
    for _ in range(5):
        logger.log(pb.AccessLog(log_id="x"))
    metrics.access_log = logger
    health = HealthState()
    health.set_management_connected(True)
    metrics.health = health

    s = scrape(metrics)
    assert value(s, "nbgateway_http_requests_total", code="200") == 2
    assert value(s, "nbgateway_http_requests_total", code="403") == 1
    assert value(s, "nbgateway_http_requests_total", code="502") == 1
    assert value(s, "nbgateway_http_active_requests") == 1
    assert value(s, "nbgateway_http_request_duration_seconds_count") == 4
    assert value(s, "nbgateway_http_request_duration_seconds_bucket", le="0.005") == 2
    assert value(s, "nbgateway_http_request_duration_seconds_bucket", le="2.5") == 3
    assert value(s, "nbgateway_http_request_duration_seconds_bucket", le="+Inf") == 4
    assert value(s, "nbgateway_access_log_entries_total", result="dropped") \
        == logger.stats.dropped > 0
    assert value(s, "nbgateway_access_log_entries_total", result="queued") == logger.stats.queued
    assert value(s, "nbgateway_management_connected") == 1
    assert value(s, "nbgateway_initial_sync_complete") == 0


def test_registry_is_private():
    from prometheus_client import REGISTRY

    m1, m2 = GatewayMetrics(), GatewayMetrics()
    m1.requests.record(200, 0.1)
    assert b"nbgateway_http_requests_total" not in generate_latest(REGISTRY)
    assert value(scrape(m1), "nbgateway_http_requests_total", code="200") == 1
    assert ("nbgateway_http_requests_total", (("code", "200"),)) not in scrape(m2)


def test_device_mux_drops_and_udp_errors():
    from nbgateway.wireguard.mux import DeviceMux

    clock = Clock()
    mux = DeviceMux()
    dev = mux.add(WireGuardDevice(generate_private_key(), clock,
                                  index_registry=mux.registry))
    metrics = GatewayMetrics()
    metrics.mux = mux
    metrics.add_account("acc1", devices=[dev])
    mux.datagramReceived(b"\x04\x00", A_ADDR)  # too short
    mux.datagramReceived(b"\x04\x00\x00\x00" + b"\x99" * 28, A_ADDR)  # unknown receiver index
    s = scrape(metrics)
    assert value(s, "nbgateway_wireguard_udp_errors_total", kind="send_error") == 0
    # real socket errors through the production UDP adapter, not counters set by hand
    from twisted.internet import reactor

    from nbgateway.wireguard import udp

    port = udp.listen(reactor, mux, 0, interface="127.0.0.1")
    try:
        port.protocol.sendDatagram(b"x" * 70_000, ("127.0.0.1", port.getHost().port))  # EMSGSIZE
        port.protocol.sendDatagram(b"x", ("127.0.0.1", 0))  # EINVAL
        port.protocol.connectionRefused()  # as the port reports ECONNREFUSED
    finally:
        port.connectionLost()
    s = scrape(metrics)
    assert value(s, "nbgateway_wireguard_drops_total", reason="mux_malformed") == 1
    assert value(s, "nbgateway_wireguard_drops_total", reason="mux_unroutable") == 1
    assert value(s, "nbgateway_wireguard_udp_errors_total", kind="refused") == 1
    assert value(s, "nbgateway_wireguard_udp_errors_total", kind="send_error") == 2


def test_request_stats_fold_matches_direct_counting():
    """The plain-int status counts and inline bucket updates of
    ``RequestStats.finished`` give the /metrics figures a Counter and
    ``_Histogram.observe`` give; reading folds without consuming (twice the
    same), and requests recorded between scrapes add up exactly."""
    from collections import Counter

    from nbgateway.observe.metrics import LATENCY_BUCKETS, _Histogram

    rng = random.Random(20)
    metrics = GatewayMetrics()
    r = metrics.requests
    want_codes: Counter[int] = Counter()
    want_hist = _Histogram()
    for _batch in range(3):
        for _ in range(400):
            status = rng.choice((200, 200, 200, 204, 301, 404, 502, 504))
            # bucket bounds themselves, just above them, and in between
            seconds = rng.choice((rng.choice(LATENCY_BUCKETS), rng.uniform(0.0, 90.0),
                                  rng.choice(LATENCY_BUCKETS) + 1e-9))
            r.active += 1
            r.finished(status, seconds)
            want_codes[status] += 1
            want_hist.observe(seconds)
        r.record(418, 0.02)  # the non-hot entry point counts into the same figures
        want_codes[418] += 1
        want_hist.observe(0.02)
        for _ in range(2):  # idempotent: a read folds, it does not move counts
            assert r.by_status == want_codes
            s = scrape(metrics)
            for code, n in want_codes.items():
                assert value(s, "nbgateway_http_requests_total", code=str(code)) == n
            assert sum(v for (name, _), v in s.items()
                       if name == "nbgateway_http_requests_total") == sum(want_codes.values())
            for le, n in want_hist.cumulative():
                assert value(s, "nbgateway_http_request_duration_seconds_bucket", le=le) == n
            assert value(s, "nbgateway_http_request_duration_seconds_sum") \
                == pytest.approx(want_hist.total)
            assert value(s, "nbgateway_http_active_requests") == 0
    r.by_status[200] += 5  # a copy: writing to it changes nothing
    assert r.by_status == want_codes


def test_labelled_counter_samples_keep_their_order():
    """The one-label counter families list their samples in a fixed order
    (drops: the device's reasons sorted, then the mux's; rx before tx), so a
    scrape's text is stable from one scrape to the next."""
    from collections import Counter
    from types import SimpleNamespace

    metrics = GatewayMetrics()
    wg = Counter({"drop_b": 2, "drop_a": 1, "data_rx": 5, "data_tx": 6, "udp_refused": 1})
    ns = Counter({"drop_y": 4, "drop_x": 3, "tcp_rst_received": 7, "tcp_rst_sent": 8,
                  "tcp_rto": 9, "tcp_fast_retransmits": 10})
    metrics.wireguard_counters = lambda: Counter(wg)
    metrics.netstack_counters = lambda: Counter(ns)
    metrics.mux = SimpleNamespace(counters={"mux_drop_q": 7, "mux_drop_a": 8, "udp_refused": 2})
    metrics.requests.record(502, 0.1)
    metrics.requests.record(200, 0.1)
    text = generate_latest(metrics.registry).decode()
    order: dict[str, list[tuple[tuple, float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_total"):
                order.setdefault(sample.name[len("nbgateway_"):-len("_total")], []).append(
                    (tuple(sample.labels.values()), sample.value))
    assert order["wireguard_drops"] == [(("a",), 1), (("b",), 2), (("mux_a",), 8),
                                        (("mux_q",), 7)]
    assert order["wireguard_udp_errors"] == [(("send_error",), 0), (("refused",), 3)]
    assert order["wireguard_packets"] == [(("rx",), 5), (("tx",), 6)]
    assert order["netstack_drops"] == [(("x",), 3), (("y",), 4)]
    assert order["tcp_resets"] == [(("rx",), 7), (("tx",), 8)]
    assert order["tcp_retransmits"] == [(("timeout",), 9), (("fast",), 10)]
    assert order["http_requests"] == [(("200",), 1), (("502",), 1)]
