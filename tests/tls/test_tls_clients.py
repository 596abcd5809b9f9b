"""Real TLS clients against the listeners' TLS stack on a 127.0.0.1 port
(:class:`~nbgateway.tls.dispatch.TLSOrPlainFactory` with the gateway's
:class:`~nbgateway.tls.contexts.SNIServerCreator`): ``curl`` with several
requests on one connection, Python's ``ssl`` with pipelined requests and a
close_notify, ``openssl s_client`` asking for a renegotiation; TLS 1.2
(AES-GCM, ChaCha20-Poly1305, a CBC suite) and TLS 1.3, the record path on
and off (``factory.records``), and each connection checked to be on the
record path when it is switched on."""

from __future__ import annotations

import socket
import ssl

from twisted.internet import defer, protocol, reactor, threads, utils
from twisted.trial import unittest
from twisted.web import resource, server

from nbgateway.tls.certstore import CertificateStore
from nbgateway.tls.contexts import SNIServerCreator
from nbgateway.tls.dispatch import TLSOrPlainFactory

NAME = "gw.example"


class Hello(resource.Resource):
    """Answers with the TLS version and whether the request came over the
    record path; keeps the same per connection."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, bool]] = []

    def render_GET(self, request):
        tls = request.channel.transport
        conn = tls.getHandle()
        seen = (conn.get_protocol_version_name(), tls._path is not None)
        self.seen.append(seen)
        return b"hello %s %d %s" % (seen[0].encode(), seen[1], request.path)


class _Listening:
    """A listener per call of :meth:`listen`.  A connection's first request
    can arrive in the read that completes the handshake (TLS 1.3: right
    behind the client's Finished) and is then read by Twisted's path before
    the record path starts: only later requests are checked to be on it."""

    def listen(self, records_on: bool) -> int:
        tmp = self.mktemp()
        store = CertificateStore(None, None, tmp + "/data", default_name=NAME)
        self.hello = Hello()
        factory = TLSOrPlainFactory(SNIServerCreator(store, default_name=NAME),
                                    server.Site(self.hello))
        factory.tls_factory.records = records_on
        factory.tls_factory.coalesce_tickets = records_on
        listener = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listener.stopListening)
        return listener.getHost().port


class RealClientTests(_Listening, unittest.TestCase):
    @defer.inlineCallbacks
    def test_curl_keep_alive_tls12_suites_and_tls13(self):
        cases = [("--tls-max", "1.2", "--ciphers", "ECDHE-ECDSA-AES256-GCM-SHA384"),
                 ("--tls-max", "1.2", "--ciphers", "ECDHE-ECDSA-CHACHA20-POLY1305"),
                 ("--tls-max", "1.2", "--ciphers", "ECDHE-ECDSA-AES128-SHA"),
                 ("--tlsv1.3",)]
        for records_on in (True, False):
            port = self.listen(records_on)
            for case in cases:
                urls = [f"https://{NAME}:{port}/r{i}" for i in range(3)]
                out, err, code = yield utils.getProcessOutputAndValue("curl", [
                    "-sS", "-k", "--max-time", "20", "--http1.1", *case,
                    "--resolve", f"{NAME}:{port}:127.0.0.1", "-w", "|%{num_connects}\n",
                    *urls], env={})
                self.assertEqual(code, 0, err)
                version = "TLSv1.3" if case == ("--tlsv1.3",) else "TLSv1.2"
                lines = out.decode().splitlines()
                self.assertEqual(len(lines), 3, out)
                first = lines[0].replace(" 0 /r0|", f" {int(records_on)} /r0|")
                want = [f"hello {version} {int(records_on)} /r{i}|{1 if i == 0 else 0}"
                        for i in range(3)]
                self.assertEqual([first, *lines[1:]], want, (records_on, case))

    @defer.inlineCallbacks
    def test_python_ssl_pipelined_requests_and_close_notify(self):
        for records_on in (True, False):
            port = self.listen(records_on)
            for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
                got, unwrapped = yield threads.deferToThread(_pipelined, port, version)
                name = "TLSv1.2" if version == ssl.TLSVersion.TLSv1_2 else "TLSv1.3"
                self.assertRegex(got, b"hello %s [01] /p0" % name.encode())
                for i in range(1, 4):
                    self.assertIn(b"hello %s %d /p%d" % (name.encode(), records_on, i), got)
                self.assertTrue(unwrapped)  # the server answered the close_notify
        self.assertTrue(self.hello.seen)

    @defer.inlineCallbacks
    def test_openssl_s_client_renegotiation_is_refused_on_both_paths(self):
        for records_on in (True, False):
            port = self.listen(records_on)
            # a request, then "R" (s_client renegotiates), then another request
            script = (f"(printf 'GET /a HTTP/1.1\\r\\nHost: {NAME}\\r\\n\\r\\n'; sleep 1; "
                      f"echo R; sleep 1; "
                      f"printf 'GET /b HTTP/1.1\\r\\nHost: {NAME}\\r\\n\\r\\n'; sleep 1) | "
                      f"openssl s_client -connect 127.0.0.1:{port} -servername {NAME} "
                      f"-tls1_2 -no_ign_eof 2>&1")
            out, _err, _code = yield utils.getProcessOutputAndValue("sh", ["-c", script],
                                                                    env={})
            text = out.decode("latin-1")
            self.assertRegex(text, "hello TLSv1.2 [01] /a")
            self.assertIn("RENEGOTIATING", text)
            self.assertIn("no renegotiation", text)
            self.assertNotIn("/b", text.split("RENEGOTIATING", 1)[1])


def _pipelined(port: int, version: ssl.TLSVersion) -> tuple[bytes, bool]:
    """Four pipelined requests on one TLS connection, the answers read, then
    a close_notify: (what came back, whether the server's close_notify did)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        tls = ctx.wrap_socket(raw, server_hostname=NAME)
        tls.sendall(b"".join(b"GET /p%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i, NAME.encode())
                             for i in range(4)))
        got = b""
        while got.count(b"hello ") < 4:
            chunk = tls.recv(65536)
            if not chunk:
                break
            got += chunk
        try:
            tls.unwrap()
            unwrapped = True
        except (ssl.SSLError, OSError):
            unwrapped = False
        return got, unwrapped


class _SClient(protocol.ProcessProtocol):
    """``openssl s_client`` driven step by step: :meth:`send` types a line
    (a path is sent as an HTTP/1.1 GET of it; ``K``/``k`` are s_client's
    KeyUpdate commands, asking the server for one back or not) and
    :meth:`until` waits for text in its output."""

    def __init__(self) -> None:
        self.out = ""
        self.waiting: tuple[str, int, defer.Deferred] | None = None
        self.ended = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data.decode("latin-1")
        if self.waiting is not None and self.out.count(self.waiting[0]) >= self.waiting[1]:
            d = self.waiting[2]
            self.waiting = None
            d.callback(self.out)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        if self.waiting is not None:
            d = self.waiting[2]
            self.waiting = None
            d.errback(AssertionError(f"s_client ended; output:\n{self.out[-1500:]}"))
        self.ended.callback(None)

    def send(self, line: str) -> None:
        if line.startswith("/"):
            self.transport.write(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n"
                                 % (line.encode(), NAME.encode()))
        else:
            self.transport.write(line.encode() + b"\n")

    def until(self, text: str, count: int = 1, timeout: float = 20.0) -> defer.Deferred:
        """Fires once ``text`` appeared ``count`` times in the output."""
        if self.out.count(text) >= count:
            return defer.succeed(self.out)
        d: defer.Deferred = defer.Deferred()
        self.waiting = (text, count, d)
        d.addTimeout(timeout, reactor)
        return d


def _spawn_s_client(port: int, *args: str) -> _SClient:
    proto = _SClient()
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", NAME,
            *args]
    reactor.spawnProcess(proto, "/usr/bin/env", ["env", *argv], env={})
    return proto


class RecordEdgeTests(_Listening, unittest.TestCase):
    """TLS 1.3 KeyUpdate and padded records from ``openssl s_client``, on
    the record path and on Twisted's."""

    @defer.inlineCallbacks
    def steps(self, records_on: bool, lines: list[str], *args: str):
        """Each line typed once the previous one had its effect: a request
        its answer, a KeyUpdate command s_client's ``KEYUPDATE`` (and the
        next request's answer shows the server took the new keys and, for
        ``K``, sent its own KeyUpdate, which s_client needs to read it)."""
        port = self.listen(records_on)
        client = _spawn_s_client(port, "-tls1_3", *args)
        self.addCleanup(lambda: client.ended)
        yield client.until("Verify return code")  # the handshake is done
        updates = 0
        for n, line in enumerate(lines):
            client.send(line)
            if n == 0:
                yield client.until("hello TLSv1.3 ")  # (either path: see _Listening)
            elif line.startswith("/"):
                yield client.until(f"hello TLSv1.3 {int(records_on)} {line}")
            else:
                updates += 1
                yield client.until("KEYUPDATE", updates)
        client.transport.closeStdin()  # s_client sends its close_notify
        yield client.ended
        return client.out

    @defer.inlineCallbacks
    def test_key_update_both_ways_then_more_requests(self):
        for records_on in (True, False):
            out = yield self.steps(records_on, ["/a", "K", "/b", "k", "/c", "K", "/d"])
            self.assertEqual(out.count("KEYUPDATE"), 3)

    @defer.inlineCallbacks
    def test_padded_records_are_read_through_the_loop(self):
        for records_on in (True, False):
            yield self.steps(records_on, ["/a", "/b", "K", "/c"], "-record_padding", "512")
