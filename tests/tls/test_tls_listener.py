"""TLS termination on a real 127.0.0.1 port: ``openssl s_client`` checks SNI
certificate selection and ALPN, ``curl --cacert <local CA>`` verifies a
fallback certificate end to end."""

from __future__ import annotations

from twisted.internet import defer, reactor, utils
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest
from twisted.web import resource, server

from nbgateway.tls.certstore import CertificateStore, LocalCA
from nbgateway.tls.contexts import SNIServerCreator

from ._certs import write_pair


class Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello over " + (b"tls" if request.isSecure() else b"plain")


@defer.inlineCallbacks
def s_client(port: int, *args: str):
    cmd = f"openssl s_client -connect 127.0.0.1:{port} {' '.join(args)} </dev/null 2>&1"
    out, _err, _code = yield utils.getProcessOutputAndValue("sh", ["-c", cmd], env={})
    return out.decode("latin-1")


class TLSListenerTests(unittest.TestCase):
    def setUp(self) -> None:
        tmp = self.mktemp()
        self.external = LocalCA(tmp + "/external", "external test CA")
        write_pair(self.external, tmp + "/certs", "svc", "svc.example")
        write_pair(self.external, tmp + "/wild", "wild", "*.wild.example")
        self.store = CertificateStore(tmp + "/certs", tmp + "/wild", tmp + "/data",
                                      default_name="gw.example")
        self.store.reload()
        self.creator = SNIServerCreator(self.store, default_name="gw.example")
        factory = TLSMemoryBIOFactory(self.creator, False, server.Site(Hello()))
        self.listener = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.listener.stopListening)
        self.port = self.listener.getHost().port

    @defer.inlineCallbacks
    def test_sni_selects_static_wildcard_and_fallback(self):
        out = yield s_client(self.port, "-servername", "svc.example")
        self.assertIn("CN = svc.example", out)
        self.assertIn("external test CA", out)
        out = yield s_client(self.port, "-servername", "a.wild.example")
        self.assertIn("CN = *.wild.example", out)
        out = yield s_client(self.port, "-servername", "other.example")
        self.assertIn("CN = other.example", out)
        self.assertIn("nbgateway local CA", out)
        out = yield s_client(self.port, "-noservername")
        self.assertIn("CN = gw.example", out)

    @defer.inlineCallbacks
    def test_alpn_h2_http11_and_tls12_minimum(self):
        out = yield s_client(self.port, "-servername", "svc.example", "-alpn", "h2,http/1.1")
        self.assertIn("ALPN protocol: h2", out)
        out = yield s_client(self.port, "-servername", "svc.example", "-alpn", "http/1.1")
        self.assertIn("ALPN protocol: http/1.1", out)
        out = yield s_client(self.port, "-servername", "svc.example", "-alpn", "spdy/3")
        self.assertIn("No ALPN negotiated", out)
        # TLS 1.1 offered by a client that allows it: the server refuses it
        out = yield s_client(self.port, "-servername", "svc.example", "-tls1_1",
                             "-cipher", "DEFAULT@SECLEVEL=0")
        self.assertIn("alert protocol version", out)

    @defer.inlineCallbacks
    def test_curl_trusts_fallback_via_local_ca(self):
        url = f"https://fallback.example:{self.port}/"
        out, err, code = yield utils.getProcessOutputAndValue("curl", [
            "-sS", "--max-time", "20", "--cacert", self.store.ca.cert_path,
            "--resolve", f"fallback.example:{self.port}:127.0.0.1", url], env={})
        self.assertEqual(code, 0, err)
        self.assertEqual(out, b"hello over tls")
        # the static certificate is not issued by the local CA: curl refuses it
        url = f"https://svc.example:{self.port}/"
        _out, _err, code = yield utils.getProcessOutputAndValue("curl", [
            "-sS", "--max-time", "20", "--cacert", self.store.ca.cert_path,
            "--resolve", f"svc.example:{self.port}:127.0.0.1", url], env={})
        self.assertEqual(code, 60)  # peer certificate cannot be authenticated
        self.assertGreaterEqual(self.creator.sni_seen, 2)
