"""Sessions to the same management share one grpc.aio channel (one HTTP/2
connection for every account's peer channel), closed with its last user."""

from __future__ import annotations

from twisted.internet import reactor

from nbgateway._proto import management_pb2_grpc as pb_grpc
from nbgateway.mgmt.session import ManagedChannel, ManagementTarget, shared_channels


def _session(url: str, name: str) -> ManagedChannel:
    return ManagedChannel(reactor, ManagementTarget(url), pb_grpc.ManagementServiceStub,
                          name=name)


def test_sessions_to_one_target_share_a_channel_until_the_last_closes():
    before = len(shared_channels)
    a = _session("http://127.0.0.1:1", "a")
    b = _session("http://127.0.0.1:1", "b")
    other = _session("http://127.0.0.1:2", "other")
    for s in (a, b, other):
        s.open()
    try:
        assert a.channel is b.channel
        assert other.channel is not a.channel
        assert a.stub is b.stub  # one stub per shared channel, not per account
        assert other.stub is not a.stub
        assert len(shared_channels) == before + 2
        a.close()
        assert len(shared_channels) == before + 2  # b still uses it
        assert b.is_open and b.channel is not None
        b.close()
        assert len(shared_channels) == before + 1
    finally:
        for s in (a, b, other):
            s.close()
    assert len(shared_channels) == before


def test_retries_on_and_off_are_separate_channels():
    """Peer-channel sessions run with gRPC retries off (no retry state per
    Sync stream); a session asking for transparent retries (the ProxyService
    client) gets its own channel, never one built without them."""
    before = len(shared_channels)
    peer = _session("http://127.0.0.1:3", "peer")
    proxy = ManagedChannel(reactor, ManagementTarget("http://127.0.0.1:3"),
                           pb_grpc.ManagementServiceStub, name="proxy",
                           transparent_retries=True)
    try:
        peer.open()
        proxy.open()
        assert peer.channel is not proxy.channel
        assert len(shared_channels) == before + 2
    finally:
        peer.close()
        proxy.close()
    assert len(shared_channels) == before
