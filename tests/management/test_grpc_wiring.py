"""ManagementService with --grpc-addr serves ProxyService and the peers'
ManagementService (GetServerKey/Login/Sync) on one gRPC listener."""

from __future__ import annotations

import grpc
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from nbgateway._proto import management_pb2 as mpb
from nbgateway._proto import management_pb2_grpc as mpb_grpc
from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway._proto import proxy_service_pb2_grpc as pb_grpc
from nbgateway.management.service import ManagementService
from nbgateway.management.tap import Options


class GrpcWiringTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_one_listener_serves_both_services(self):
        svc = ManagementService(datadir=self.mktemp(), api_addr="127.0.0.1:0",
                                grpc_addr="127.0.0.1:0", reactor=reactor)
        svc.privilegedStartService()
        svc.startService()
        self.addCleanup(svc.stopService)
        target = f"127.0.0.1:{svc.grpc.port}"

        def calls():
            with grpc.insecure_channel(target) as channel:
                key = mpb_grpc.ManagementServiceStub(channel).GetServerKey(
                    mpb.Empty(), timeout=5)
                try:
                    pb_grpc.ProxyServiceStub(channel).ValidateTunnelPeer(
                        pb.ValidateTunnelPeerRequest(tunnel_ip="100.64.0.1", domain="x"),
                        metadata=(("authorization", "Bearer wrong"),), timeout=5)
                except grpc.RpcError as exc:
                    return key, exc.code()
                return key, None

        key, code = yield threads.deferToThread(calls)
        self.assertTrue(key.key)
        self.assertEqual(code, grpc.StatusCode.UNAUTHENTICATED)

    def test_options_validate_grpc_flags(self):
        opts = Options(environ={})
        opts.parseOptions(["--grpc-addr", "127.0.0.1:0"])
        self.assertEqual(opts["grpc-addr"], "127.0.0.1:0")
        from twisted.python import usage

        bad = Options(environ={})
        self.assertRaises(usage.UsageError, bad.parseOptions, ["--grpc-cert", "c.pem"])
        env = Options(environ={"NB_MANAGEMENT_GRPC_ADDR": "127.0.0.1:4444"})
        env.parseOptions([])
        self.assertEqual(env["grpc-addr"], "127.0.0.1:4444")
