"""Review 14 (sec14): the shared public listener between hostile tenants,
over real TLS (the gateway's local CA, SNI-selected certificates) and real
loopback TCP.  Pins, each a behaviour that holds on main:

* routing and protection follow the request's Host / ``:authority``, never
  the TLS server name: a connection opened for tenant A's open service that
  asks for tenant B's PIN-protected one gets B's login page (HTTP/1.1 and
  HTTP/2), a private name gets 403, and nothing reaches an upstream;
* a kept-alive HTTP/1.1 connection and one HTTP/2 connection (coalescing)
  are judged per request: a second request for another host gets that
  host's protection, whatever the first one got;
* an absolute-form target is routed by its authority, overriding the Host;
* HTTP/2 ``:authority`` and ``Host`` that disagree end the connection
  (PROTOCOL_ERROR) before any routing;
* host spellings (case, trailing dot, port) reach the same service and the
  same protection, and B's cookie works under every spelling of B;
* a session cookie never crosses services: tenant A's valid cookie, a token
  for B's host signed with A's key, or B's own token replayed on A's host.
"""

from __future__ import annotations

import json
import socket
import ssl

import h2.config
import h2.connection
import h2.events
from twisted.internet import defer, reactor, threads
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.dial.direct import DirectDialer
from nbgateway.dial.pool import UpstreamPools
from nbgateway.http.site import GatewayResource
from nbgateway.management import sessionjwt
from nbgateway.management.store._secrets import generate_session_keys
from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.proxy.streaming import ProxySite
from nbgateway.routes.service import entry_from_mapping
from nbgateway.tls.certstore import CertificateStore
from nbgateway.tls.contexts import SNIServerCreator, sni_visibility
from tests.proxy._harness import EchoUpstream, curl, listen_site

A_PRIV, A_PUB = generate_session_keys()  # tenant A's service key
B_PRIV, B_PUB = generate_session_keys()  # tenant B's service key


def _mapping(port: int, domain: str, account: str, key: str, *, private: bool = False,
             **auth: object) -> pb.ProxyMapping:
    return pb.ProxyMapping(
        id=f"svc-{domain}", account_id=account, domain=domain, private=private,
        path=[pb.PathMapping(path="/", target=f"http://127.0.0.1:{port}/",
                             options=pb.PathTargetOptions(direct_upstream=True))],
        auth=pb.Authentication(session_key=key, max_session_age_seconds=3600, **auth))


def _tls_client(cafile: str, alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(alpn)
    return ctx


def _h1_exchange(port: int, cafile: str, sni: str, requests: list[bytes]) -> list[bytes]:
    """Blocking (run in a thread): one TLS connection opened for ``sni``,
    the requests sent one after the other on it, each answer read whole
    (Content-Length framed, as the gateway's answers here are)."""
    ctx = _tls_client(cafile, ["http/1.1"])
    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=sni) as tls:
        buf = b""
        for req in requests:
            tls.sendall(req)
            while b"\r\n\r\n" not in buf:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                buf += chunk
            head, _, rest = buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            while len(rest) < length:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                rest += chunk
            answers.append(head + b"\r\n\r\n" + rest[:length])
            buf = rest[length:]
    return answers


def _h2_exchange(port: int, cafile: str, sni: str,
                 streams: list[list[tuple[str, str]]]) -> dict[str, object]:
    """Blocking (run in a thread): one HTTP/2 connection opened for ``sni``;
    each header list sent as its own GET stream, one after the other.
    Returns {stream index: status or 'reset'} plus 'goaway' (error code)."""
    ctx = _tls_client(cafile, ["h2"])
    out: dict[str, object] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=sni) as tls:
        assert tls.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        conn.initiate_connection()
        tls.sendall(conn.data_to_send())
        for i, headers in enumerate(streams):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, headers, end_stream=True)
            tls.sendall(conn.data_to_send())
            done = False
            while not done:
                try:
                    data = tls.recv(65536)
                except (TimeoutError, ssl.SSLError, OSError):
                    data = b""
                if not data:
                    out.setdefault(str(i), "closed")
                    return out
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                        out[str(i)] = int(dict(ev.headers)[b":status"])
                    elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                        done = True
                    elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                        out[str(i)] = "reset"
                        done = True
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        out["goaway"] = int(ev.error_code)
                        out.setdefault(str(i), "closed")
                        return out
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length,
                                                       ev.stream_id)
                pending = conn.data_to_send()
                if pending:
                    tls.sendall(pending)
    return out


def _get(host: str, extra: str = "", target: str = "/") -> bytes:
    return (f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}"
            "Content-Length: 0\r\n\r\n").encode()


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


class SharedListenerTests(unittest.TestCase):
    """Tenant A (account ``tenant-a``): ``a.shared.example`` open and
    ``a2.shared.example`` PIN-protected.  Tenant B (``tenant-b``):
    ``b.shared.example`` PIN-protected and ``priv.shared.example`` private."""

    def setUp(self):
        tmp = self.mktemp()
        self.store = CertificateStore(None, None, tmp + "/data", default_name="gw.example")
        self.store.reload()
        self.upstream = EchoUpstream()
        self.up_port, _ = listen_site(self.upstream)
        self.addCleanup(self.up_port.stopListening)
        up = self.up_port.getHost().port
        self.entries = {m.domain: entry_from_mapping(m) for m in (
            _mapping(up, "a.shared.example", "tenant-a", A_PUB),
            _mapping(up, "a2.shared.example", "tenant-a", A_PUB, pin=True),
            _mapping(up, "b.shared.example", "tenant-b", B_PUB, pin=True),
            _mapping(up, "priv.shared.example", "tenant-b", B_PUB, private=True),
        )}
        self.pools = UpstreamPools(reactor)
        self.proxy = ReverseProxy(reactor, self.pools, lambda acct, direct: DirectDialer(reactor))
        self.resource = GatewayResource(lookup=self.entries.get, proxy=self.proxy, gate=None)
        creator = SNIServerCreator(self.store, "gw.example",
                                   visible=sni_visibility(self.entries.get))
        self.port = reactor.listenTCP(
            0, TLSMemoryBIOFactory(creator, False, ProxySite(self.resource)),
            interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self.pools.close_account, "tenant-a")
        self.addCleanup(self.pools.close_account, "tenant-b")

    def h1(self, sni, requests):
        return threads.deferToThread(_h1_exchange, self.port.getHost().port,
                                     self.store.ca.cert_path, sni, requests)

    def h2(self, sni, streams):
        return threads.deferToThread(_h2_exchange, self.port.getHost().port,
                                     self.store.ca.cert_path, sni, streams)

    @staticmethod
    def h2_get(authority, *extra):
        return [(":method", "GET"), (":scheme", "https"), (":authority", authority),
                (":path", "/"), *extra]

    # -- SNI of one tenant, Host of another --------------------------------------

    @defer.inlineCallbacks
    def test_sni_of_a_open_service_host_of_b_gets_bs_login_http11(self):
        [answer] = yield self.h1("a.shared.example", [_get("b.shared.example")])
        self.assertEqual(_status(answer), 401, answer[:300])
        self.assertIn(b"Sign in to b.shared.example", answer)
        self.assertEqual(self.upstream.seen, [])

    @defer.inlineCallbacks
    def test_sni_of_a_open_service_authority_of_b_gets_bs_login_http2(self):
        port = self.port.getHost().port
        status, head, body = yield curl(
            "--cacert", self.store.ca.cert_path, "--http2",
            "--resolve", f"a.shared.example:{port}:127.0.0.1",
            "-H", "Host: b.shared.example", f"https://a.shared.example:{port}/")
        self.assertTrue(head.startswith("HTTP/2 401"), head)
        self.assertEqual(status, 401)
        self.assertIn(b"Sign in to b.shared.example", body)
        self.assertEqual(self.upstream.seen, [])

    @defer.inlineCallbacks
    def test_private_name_on_the_public_listener_is_403_under_any_sni(self):
        for sni in ("a.shared.example", "gw.example"):
            [answer] = yield self.h1(sni, [_get("priv.shared.example")])
            self.assertEqual(_status(answer), 403, answer[:200])
        self.assertEqual(self.upstream.seen, [])

    # -- one connection, many hosts -------------------------------------------------

    @defer.inlineCallbacks
    def test_kept_alive_connection_is_judged_per_request(self):
        answers = yield self.h1("a.shared.example", [
            _get("a.shared.example"),           # open: forwarded
            _get("b.shared.example"),           # B's PIN: login page
            _get("priv.shared.example"),        # private: 403
            _get("a.shared.example", target="/again"),
        ])
        self.assertEqual([_status(a) for a in answers], [200, 401, 403, 200])
        self.assertEqual([s["uri"] for s in self.upstream.seen], ["/", "/again"])
        self.assertEqual({s["headers"]["x-forwarded-host"][0] for s in self.upstream.seen},
                         {"a.shared.example"})

    @defer.inlineCallbacks
    def test_http2_coalesced_streams_are_judged_per_stream(self):
        # a browser may reuse one HTTP/2 connection for every name a
        # certificate covers: each stream's :authority decides
        out = yield self.h2("a.shared.example", [
            self.h2_get("a.shared.example"),
            self.h2_get("b.shared.example"),
            self.h2_get("priv.shared.example"),
            self.h2_get("a.shared.example"),
        ])
        self.assertEqual([out[str(i)] for i in range(4)], [200, 401, 403, 200])
        self.assertEqual(len(self.upstream.seen), 2)

    @defer.inlineCallbacks
    def test_http2_authority_and_host_that_disagree_end_the_connection(self):
        for authority, host in (("a.shared.example", "b.shared.example"),
                                ("b.shared.example", "a.shared.example"),
                                ("a.shared.example", "A.shared.example")):
            out = yield self.h2("a.shared.example",
                                [self.h2_get(authority, ("host", host))])
            self.assertEqual(out.get("goaway"), 1, out)  # PROTOCOL_ERROR
            self.assertNotIn(out["0"], (200, 401, 403), out)
        # a Host alone (no :authority) routes like :authority
        out = yield self.h2("a.shared.example", [[
            (":method", "GET"), (":scheme", "https"), (":path", "/"),
            ("host", "b.shared.example")]])
        self.assertEqual(out["0"], 401, out)
        self.assertEqual(self.upstream.seen, [])

    @defer.inlineCallbacks
    def test_absolute_form_target_overrides_the_host_header(self):
        answers = yield self.h1("a.shared.example", [
            _get("a.shared.example", target="https://b.shared.example/x"),
        ])
        self.assertEqual(_status(answers[0]), 401)
        self.assertIn(b"Sign in to b.shared.example", answers[0])
        answers = yield self.h1("a.shared.example", [
            _get("a.shared.example", target="http://priv.shared.example/"),
        ])
        self.assertEqual(_status(answers[0]), 403)
        self.assertEqual(self.upstream.seen, [])

    # -- spellings -------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_host_spellings_reach_the_same_protection_and_cookie(self):
        spellings = ("B.SHARED.EXAMPLE", "b.shared.example.", "b.shared.example:443",
                     "B.Shared.Example.:8443")
        answers = yield self.h1("b.shared.example", [_get(h) for h in spellings])
        self.assertEqual([_status(a) for a in answers], [401] * len(spellings))
        token = sessionjwt.sign_session(B_PRIV, subject="pin-user", domain="b.shared.example",
                                        method="pin")
        cookie = f"Cookie: nb_session={token}\r\n"
        answers = yield self.h1("b.shared.example", [_get(h, cookie) for h in spellings])
        self.assertEqual([_status(a) for a in answers], [200] * len(spellings))
        seen = [s["headers"] for s in self.upstream.seen]
        self.assertEqual({h["x-netbird-user"][0] for h in seen}, {"pin-user"})
        self.assertTrue(all("cookie" not in h for h in seen))  # nb_session stays here

    # -- cookies never cross services -----------------------------------------------

    @defer.inlineCallbacks
    def test_session_cookies_never_cross_services_or_tenants(self):
        forged = [
            # tenant A's valid cookie for its own PIN service
            sessionjwt.sign_session(A_PRIV, subject="pin-user", domain="a2.shared.example",
                                    method="pin"),
            # B's audience, signed with A's service key (A knows its own key pair
            # only through management; the gateway must not care who signed)
            sessionjwt.sign_session(A_PRIV, subject="pin-user", domain="b.shared.example",
                                    method="pin"),
            # aud lists both hosts, signed by A
            _multi_aud(A_PRIV, ["a2.shared.example", "b.shared.example"]),
        ]
        for token in forged:
            [answer] = yield self.h1("b.shared.example",
                                     [_get("b.shared.example", f"Cookie: nb_session={token}\r\n")])
            self.assertEqual(_status(answer), 401, token)
        # B's own valid cookie replayed on tenant A's PIN service
        b_token = sessionjwt.sign_session(B_PRIV, subject="pin-user",
                                          domain="b.shared.example", method="pin")
        [answer] = yield self.h1("a2.shared.example",
                                 [_get("a2.shared.example", f"Cookie: nb_session={b_token}\r\n")])
        self.assertEqual(_status(answer), 401)
        self.assertEqual(self.upstream.seen, [])
        # and the genuine one still works (the refusals were the checks, not the setup)
        [answer] = yield self.h1("b.shared.example",
                                 [_get("b.shared.example", f"Cookie: nb_session={b_token}\r\n")])
        self.assertEqual(_status(answer), 200)
        self.assertEqual(json.loads(answer.split(b"\r\n\r\n", 1)[1])["headers"]
                         ["x-netbird-user"], ["pin-user"])


def _multi_aud(priv: str, audiences: list[str]) -> str:
    import time

    import jwt

    now = int(time.time())
    claims = {"iss": "netbird-management", "sub": "pin-user", "aud": audiences,
              "exp": now + 600, "nbf": now - 5, "iat": now - 5, "method": "pin"}
    return jwt.encode(claims, sessionjwt.load_private_key(priv), algorithm="EdDSA")
