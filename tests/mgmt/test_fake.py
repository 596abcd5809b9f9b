"""FakeManagementClient behaves like the interface promises (for other tests)."""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred

from nbgateway import errors
from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.interfaces import IManagementClient
from nbgateway.mgmt.fake import FakeManagementClient
from nbgateway.store.mappings import MappingObserver, MappingStore


def result_of(d: Deferred):
    out: list = []
    d.addBoth(out.append)
    assert out, "Deferred did not fire"
    return out[0]


def test_provides_interface_and_fails_closed_by_default() -> None:
    fake = FakeManagementClient()
    assert IManagementClient.providedBy(fake)
    resp = result_of(fake.validate_tunnel_peer("100.64.0.5", "app.example"))
    assert not resp.valid and resp.denied_reason == "peer_not_found"
    assert not result_of(fake.validate_session("app.example", "x")).valid
    assert fake.count("validate_tunnel_peer") == 1


def test_allowed_tunnel_peer_and_error_injection() -> None:
    fake = FakeManagementClient()
    fake.allow_tunnel_peer("100.64.0.5", "app.example", user_id="u1", groups=[("g1", "devs")])
    resp = result_of(fake.validate_tunnel_peer("100.64.0.5", "app.example"))
    assert resp.valid and list(resp.peer_group_names) == ["devs"]
    fake.responses["validate_tunnel_peer"] = errors.ManagementUnavailableError("down")
    failure = result_of(fake.validate_tunnel_peer("100.64.0.5", "app.example"))
    assert failure.check(errors.ManagementUnavailableError)


def test_hold_and_release_and_cancel() -> None:
    fake = FakeManagementClient()
    fake.hold = True
    d1 = fake.validate_tunnel_peer("ip", "d")
    d2 = fake.create_proxy_peer("s", "a", "t", "k", "c", wireguard_endpoint="e:1")
    assert not d1.called and len(fake.held) == 2
    assert fake.held[1].kwargs["wireguard_endpoint"] == "e:1"
    fake.release(0, pb.ValidateTunnelPeerResponse(valid=True))
    assert result_of(d1).valid
    d2.cancel()
    assert result_of(d2).check(CancelledError)
    assert fake.held == []


def test_mapping_stream_drives_store_and_counts_acks() -> None:
    fake, store = FakeManagementClient(), MappingStore()
    seen = []

    class Obs(MappingObserver):
        def mapping_added(self, mapping):
            seen.append(mapping.id)

    store.add_observer(Obs())
    fake.subscribe_mappings(store)
    m = pb.ProxyMapping(id="s1", account_id="a", domain="x.example")
    result_of(fake.snapshot([m]))
    assert seen == ["s1"] and fake.acks == 1 and store.initial_sync_complete
    fake.disconnect()
    fake.connect()
    result_of(fake.push([], initial_sync_complete=True))
    assert store.get("s1") is None and fake.acks == 2
