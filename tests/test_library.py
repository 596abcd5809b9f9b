"""The library entry point (issue 7): an existing Twisted host builds the
gateway with ``nbgateway.makeGateway(config, reactor=...)`` and attaches it to
its own MultiService next to its other services.  The gateway must use the
caller's reactor for everything it binds and schedules, and touch nothing
global: no log observers (twisted or stdlib), no signal handlers."""

from __future__ import annotations

import logging
import os
import signal
import sys
import urllib.request

from twisted.application import internet, service
from twisted.internet import defer, reactor, threads
from twisted.internet.task import deferLater
from twisted.logger import globalLogBeginner, globalLogPublisher
from twisted.trial import unittest
from twisted.web import resource, server
from zope.interface import directlyProvides, providedBy

import nbgateway
from tests.ports import free_port


class CallerReactor:
    """The host's reactor, as the gateway sees it: delegates to the real
    reactor and records what the gateway binds and schedules through it."""

    def __init__(self, real):
        self._real = real
        self.calls: list[str] = []
        directlyProvides(self, *providedBy(real))

    def __getattr__(self, name):
        value = getattr(self._real, name)
        if name in ("listenTCP", "listenUDP", "callLater", "callInThread", "callFromThread"):
            def recorded(*args, **kw):
                self.calls.append(name)
                return value(*args, **kw)
            return recorded
        return value


class HostService(service.Service):
    """The host's own service; records its lifecycle."""

    def __init__(self, events):
        self.events = events

    def startService(self):
        super().startService()
        self.events.append("host started")

    def stopService(self):
        self.events.append("host stopped")
        return super().stopService()


class Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"host app\n"


def _observers():
    return list(globalLogPublisher._observers)


class LibraryEntryPointTests(unittest.TestCase):
    timeout = 60

    def test_public_names_are_lazy_and_documented(self):
        self.assertIs(nbgateway.makeGateway, nbgateway.build_gateway)
        from nbgateway.config import load
        from nbgateway.service import GatewayService
        from nbgateway.tap import build_gateway

        self.assertIs(nbgateway.build_gateway, build_gateway)
        self.assertIs(nbgateway.GatewayService, GatewayService)
        self.assertIs(nbgateway.load_config, load)
        self.assertIn("makeGateway", nbgateway.__doc__)
        with self.assertRaises(AttributeError):
            nbgateway.no_such_name  # noqa: B018

    @defer.inlineCallbacks
    def test_gateway_inside_a_host_multiservice(self):
        # the reactor itself installs SIGTERM/SIGINT handlers when it starts: take
        # the snapshot once it runs
        yield deferLater(reactor, 0, lambda: None)
        sighup, sigterm = signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGTERM)
        observers = _observers()
        root_handlers = list(logging.getLogger().handlers)
        stdout, stderr = sys.stdout, sys.stderr
        temporary = getattr(globalLogBeginner, "_temporaryObserver", None)

        events: list[str] = []
        host = service.MultiService()
        HostService(events).setServiceParent(host)
        web = internet.TCPServer(0, server.Site(Hello()), interface="127.0.0.1")
        web.setServiceParent(host)

        datadir = os.path.abspath(self.mktemp())
        caller = CallerReactor(reactor)
        config = nbgateway.load_config(
            {"wg_port": "0", "addr": "127.0.0.1:0", "health_addr": "127.0.0.1:0",
             "datadir": datadir, "private": True, "domain": "lib.test"}, {})
        gateway = nbgateway.makeGateway(config, reactor=caller, environ={
            "NB_MANAGEMENT_API_ADDR": "127.0.0.1:0",
            "NB_MANAGEMENT_GRPC_ADDR": f"127.0.0.1:{free_port()}"})
        self.assertIsInstance(gateway, nbgateway.GatewayService)
        self.assertIs(gateway.reactor, caller)
        self.assertEqual(caller.calls, [])  # building binds and schedules nothing
        gateway.setServiceParent(host)

        host.privilegedStartService()
        host.startService()
        try:
            self.assertEqual(events, ["host started"])
            self.assertTrue(gateway.running)
            self.assertIn("listenUDP", caller.calls)  # the WireGuard port, via the caller
            self.assertIn("listenTCP", caller.calls)  # the public listener, via the caller
            self.assertGreater(gateway.wg_port, 0)
            # the host's own web service answers alongside the gateway
            port = web._port.getHost().port
            body = yield threads.deferToThread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read())
            self.assertEqual(body, b"host app\n")
            # the embedded management is up inside the same host
            mgmt = gateway.embedded.management
            self.assertTrue(os.path.exists(mgmt.admin_token_path))
        finally:
            yield host.stopService()
        self.assertEqual(events, ["host started", "host stopped"])
        self.assertFalse(gateway.running)
        self.assertIsNone(gateway.udp_port)

        # nothing global was touched
        self.assertIs(signal.getsignal(signal.SIGHUP), sighup)
        self.assertIs(signal.getsignal(signal.SIGTERM), sigterm)
        self.assertEqual(_observers(), observers)
        self.assertEqual(logging.getLogger().handlers, root_handlers)
        self.assertIs(sys.stdout, stdout)
        self.assertIs(sys.stderr, stderr)
        # beginLoggingTo() was not called (it would drop the temporary observer)
        self.assertIs(getattr(globalLogBeginner, "_temporaryObserver", None), temporary)
