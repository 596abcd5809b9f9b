"""mTLS at the gateway level, over real loopback TCP with real TLS clients:
the SNI context of a service with a client CA asks for a certificate and
names the CA in the CertificateRequest (pyOpenSSL client); curl with a
certificate from the service CA gets 200 with the identity stamped (HTTP/1.1
and HTTP/2), the access log says ``mtls``; another CA's certificate, no
certificate, an unmapped or expired one get the 401 certificate page; a
service with a password too falls through to its login page; a name without
a client CA asks for nothing; a CA removed by a mapping update refuses its
certificates on the next connection and on an already open one."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json

import jwt
from OpenSSL import SSL
from twisted.internet import defer, reactor
from twisted.internet.interfaces import ISSLTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest
from zope.interface import implementer

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.auth.assertion import AssertionSigner
from nbgateway.auth.mtls import MtlsVerifier, tls_lookup
from nbgateway.dial.direct import DirectDialer
from nbgateway.dial.pool import UpstreamPools
from nbgateway.http import clientcert
from nbgateway.http.site import GatewayResource
from nbgateway.management.store._secrets import generate_session_keys
from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.proxy.streaming import ProxySite
from nbgateway.routes.service import entry_from_mapping
from nbgateway.tls.certstore import CertificateStore
from nbgateway.tls.contexts import SNIServerCreator, sni_visibility
from tests.auth.test_assertion import _keypair
from tests.proxy._harness import EchoUpstream, curl, listen_site
from tests.tls._clientcerts import NOW, IssuingCA

_PRIV, PUB = generate_session_keys()
ALICE = pb.NbgwClientCertUser(match="alice@example.com", user_id="u-alice",
                              email="alice@example.com", group_ids=["g1"],
                              group_names=["eng"])
BOT = pb.NbgwClientCertUser(match="build-bot", user_id="u-bot", email="bot@example.com")


@implementer(ISSLTransport)
class _Handle:
    """The TLS transport surface clientcert reads (``getHandle``)."""

    def __init__(self, conn):
        self.conn = conn

    def getHandle(self):
        return self.conn


class Log:
    def __init__(self):
        self.entries = []

    def log(self, entry):
        self.entries.append(entry)


class MtlsGatewayTests(unittest.TestCase):
    def setUp(self):
        tmp = self.mktemp()
        self.ca = IssuingCA("Service Client CA")
        self.other = IssuingCA("Other CA")
        self.store = CertificateStore(None, None, tmp + "/data", default_name="gw.example")
        self.store.reload()
        self.upstream = EchoUpstream()
        self.up_port, _ = listen_site(self.upstream)
        self.addCleanup(self.up_port.stopListening)
        up = self.up_port.getHost().port
        self.entries = {}
        self.install(self.mapping(up, "mtls.example", self.ca.pem))
        self.install(self.mapping(up, "mix.example", self.ca.pem, password=True))
        self.install(self.mapping(up, "plain.example", ""))
        self.pools = UpstreamPools(reactor)
        self.proxy = ReverseProxy(reactor, self.pools, lambda acct, direct: DirectDialer(reactor))
        self.verifier = MtlsVerifier()
        self.log = Log()
        self.resource = GatewayResource(lookup=self.entries.get, proxy=self.proxy, gate=None,
                                        access_log=self.log, mtls=self.verifier)
        self.creator = SNIServerCreator(self.store, "gw.example",
                                        visible=sni_visibility(self.entries.get),
                                        client_auth=tls_lookup(self.entries.get, self.verifier))
        self.port = reactor.listenTCP(
            0, TLSMemoryBIOFactory(self.creator, False, ProxySite(self.resource)),
            interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self.pools.close_account, "acct")
        self.dir = tmp + "/client"
        self.alice = self.ca.issue("Alice", emails=("alice@example.com",)).write(
            self.dir, "alice")

    def mapping(self, port, domain, ca_pem, **auth):
        return pb.ProxyMapping(
            id=f"svc-{domain}", account_id="acct", domain=domain,
            path=[pb.PathMapping(path="/", target=f"http://127.0.0.1:{port}/",
                                 options=pb.PathTargetOptions(direct_upstream=True))],
            auth=pb.Authentication(session_key=PUB, max_session_age_seconds=3600, **auth),
            nbgw_client_ca_pem=ca_pem, nbgw_client_cert_users=[ALICE, BOT] if ca_pem else [])

    def install(self, m):
        self.entries[m.domain] = entry_from_mapping(m)

    def https(self, host, *extra, cert=None, path="/whoami"):
        port = self.port.getHost().port
        args = ["--cacert", self.store.ca.cert_path, "--resolve", f"{host}:{port}:127.0.0.1"]
        if cert is not None:
            args += ["--cert", cert[0], "--key", cert[1]]
        return curl(*args, *extra, f"https://{host}:{port}{path}")

    # -- the handshake -----------------------------------------------------------

    def handshake(self, sni, cert=None):
        """A pyOpenSSL client handshake in memory; (CA names the server
        asked for, server connection)."""
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        if cert is not None:
            ctx.use_certificate_file(cert[0])
            ctx.use_privatekey_file(cert[1])
        client = SSL.Connection(ctx, None)
        client.set_tlsext_host_name(sni.encode())
        client.set_connect_state()
        server = self.creator.serverConnectionForTLS(None)
        server.set_accept_state()
        for _ in range(20):
            for a, b in ((client, server), (server, client)):
                with contextlib.suppress(SSL.WantReadError):
                    a.do_handshake()
                with contextlib.suppress(SSL.WantReadError):
                    b.bio_write(a.bio_read(65536))
        names = [n.CN for n in client.get_client_ca_list()]
        return names, server

    def test_certificate_request_names_the_service_ca_only_on_its_name(self):
        names, server = self.handshake("mtls.example", self.alice)
        self.assertEqual(names, ["Service Client CA"])
        self.assertEqual(server.get_peer_certificate().to_cryptography().subject
                         .rfc4514_string(), "CN=Alice")
        names, server = self.handshake("plain.example", self.alice)
        self.assertEqual(names, [])  # no CertificateRequest at all
        self.assertIsNone(server.get_peer_certificate())
        # no certificate: the handshake still completes (requested, not required)
        names, server = self.handshake("mtls.example")
        self.assertEqual(names, ["Service Client CA"])
        self.assertIsNone(server.get_peer_certificate())

    def test_renegotiation_is_refused(self):
        # the request layer reads the presented chain once per connection
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        ctx.use_certificate_file(self.alice[0])
        ctx.use_privatekey_file(self.alice[1])
        client = SSL.Connection(ctx, None)
        client.set_tlsext_host_name(b"mtls.example")
        client.set_connect_state()
        server = self.creator.serverConnectionForTLS(None)
        server.set_accept_state()

        def pump():
            for a, b in ((client, server), (server, client)):
                with contextlib.suppress(SSL.WantReadError):
                    a.do_handshake()
                with contextlib.suppress(SSL.WantReadError):
                    b.bio_write(a.bio_read(65536))
            with contextlib.suppress(SSL.WantReadError):
                server.recv(10)
            with contextlib.suppress(SSL.WantReadError):
                client.bio_write(server.bio_read(65536))
            with contextlib.suppress(SSL.WantReadError):
                client.recv(10)

        for _ in range(10):
            pump()
        self.assertEqual(server.get_protocol_version_name(), "TLSv1.2")
        self.assertIsNotNone(server.get_peer_certificate())
        self.assertTrue(client.renegotiate())
        with self.assertRaisesRegex(SSL.Error, "no renegotiation"):
            for _ in range(10):
                pump()

    def test_plain_http_and_per_connection_memo(self):
        entry = self.entries["mtls.example"]

        class Plain:
            channel = None

            def isSecure(self):
                return False

        self.assertEqual(clientcert.judge(self.verifier, entry, Plain(), NOW.timestamp()),
                         (None, "client certificates need HTTPS"))
        # what a TLS connection's client presented is digested once per connection
        _names, server = self.handshake("mtls.example", self.alice)

        class OverTLS:
            def __init__(self, conn):
                self.channel = type("C", (), {"transport": _Handle(conn)})()

        first = clientcert.peer_chain(OverTLS(server))
        self.assertIs(clientcert.peer_chain(OverTLS(server)), first)
        ident, err = clientcert.judge(self.verifier, entry, OverTLS(server), NOW.timestamp())
        self.assertEqual((ident.user_id, err), ("u-alice", ""))

    # -- through the gateway ----------------------------------------------------

    @defer.inlineCallbacks
    def test_service_ca_certificate_is_200_with_identity_http11_and_h2(self):
        for proto in ("--http1.1", "--http2"):
            status, head, body = yield self.https("mtls.example", proto, "-H",
                                                  "X-NetBird-User: mallory", cert=self.alice)
            self.assertEqual(status, 200, head)
            seen = json.loads(body)["headers"]
            self.assertEqual(seen["x-netbird-user"], ["alice@example.com"])
            self.assertEqual(seen["x-netbird-groups"], ["eng"])
        self.assertTrue(head.startswith("HTTP/2 200"), head)
        self.assertEqual([(e.auth_mechanism, e.user_id, e.response_code)
                          for e in self.log.entries],
                         [("mtls", "u-alice", 200)] * 2)

    @defer.inlineCallbacks
    def test_identity_in_the_signed_assertion(self):
        settings, jwk = _keypair()
        entry = self.entries["mtls.example"]
        self.entries["mtls.example"] = dataclasses.replace(
            entry, service=dataclasses.replace(entry.service, assertion=settings))
        self.proxy.assertions = AssertionSigner(reactor)
        status, _, body = yield self.https("mtls.example", cert=self.alice)
        self.assertEqual(status, 200)
        [token] = json.loads(body)["headers"]["x-netbird-jwt-assertion"]
        claims = jwt.decode(token, jwk, algorithms=["EdDSA"], audience="mtls.example")
        self.assertEqual((claims["sub"], claims["email"], claims["method"], claims["groups"]),
                         ("u-alice", "alice@example.com", "mtls", ["g1"]))

    @defer.inlineCallbacks
    def test_connection_opened_for_another_name_is_421(self):
        # e.g. a browser reusing an HTTP/2 connection of another name under
        # a wildcard certificate: no certificate was requested on it
        port = self.port.getHost().port
        for proto in ("--http1.1", "--http2"):
            status, head, body = yield curl(
                "--cacert", self.store.ca.cert_path,
                "--resolve", f"plain.example:{port}:127.0.0.1", proto,
                "-H", "Host: mtls.example", f"https://plain.example:{port}/x")
            self.assertEqual(status, 421, head)
            self.assertIn(b"not opened for this service's name", body)
        # with a certificate on such a connection: none was requested, same answer
        status, _, _ = yield curl(
            "--cacert", self.store.ca.cert_path, "--cert", self.alice[0], "--key",
            self.alice[1], "--resolve", f"plain.example:{port}:127.0.0.1",
            "-H", "Host: mtls.example", f"https://plain.example:{port}/x")
        self.assertEqual(status, 421)
        self.assertEqual(self.upstream.seen, [])

    @defer.inlineCallbacks
    def test_common_name_maps_too(self):
        bot = self.ca.issue("build-bot").write(self.dir, "bot")
        status, _, body = yield self.https("mtls.example", cert=bot)
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["headers"]["x-netbird-user"], ["bot@example.com"])

    @defer.inlineCallbacks
    def test_refusals_are_the_401_certificate_page(self):
        foreign = self.other.issue("Alice", emails=("alice@example.com",)).write(
            self.dir, "foreign")
        unmapped = self.ca.issue("Mallory", emails=("mallory@example.com",)).write(
            self.dir, "mallory")
        expired = self.ca.issue("Alice", emails=("alice@example.com",),
                                not_before=NOW - dt.timedelta(days=3),
                                not_after=NOW - dt.timedelta(days=1)).write(self.dir, "old")
        cases = [(None, "no client certificate was presented"),
                 (foreign, "certificate not accepted"),
                 (unmapped, "&#x27;mallory@example.com&#x27; is not mapped to a user"),
                 (expired, "certificate has expired")]
        for cert, reason in cases:
            for proto in ("--http1.1", "--http2"):
                status, head, body = yield self.https("mtls.example", proto, cert=cert)
                self.assertEqual(status, 401, (cert, head))
                page = body.decode()
                self.assertIn("<h1>Client certificate required</h1>", page)
                self.assertIn(reason, page)
                self.assertNotIn("<form", page)
                self.assertIn("content-security-policy", head.lower())
        self.assertEqual(self.upstream.seen, [])
        self.assertEqual({e.auth_mechanism for e in self.log.entries}, {"mtls"})

    @defer.inlineCallbacks
    def test_other_schemes_fall_through(self):
        foreign = self.other.issue("x").write(self.dir, "foreign")
        for cert in (None, foreign):
            status, _head, body = yield self.https("mix.example", cert=cert)
            self.assertEqual(status, 401)
            self.assertIn(b'name="password"', body)  # the login page, not the mTLS page
        status, _, body = yield self.https("mix.example", cert=self.alice)
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["headers"]["x-netbird-user"], ["alice@example.com"])

    @defer.inlineCallbacks
    def test_ca_removed_by_a_mapping_update_refuses_its_certificates(self):
        status, _, _ = yield self.https("mtls.example", cert=self.alice)
        self.assertEqual(status, 200)
        up = self.up_port.getHost().port
        self.install(self.mapping(up, "mtls.example", self.other.pem))
        status, _, body = yield self.https("mtls.example", cert=self.alice)
        self.assertEqual(status, 401)
        self.assertIn(b"certificate not accepted", body)

    @defer.inlineCallbacks
    def test_open_connection_is_rejudged_per_request(self):
        # two requests on one HTTP/1.1 connection; the CA changes in between
        port = self.port.getHost().port
        url = f"https://mtls.example:{port}/a"
        up = self.up_port.getHost().port
        original = self.upstream.render

        def render(request):
            out = original(request)
            if len(self.upstream.seen) == 1:
                self.install(self.mapping(up, "mtls.example", self.other.pem))
            return out

        self.upstream.render = render
        _status, head, _ = yield curl(
            "-v", "--cacert", self.store.ca.cert_path,
            "--resolve", f"mtls.example:{port}:127.0.0.1",
            "--cert", self.alice[0], "--key", self.alice[1], "--http1.1", url, url)
        self.assertIn("Re-using existing connection", head)  # one TLS connection
        statuses = [ln.split()[1] for ln in head.splitlines() if ln.startswith("HTTP/1.1 ")]
        self.assertEqual(statuses, ["200", "401"], head)

