"""Issue 18: a stream's reader keeps no received message alive while it waits
for the next one (a network map can be megabytes: the last one of a storm
stayed referenced by the reading coroutine or thread until the next message
came, ~600 B of the gRPC thread's malloc arena per storm peer at 2,000).
Both bridge modes, against a real in-process server."""

from __future__ import annotations

import sys

import grpc
import pytest_twisted
from twisted.internet import reactor

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway._proto import proxy_service_pb2_grpc as pb_grpc
from nbgateway.mgmt._grpcbridge import GrpcBridge, aio_loop
from nbgateway.mgmt.session import ManagementTarget, make_channel
from tests.mgmt.servicer import TOKEN, CannedProxyService, Server, mapping
from tests.mgmt.test_client_grpc import wait_for

MD = (("authorization", f"Bearer {TOKEN}"),)


async def _last_message_released(aio: bool) -> None:
    servicer = CannedProxyService()
    servicer.snapshot = [[mapping(f"s{i}", f"{i}.example")] for i in range(1, 4)]
    server = Server(servicer)
    if aio:
        target = ManagementTarget(f"http://127.0.0.1:{server.port}")
        channel = aio_loop().run(lambda: make_channel(target, aio=True, retries=False))
    else:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    bridge = GrpcBridge(reactor)
    kept: list[pb.GetMappingUpdateResponse] = []
    try:
        call = bridge.server_stream(
            pb_grpc.ProxyServiceStub(channel).GetMappingUpdate,
            pb.GetMappingUpdateRequest(proxy_id="p", address="c"), kept.append, metadata=MD)
        call.done.addErrback(lambda _: None)  # cancelled by bridge.stop() below
        await wait_for(lambda: len(kept) == 3, "three messages handled")
        # the stream stays open (the server holds it): the reader now waits
        # for a fourth message; only ``kept`` and getrefcount's argument may
        # reference the last one
        last = kept[-1]
        del kept[:]
        await wait_for(lambda: sys.getrefcount(last) == 2,
                       "the reader to drop the last message")
        assert call.active
    finally:
        bridge.stop()
        if aio:
            aio_loop().submit(channel.close()).result(5)
        else:
            channel.close()
        server.stop()


@pytest_twisted.ensureDeferred
async def test_aio_reader_keeps_no_message_while_waiting() -> None:
    await _last_message_released(aio=True)


@pytest_twisted.ensureDeferred
async def test_thread_reader_keeps_no_message_while_waiting() -> None:
    await _last_message_released(aio=False)
