"""What the grpcio bridge must do in both of its modes (thread and asyncio).

``tests/mgmt/test_grpcbridge.py`` (grpcio's synchronous channel, a reader
thread per stream) and ``tests/mgmt/test_grpcbridge_aio.py`` (grpc.aio, the
gateway's mode) run these against a real in-process server, each with its
own ``Env`` (servicer, server, channel, stub, bridge and ``gmu``: a
GetMappingUpdate stream) and adds what is particular to its mode.  The
``test_`` functions here are the same test in both: each file binds them
under their names (its ``env`` fixture answers).  The leading underscore
keeps pytest from collecting this module itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from nbgateway import errors
from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.mgmt._grpcbridge import StreamCall
from tests.mgmt.servicer import TOKEN, mapping
from tests.mgmt.test_client_grpc import wait_for

MD = (("authorization", f"Bearer {TOKEN}"),)


async def one_message_in_flight(env: Any, *, started: Callable[[StreamCall], None] | None = None,
                                held_back: Callable[[StreamCall], None] | None = None
                                ) -> StreamCall:
    """Three messages, each handed to the handler on the reactor thread only
    once the previous one's Deferred fired (the server sent all three at
    once).  *started* (the call) right after it starts, *held_back* (the
    call) while a message is held.  Returns the call, still open."""
    env.servicer.snapshot = [[mapping(f"s{i}", f"{i}.example")] for i in range(1, 4)]
    seen: list[str] = []
    threads: set[str] = set()
    held: list[Deferred[None]] = []

    def on_message(msg: pb.GetMappingUpdateResponse) -> Deferred[None]:
        threads.add(threading.current_thread().name)
        seen.append(msg.mapping[0].id)
        d: Deferred[None] = Deferred()
        held.append(d)
        return d

    call = env.gmu(on_message)
    if started is not None:
        started(call)
    for k in (1, 2, 3):
        await wait_for(lambda k=k: len(held) == k, f"message {k}")
        await wait_for(lambda: len(env.servicer.events_of("gmu-sent")) == 3, "all sent")
        assert len(seen) == k  # the reader does not run ahead of the handler
        if held_back is not None:
            held_back(call)
        held[-1].callback(None)
    assert seen == ["s1", "s2", "s3"]
    assert threads == {threading.current_thread().name}
    return call


async def handler_failure_cancels_the_stream(env: Any) -> StreamCall:
    """A handler that raises ends the stream with its error after one message."""
    env.servicer.snapshot = [[mapping("s1", "a.example")], [mapping("s2", "b.example")]]

    def on_message(msg: pb.GetMappingUpdateResponse) -> None:
        raise ValueError("cannot apply")

    call = env.gmu(on_message)
    with pytest.raises(ValueError):
        await call.done
    assert call.messages_received == 1
    return call


@pytest_twisted.ensureDeferred
async def test_server_error_on_stream_is_mapped(env: Any) -> None:
    call = env.gmu(lambda m: None, metadata=(("authorization", "Bearer nope"),))
    with pytest.raises(errors.ManagementUnauthenticatedError):
        await call.done


@pytest_twisted.ensureDeferred
async def test_bidi_requests_flow_from_the_reactor_and_clean_close(env: Any) -> None:
    """Acks sent from the handler (reactor thread) reach the server; the
    server's clean end resolves ``done`` with None."""
    env.servicer.snapshot = [[mapping("s1", "a.example")], [mapping("s2", "b.example")]]
    got: list[bool] = []
    holder: list[StreamCall] = []

    def on_message(msg: pb.SyncMappingsResponse) -> None:
        got.append(msg.initial_sync_complete)
        holder[0].send(pb.SyncMappingsRequest(ack=pb.SyncMappingsAck()))

    init = pb.SyncMappingsRequest(init=pb.SyncMappingsInit(proxy_id="p", address="c"))
    call = env.bridge.bidi_stream(env.stub.SyncMappings, on_message, metadata=MD, first=init)
    holder.append(call)
    await wait_for(lambda: env.servicer.events_of("ack") == [1, 2], "both acks")
    assert got == [False, True]
    env.servicer.stopping.set()  # the server ends the RPC cleanly after the snapshot
    assert await call.done is None
