"""The record path's per-request attribute reads and when it hands over to
Twisted (nbgateway.tls.dispatch._RecordPath).

The TLS protocol (Twisted's ``ProtocolWrapper`` underneath) and pyOpenSSL's
``Connection`` both define ``__getattr__``, so CPython 3.11 does not
specialise attribute reads on them (~390 instructions each against ~80 on a
slotted object).  On the record path a keep-alive HTTPS request through the
gateway's fast channel reads two attributes of the protocol (``_path`` per
read, ``write`` per response: the channel's) and none of the ``Connection``;
before, 22 and 7.

The record path skips Twisted's checks of ``_lostTLSConnection``,
``_aborted``, ``disconnecting`` and ``_appSendBuffer`` because the protocol
leaves it whenever one of them changes: Twisted changes them only in methods
the protocol overrides (pinned here against the installed Twisted's source),
and what happens then (closing with a producer, aborting or closing while
several records of one read are delivered, a loss reported synchronously, a
buffered write) is what Twisted's path does (each test runs with the record
path on and off)."""

from __future__ import annotations

import ast
import collections
import inspect
import textwrap
from typing import Any

from OpenSSL import SSL
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.protocols import policies, tls
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from nbgateway.tls.dispatch import DeadlineTLSFactory, DeadlineTLSProtocol
from tests.tls.test_tls_instance_size import HTTPS
from tests.tls.test_tls_records import Harness


class _Lookups:
    """Counts attribute reads on one protocol and one ``Connection``."""

    def __init__(self, test: unittest.TestCase) -> None:
        self.proto: collections.Counter[str] = collections.Counter()
        self.conn: collections.Counter[str] = collections.Counter()
        self.targets: tuple[Any, Any] = (None, None)
        lookups = self

        class Counted(DeadlineTLSProtocol):
            def __getattribute__(self, name: str) -> Any:
                if self is lookups.targets[0]:
                    lookups.proto[name] += 1
                return object.__getattribute__(self, name)

        def conn_getattribute(conn: Any, name: str) -> Any:
            if conn is lookups.targets[1]:
                lookups.conn[name] += 1
            return object.__getattribute__(conn, name)

        test.patch(DeadlineTLSFactory, "protocol", Counted)
        SSL.Connection.__getattribute__ = conn_getattribute  # type: ignore[method-assign]
        test.addCleanup(delattr, SSL.Connection, "__getattribute__")

    def watch(self, proto: Any) -> None:
        self.proto.clear()
        self.conn.clear()
        self.targets = (proto, object.__getattribute__(proto, "_tlsConnection"))


class LookupTests(unittest.SynchronousTestCase):
    def test_one_protocol_read_and_no_connection_read_per_request(self):
        lookups = _Lookups(self)
        for records_on in (True, False):
            h = HTTPS(records_on)
            self.assertTrue(h.get(b"/warm").endswith(b"tls"))
            lookups.watch(h.server)
            n = 5
            for i in range(n):
                self.assertTrue(h.get(b"/p%d?q=%d" % (i, i)).endswith(b"tls"))
            lookups.targets = (None, None)
            if records_on:
                # the channel's transport.write; reads reach the path's
                # read from the sniffer without the protocol (22, then 2)
                self.assertEqual(dict(lookups.proto), {"write": n})
                self.assertEqual(dict(lookups.conn), {})
            else:  # Twisted's path: its checks, pyOpenSSL's recv/send
                self.assertGreater(sum(lookups.proto.values()), 10 * n)
                self.assertGreater(sum(lookups.conn.values()), 3 * n)


def _writers(cls: type, names: set[str]) -> dict[str, set[str]]:
    """{attribute: methods of ``cls`` (its own source) that assign it (or,
    for ``_appSendBuffer``, append to it)}."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    found: dict[str, set[str]] = collections.defaultdict(set)
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef):
            continue
        for node in ast.walk(fn):
            targets: list[Any] = []
            if isinstance(node, ast.Assign):
                targets = [t for tgt in node.targets
                           for t in (tgt.elts if isinstance(tgt, ast.Tuple) else [tgt])]
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr in ("append", "extend", "insert")):
                targets = [node.func.value]
            for t in targets:
                if (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                        and t.value.id == "self" and t.attr in names):
                    found[t.attr].add(fn.name)
    return found


class TwistedPinTests(unittest.SynchronousTestCase):
    def test_twisted_changes_the_skipped_state_only_in_overridden_methods(self):
        names = {"_lostTLSConnection", "_aborted", "disconnecting", "_appSendBuffer"}
        writers: dict[str, set[str]] = collections.defaultdict(set)
        for cls in (policies.ProtocolWrapper, tls.TLSMemoryBIOProtocol,
                    tls.BufferingTLSTransport):
            for name, methods in _writers(cls, names).items():
                writers[name] |= {(cls.__name__, m) for m in methods}
        # setting up (before the path exists), or emptying the buffer
        harmless = {("TLSMemoryBIOProtocol", "makeConnection"),
                    ("TLSMemoryBIOProtocol", "_unbufferPendingWrites")}
        overridden = {m for m, v in vars(DeadlineTLSProtocol).items() if callable(v)}
        for name in names:
            for cls_name, method in writers[name] - harmless:
                self.assertIn(method, overridden, (name, cls_name, method))
        self.assertEqual(writers["_appSendBuffer"] - harmless,
                         {("TLSMemoryBIOProtocol", "_bufferedWrite")})
        self.assertTrue(writers["_lostTLSConnection"] and writers["_aborted"]
                        and writers["disconnecting"])  # the scan found them at all


@implementer(IPushProducer)
class _Producer:
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class HandOverTests(unittest.SynchronousTestCase):
    def test_closing_with_a_producer_keeps_writing_until_it_leaves(self):
        for records_on in (True, False):
            h = Harness(self, records_on)
            self.assertEqual(h.exchange(b"ping"), b"4:ping")
            h.server.registerProducer(_Producer(), True)
            h.server.loseConnection()
            self.assertIsNone(h.server._path)
            h.server.write(b"still")  # a producer is registered: not dropped
            self.assertEqual(h.received(), b"still")
            h.server.unregisterProducer()  # now TLS shuts down
            self.assertEqual(h.received(), b"")
            self.assertEqual(h.client.get_shutdown() & SSL.RECEIVED_SHUTDOWN,
                             SSL.RECEIVED_SHUTDOWN, records_on)
            h.server.write(b"late")
            self.assertEqual(h.received(), b"")

    def _three_in_one_read(self, h: Harness, on_first: Any) -> None:
        first = True

        def deliver(data: bytes) -> None:
            nonlocal first
            h.app.got.append(data)
            if first:
                first = False
                on_first()

        h.app.dataReceived = deliver
        out = b""
        for part in (b"a", b"bb", b"ccc"):
            h.client.send(part)
            out += h.client.bio_read(1 << 16)
        h.sniffer.dataReceived(out)

    def test_closing_while_delivering_still_delivers_the_rest_of_the_read(self):
        got = {}
        for records_on in (True, False):
            h = Harness(self, records_on)
            self.assertEqual(h.exchange(b"ping"), b"4:ping")
            self._three_in_one_read(h, h.server.loseConnection)
            got[records_on] = list(h.app.got[1:])
            self.assertIsNone(h.server._path)
            self.assertEqual(h.received(), b"")  # (this app answers nothing) then close_notify
            self.assertEqual(h.client.get_shutdown() & SSL.RECEIVED_SHUTDOWN,
                             SSL.RECEIVED_SHUTDOWN)
        self.assertEqual(got[True], got[False])
        self.assertEqual(got[True], [b"a", b"bb", b"ccc"])  # as Twisted: reads go on

    def test_aborting_while_delivering_drops_the_rest_of_the_read(self):
        got = {}
        for records_on in (True, False):
            h = Harness(self, records_on)
            self.assertEqual(h.exchange(b"ping"), b"4:ping")
            self._three_in_one_read(h, h.server.abortConnection)
            got[records_on] = list(h.app.got[1:])
            self.assertTrue(h.wire.disconnecting)
        self.assertEqual(got[True], got[False])
        self.assertEqual(got[True], [b"a"])

    def test_a_loss_reported_while_delivering_ends_the_read_without_error(self):
        got = {}
        for records_on in (True, False):
            h = Harness(self, records_on)
            self.assertEqual(h.exchange(b"ping"), b"4:ping")

            def lost(h: Harness = h) -> None:  # as a netstack transport may, synchronously
                h.sniffer.connectionLost(Failure(ConnectionDone()))

            self._three_in_one_read(h, lost)
            got[records_on] = list(h.app.got[1:])
            self.assertIsNone(h.server._tlsConnection)
            self.assertIsNotNone(h.app.lost)
            h.server.write(b"late")  # dropped, no error
        self.assertEqual(got[True], got[False])

    def test_a_buffered_write_leaves_the_record_path_and_goes_out_in_order(self):
        for records_on in (True, False):
            h = Harness(self, records_on)
            self.assertEqual(h.exchange(b"ping"), b"4:ping")
            # as Twisted's _write does when SSL_write wants to read first
            h.server._bufferedWrite(b"queued|")
            self.assertIsNone(h.server._path)
            self.assertEqual(h.server.write, h.server._tls_write)
            self.assertEqual(h.received(), b"")
            h.client.send(b"next")
            h.pump()  # the read unbuffers the queued write before answering
            self.assertEqual(h.read(), b"queued|4:next")
            self.assertEqual(h.exchange(b"more"), b"4:more")

    def test_the_path_and_its_write_while_open(self):
        h = Harness(self, True)
        self.assertIsNotNone(h.server._path)
        self.assertEqual(h.server.write, h.server._path.write)
        self.assertEqual(h.exchange(b"ping"), b"4:ping")
        h.server.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(h.server._path)
