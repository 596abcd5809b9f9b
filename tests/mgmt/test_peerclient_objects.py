"""An idle account's peer-channel objects are lean (issue 18, fourth round).

What each account keeps while its Sync share is open: the client, its
session, bridge, reconnect loop and backoff (all slotted), one parsed
management target shared by every client of the same ``--mgmt``, and the
running cycle as one slotted object whose handler is a bound method.
Behaviour (cycles, reconnects, fallback) is tested in test_peerclient.py and
test_peermux.py; this file checks what is kept and that the shared target
keeps refusing what a private one refused."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from nbgateway._proto import management_pb2 as pb
from nbgateway.mgmt import peerclient
from nbgateway.mgmt._grpcbridge import GrpcBridge
from nbgateway.mgmt.peerclient import PeerChannelClient
from nbgateway.mgmt.reconnect import Backoff, Reconnector
from nbgateway.mgmt.session import ManagedChannel
from nbgateway.netstack.tcp import Listener

KEY = bytes(range(32))


def client(url: str = "http://127.0.0.1:1", **kw: object) -> PeerChannelClient:
    return PeerChannelClient(Clock(), url, KEY, lambda nm: None, **kw)


def test_clients_of_one_management_share_its_parsed_target() -> None:
    a, b = client(), client()
    assert a.target is b.target
    assert a.target.address == "127.0.0.1:1"
    other = client("http://127.0.0.1:2")
    assert other.target is not a.target and other.target.address == "127.0.0.1:2"
    # allow_insecure is part of the key: a non-loopback plaintext target
    # parsed with it is not handed to a client without it
    assert client("http://10.0.0.1:80", allow_insecure=True).target.host == "10.0.0.1"
    with pytest.raises(ValueError, match="plaintext"):
        client("http://10.0.0.1:80")


def test_target_cache_is_bounded() -> None:
    for port in range(1, 3 * peerclient._MAX_TARGETS):
        client(f"http://127.0.0.1:{port}")
    assert len(peerclient._targets) <= peerclient._MAX_TARGETS


def test_per_account_objects_have_no_instance_dict() -> None:
    c = client()
    cycle = peerclient._Cycle(c)
    assert isinstance(c.session, ManagedChannel)
    objects = [c, c.session, GrpcBridge(Clock()), Reconnector(Clock(), lambda: None),
               Backoff(), cycle]
    for obj in objects:
        assert not hasattr(obj, "__dict__"), type(obj).__name__
    assert "__dict__" not in dir(Listener)


def test_cycle_handler_failure_cancels_its_stream_and_is_kept() -> None:
    """A message that does not open ends the cycle's stream (the cycle then
    fails with that error), as the per-cycle closures did."""
    c = client()
    c.server_key = bytes(32)
    cycle = peerclient._Cycle(c)
    cancelled: list[bool] = []

    class Lifetime:
        def cancel(self) -> None:
            cancelled.append(True)

    cycle.new_stream(Lifetime())  # type: ignore[arg-type]
    assert cycle.on_message(pb.EncryptedMessage(body=b"not a box")) is None
    assert cancelled == [True]
    assert cycle.broken is not None and cycle.broken.reason == "undecryptable"
    assert not cycle.connected and not c.connected
    cycle.new_stream(None)  # a fallback stream starts clean
    assert cycle.broken is None and cycle.last_serial == -1
