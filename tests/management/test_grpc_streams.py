"""Mapping streams over real gRPC: snapshots, ack back-pressure, capability filtering and
incremental broadcasts."""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from typing import Any

import grpc
import pytest

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.management.model import Account
from nbgateway.management.proxymapping import filter_mappings_for_proxy
from tests.management import test_grpc_support as support
from tests.management.test_grpc_support import (
    ACCOUNT,
    CLUSTER,
    DOMAIN,
    WAIT,
    X_CAPS,
    Fixture,
    Harness,
    SyncClient,
    caps,
    make_service,
    md,
)

grpc_store, fx, harness = support.grpc_store, support.fx, support.harness

#: how long "nothing arrives" is watched for (an absence check, not a timing assertion)
QUIET = 0.3


class GmuClient:
    """A GetMappingUpdate stream read by a background thread."""

    def __init__(self, h: Harness, token: str, proxy_id: str, *, address: str = CLUSTER,
                 capabilities: pb.ProxyCapabilities | None = None, resume: int = 0) -> None:
        req = pb.GetMappingUpdateRequest(proxy_id=proxy_id, address=address, version="t",
                                         nbgw_resume_revision=resume)
        if capabilities is not None:
            req.capabilities.CopyFrom(capabilities)
        self.call = h.stub.GetMappingUpdate(req, metadata=md(token))
        self.responses: queue.Queue[Any] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for r in self.call:
                self.responses.put(r)
        except grpc.RpcError as exc:
            self.responses.put(exc)
            return
        self.responses.put(None)

    def next(self, timeout: float = WAIT) -> pb.GetMappingUpdateResponse:
        item = self.responses.get(timeout=timeout)
        if isinstance(item, grpc.RpcError):
            raise item
        assert item is not None, "stream ended"
        return item

    def snapshot(self) -> list[pb.ProxyMapping]:
        out: list[pb.ProxyMapping] = []
        while True:
            r = self.next()
            out.extend(r.mapping)
            if r.initial_sync_complete:
                return out

    def end(self, timeout: float = WAIT) -> grpc.RpcError | None:
        while True:
            item = self.responses.get(timeout=timeout)
            if item is None or isinstance(item, grpc.RpcError):
                return item

    def quiet(self) -> bool:
        try:
            self.responses.get(timeout=QUIET)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self.call.cancel()


def by_id(mappings) -> dict[str, pb.ProxyMapping]:
    return {m.id: m for m in mappings}


def connect_x(h: Harness, fx: Fixture, proxy_id: str = "proxy-x", resume: int = 0) -> GmuClient:
    c = GmuClient(h, fx.token, proxy_id, capabilities=caps(**X_CAPS), resume=resume)
    return c


def public(fx: Fixture, name: str, **kw):
    return fx.store.services.create(make_service(name, **kw))


# --- snapshots ---------------------------------------------------------------------------


def test_31_capable_proxy_snapshot_carries_private_mapping(harness: Harness, fx: Fixture) -> None:
    x = connect_x(harness, fx)
    first = x.next()
    assert first.initial_sync_complete
    m = by_id(first.mapping)["svc-1"]
    assert m.type == pb.UPDATE_TYPE_CREATED and m.private is True
    assert m.domain == DOMAIN and m.account_id == ACCOUNT
    assert m.auth.session_key == fx.s.session_public_key
    assert m.auth.max_session_age_seconds == 86400
    assert len(m.auth_token) >= 40
    assert [(p.path, p.target, p.options.direct_upstream) for p in m.path] == [
        ("/", "http://backend.lan:8080/", True)
    ]
    x.close()


@pytest.mark.parametrize(
    "capabilities",
    [None, caps(), caps(supports_private_service=False), caps(supports_custom_ports=True)],
    ids=["absent", "unset", "false", "other-only"],
)
def test_32_incapable_proxy_gets_no_private_mapping(
    harness: Harness, fx: Fixture, capabilities
) -> None:
    pub = public(fx, "pub")
    harness.settle()
    y = GmuClient(harness, fx.token, "proxy-y", capabilities=capabilities)
    got = by_id(y.snapshot())
    assert "svc-1" not in got and pub.id in got and got[pub.id].private is False
    y.close()


def test_33_embedded_flag_alone_does_not_enable_private(harness: Harness, fx: Fixture) -> None:
    z = GmuClient(harness, fx.token, "proxy-z", capabilities=caps(private=True))
    assert "svc-1" not in by_id(z.snapshot())
    z.close()


def test_34_disabled_or_foreign_cluster_service_absent(harness: Harness, fx: Fixture) -> None:
    other = GmuClient(harness, fx.token, "proxy-o", address="other.example",
                      capabilities=caps(**X_CAPS))
    assert other.snapshot() == []
    other.close()
    fx.store.services.update(dataclasses.replace(fx.s, enabled=False))
    x = connect_x(harness, fx)
    assert "svc-1" not in by_id(x.snapshot())
    x.close()


def test_35_empty_snapshot_is_one_completion_message(harness: Harness, fx: Fixture) -> None:
    c = GmuClient(harness, fx.token, "proxy-e", address="empty.example")
    r = c.next()
    assert list(r.mapping) == [] and r.initial_sync_complete
    assert c.quiet()
    assert harness.event_names("proxy-e") == ["batch-sent:1"]
    c.close()


def test_36_sync_mappings_batches_wait_for_acks(fx: Fixture) -> None:
    h = Harness(fx.store, batch_size=3, heartbeat_interval=0.2)
    try:
        for i in range(6):
            public(fx, f"svc{i}")
        h.settle()
        c = SyncClient(h.stub, fx.token, "proxy-b", capabilities=caps(**X_CAPS))
        sizes = []
        for k in range(1, 4):
            r = c.next()
            sizes.append((len(r.mapping), r.initial_sync_complete))
            # back-pressure: batch k+1 is not sent while batch k is unacked
            assert c.responses.empty()
            time.sleep(QUIET)
            assert c.responses.empty()
            assert h.event_names("proxy-b")[-1] == f"batch-sent:{k}"
            c.ack()
        assert sizes == [(3, False), (3, False), (1, True)]
        h.wait_event(lambda n, f: n == "ack" and f.get("batch") == 3)
        assert h.event_names("proxy-b") == [
            "batch-sent:1", "ack:1", "batch-sent:2", "ack:2", "batch-sent:3", "ack:3",
        ]
        # then incremental updates flow (and their acks are read and discarded)
        new = public(fx, "late")
        r = c.next()
        assert [(m.id, m.type) for m in r.mapping] == [(new.id, pb.UPDATE_TYPE_CREATED)]
        c.ack()
        c.close()
    finally:
        h.close()


def test_37_first_message_must_be_init(harness: Harness, fx: Fixture) -> None:
    c = SyncClient(harness.stub, fx.token, "p", first=pb.SyncMappingsRequest(
        ack=pb.SyncMappingsAck()))
    err = c.end()
    assert err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "first message must be init"


def test_37_init_instead_of_ack_fails_and_marks_disconnected(
    harness: Harness, fx: Fixture
) -> None:
    c = SyncClient(harness.stub, fx.token, "proxy-r", capabilities=caps(**X_CAPS))
    c.next()
    assert fx.store.proxies.get("proxy-r").status == "connected"
    c.send(pb.SyncMappingsRequest(init=pb.SyncMappingsInit(proxy_id="proxy-r",
                                                            address=CLUSTER)))
    err = c.end()
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("expected ack")
    deadline = time.monotonic() + WAIT
    while fx.store.proxies.get("proxy-r").status != "disconnected":
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_27_connection_recorded_without_supports_private_service(
    harness: Harness, fx: Fixture
) -> None:
    x = GmuClient(harness, fx.token, "proxy-x",
                  capabilities=caps(supports_private_service=True, private=False,
                                    supports_custom_ports=True))
    x.snapshot()
    row = fx.store.proxies.get("proxy-x")
    assert row.status == "connected" and row.cluster_address == CLUSTER
    assert row.capabilities.private is False
    assert row.capabilities.supports_custom_ports is True
    assert row.capabilities.require_subdomain is None
    assert not hasattr(row.capabilities, "supports_private_service")
    clusters = {c.address: c for c in fx.store.proxies.list_clusters(ACCOUNT)}
    assert clusters[CLUSTER].online and clusters[CLUSTER].connected_proxies == 1
    # heartbeats refresh last_seen
    first_seen = row.last_seen
    deadline = time.monotonic() + WAIT
    while fx.store.proxies.get("proxy-x").last_seen == first_seen:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    x.close()
    deadline = time.monotonic() + WAIT
    while fx.store.proxies.get("proxy-x").status != "disconnected":
        assert time.monotonic() < deadline
        time.sleep(0.02)


# --- broadcasts -----------------------------------------------------------------------------


def test_38_private_create_reaches_only_capable_proxy(harness: Harness, fx: Fixture) -> None:
    x = connect_x(harness, fx)
    y = GmuClient(harness, fx.token, "proxy-y")
    x.snapshot(), y.snapshot()
    s2 = fx.store.services.create(
        make_service("s2", private=True, access_groups=("grp-admins",))
    )
    m = x.next().mapping
    assert [(i.id, i.type, i.private) for i in m] == [(s2.id, pb.UPDATE_TYPE_CREATED, True)]
    assert m[0].auth_token and m[0].auth.session_key == s2.session_public_key
    # Y got nothing: the next thing it sees is a later public service
    pub = public(fx, "pub")
    assert [i.id for i in y.next().mapping] == [pub.id]
    assert [i.id for i in x.next().mapping] == [pub.id]
    x.close(), y.close()


def test_39_delete_sends_removed_to_every_proxy(harness: Harness, fx: Fixture) -> None:
    x = connect_x(harness, fx)
    y = GmuClient(harness, fx.token, "proxy-y")
    x.snapshot(), y.snapshot()
    fx.store.services.delete(ACCOUNT, "svc-1")
    for c in (x, y):
        (m,) = c.next().mapping
        assert m.type == pb.UPDATE_TYPE_REMOVED and m.id == "svc-1" and m.auth_token == ""
        # the full mapping, so a proxy without it stored can still derive the routes to drop
        assert m.domain == DOMAIN and m.path[0].target == "http://backend.lan:8080/"
    x.close(), y.close()


def test_40_multi_mapping_broadcast_is_filtered_per_proxy(
    harness: Harness, fx: Fixture
) -> None:
    x = connect_x(harness, fx)
    y = GmuClient(harness, fx.token, "proxy-y")
    x.snapshot(), y.snapshot()
    priv = pb.ProxyMapping(id="p1", account_id=ACCOUNT, domain="p1.x", private=True)
    pub = pb.ProxyMapping(id="p2", account_id=ACCOUNT, domain="p2.x")
    harness.servicer.broadcast([(CLUSTER, priv, True), (CLUSTER, pub, False)])
    assert [m.id for m in y.next().mapping] == ["p2"]
    got = x.next().mapping
    assert [(m.id, m.private) for m in got] == [("p1", True), ("p2", False)]
    # everything filtered out: nothing is enqueued for Y at all
    before = len([e for e in harness.events if e[1].get("proxy_id") == "proxy-y"])
    harness.servicer.broadcast([(CLUSTER, priv, True)])
    x.next()
    after = len([e for e in harness.events if e[1].get("proxy_id") == "proxy-y"])
    assert before == after and y.quiet()
    # the pure filter keeps REMOVED and drops private for an incapable proxy
    gone = pb.ProxyMapping(id="p3", type=pb.UPDATE_TYPE_REMOVED, private=True)
    assert [m.id for m in filter_mappings_for_proxy(None, [priv, pub, gone])] == ["p2", "p3"]
    x.close(), y.close()


def test_private_flag_survives_incremental_updates(harness: Harness, fx: Fixture) -> None:
    """Upstream baseline bug S1: shallowCloneMapping dropped ``private``."""
    x = connect_x(harness, fx)
    x.snapshot()
    fx.store.services.update(dataclasses.replace(fx.s, pass_host_header=True))
    (m,) = x.next().mapping
    assert m.type == pb.UPDATE_TYPE_MODIFIED and m.private is True and m.pass_host_header
    assert m.auth_token and m.auth.session_key == fx.s.session_public_key
    x.close()


def test_private_public_private_transitions(harness: Harness, fx: Fixture) -> None:
    svc = public(fx, "flip")
    harness.settle()
    x = connect_x(harness, fx)
    y = GmuClient(harness, fx.token, "proxy-y")
    assert svc.id in by_id(x.snapshot()) and svc.id in by_id(y.snapshot())

    def flip(private: bool) -> None:
        cur = fx.store.services.get(ACCOUNT, svc.id)
        fx.store.services.update(dataclasses.replace(
            cur, private=private, access_groups=("grp-admins",) if private else None))

    flip(True)
    (m,) = y.next().mapping
    assert (m.id, m.type, m.auth_token) == (svc.id, pb.UPDATE_TYPE_REMOVED, "")
    (m,) = x.next().mapping
    assert (m.type, m.private) == (pb.UPDATE_TYPE_MODIFIED, True)
    flip(False)
    (m,) = y.next().mapping
    assert (m.type, m.private) == (pb.UPDATE_TYPE_CREATED, False) and m.auth_token
    (m,) = x.next().mapping
    assert (m.type, m.private) == (pb.UPDATE_TYPE_MODIFIED, False)
    flip(True)
    assert y.next().mapping[0].type == pb.UPDATE_TYPE_REMOVED
    assert x.next().mapping[0].private is True
    x.close(), y.close()


def test_disable_enable_and_status_updates(harness: Harness, fx: Fixture) -> None:
    x = connect_x(harness, fx)
    x.snapshot()
    fx.store.services.update(dataclasses.replace(fx.s, enabled=False))
    assert x.next().mapping[0].type == pb.UPDATE_TYPE_REMOVED
    fx.store.services.update(dataclasses.replace(fx.s, enabled=True))
    assert x.next().mapping[0].type == pb.UPDATE_TYPE_CREATED
    # a status change does not change the mapping: nothing is broadcast
    fx.store.services.set_status(ACCOUNT, "svc-1", "active")
    pub = public(fx, "after-status")
    assert [m.id for m in x.next().mapping] == [pub.id]
    x.close()


def test_41_byop_proxy_sees_only_its_account(harness: Harness, fx: Fixture) -> None:
    fx.store.accounts.create(Account(id="acct-b"))
    _, token_b = fx.store.proxies.create_token("b", account_id="acct-b")
    b_svc = fx.store.services.create(make_service("bapp", account_id="acct-b"))
    harness.settle()
    b = GmuClient(harness, token_b, "proxy-b", capabilities=caps(**X_CAPS))
    assert [m.id for m in b.snapshot()] == [b_svc.id]
    public(fx, "a-change")  # account A: must not reach B
    fx.store.services.update(dataclasses.replace(b_svc, pass_host_header=True))
    (m,) = b.next().mapping
    assert m.id == b_svc.id and m.account_id == "acct-b"
    b.close()


def test_42_byop_cluster_address_in_use(harness: Harness, fx: Fixture) -> None:
    x = connect_x(harness, fx)
    x.snapshot()
    fx.store.accounts.create(Account(id="acct-b"))
    _, token_b = fx.store.proxies.create_token("b", account_id="acct-b")
    b = GmuClient(harness, token_b, "proxy-b")
    err = b.end()
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert err.details() == f"cluster address {CLUSTER} is already in use"
    x.close()


def test_43_second_connection_supersedes_first(harness: Harness, fx: Fixture) -> None:
    first = connect_x(harness, fx)
    first.snapshot()
    old_session = fx.store.proxies.get("proxy-x").session_id
    second = connect_x(harness, fx)
    second.snapshot()
    err = first.end()
    assert err is not None and err.code() == grpc.StatusCode.CANCELLED
    row = fx.store.proxies.get("proxy-x")
    assert row.session_id != old_session and row.status == "connected"
    # the new stream still receives updates
    pub = public(fx, "after")
    assert [m.id for m in second.next().mapping] == [pub.id]
    assert fx.store.proxies.get("proxy-x").status == "connected"
    second.close()


def test_44_revoked_token_closes_stream(harness: Harness, fx: Fixture) -> None:
    x = connect_x(harness, fx)
    x.snapshot()
    fx.store.proxies.revoke_token(None, fx.token_record.id)
    err = x.end()
    assert err is not None and err.code() == grpc.StatusCode.CANCELLED
    with pytest.raises(grpc.RpcError) as exc:
        GmuClient(harness, fx.token, "proxy-x").next()
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert exc.value.details() == "token expired or revoked"


def test_45_full_send_queue_cancels_the_stream(fx: Fixture) -> None:
    h = Harness(fx.store, queue_size=2, heartbeat_interval=0.2)
    try:
        # the proxy holds the last snapshot batch unacked, so nothing drains its queue
        c = SyncClient(h.stub, fx.token, "proxy-q", capabilities=caps(**X_CAPS))
        c.next()
        for i in range(3):
            m = pb.ProxyMapping(id=f"q{i}", account_id=ACCOUNT, domain=f"q{i}.x")
            h.servicer.broadcast([(CLUSTER, m, False)])
        err = c.end()
        assert err is not None and err.code() == grpc.StatusCode.CANCELLED
        deadline = time.monotonic() + WAIT
        while "proxy-q" in {conn.proxy_id for conn in h.servicer.connections()}:
            assert time.monotonic() < deadline, "cancelled stream still registered"
            time.sleep(0.02)
    finally:
        h.close()


def test_sync_client_half_close_ends_stream_cleanly(harness: Harness, fx: Fixture) -> None:
    c = SyncClient(harness.stub, fx.token, "proxy-eof", capabilities=caps(**X_CAPS))
    c.snapshot()
    c._out.put(None)  # client EOF after the snapshot: the RPC ends with OK
    assert c.end() is None
    deadline = time.monotonic() + WAIT
    while fx.store.proxies.get("proxy-eof").status != "disconnected":
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_domain_change_is_removed_then_created(harness: Harness, fx: Fixture) -> None:
    x = connect_x(harness, fx)
    x.snapshot()
    fx.store.services.update(dataclasses.replace(fx.s, domain=f"renamed.{CLUSTER}"))
    got = [(m.id, m.type, m.domain) for m in x.next().mapping]
    assert got == [
        ("svc-1", pb.UPDATE_TYPE_REMOVED, DOMAIN),
        ("svc-1", pb.UPDATE_TYPE_CREATED, f"renamed.{CLUSTER}"),
    ]
    x.close()


def test_stop_service_cancels_live_mapping_streams(fx: Fixture) -> None:
    """stopService ends both kinds of mapping stream at once (CANCELLED with the
    reason), marks the proxies disconnected, and stops the server's threads."""
    h = Harness(fx.store, heartbeat_interval=0.2)
    try:
        gmu = connect_x(h, fx, "proxy-gmu")
        gmu.snapshot()
        sync = SyncClient(h.stub, fx.token, "proxy-sync", capabilities=caps(**X_CAPS))
        sync.snapshot()
        assert {c.proxy_id for c in h.servicer.connections()} == {"proxy-gmu", "proxy-sync"}
        ours = [t for t in threading.enumerate() if t.name.startswith("nbmanagement-grpc")]
        service = h.service
        service.stopService()
        for client in (gmu, sync):
            err = client.end()
            assert err is not None and err.code() == grpc.StatusCode.CANCELLED
            assert err.details() == "management shutting down"
        assert service.server_stopped is not None and service.server_stopped.wait(WAIT)
        # the pool finished its queued work (marking both proxies disconnected) first
        assert fx.store.proxies.get("proxy-sync").status != "connected"
        assert fx.store.proxies.get("proxy-gmu").status != "connected"
        left = [t.name for t in ours if t.is_alive()]
        assert not left, left
    finally:
        h.channel.close()


def test_heartbeats_continue_while_the_snapshot_awaits_its_ack(
        harness: Harness, fx: Fixture) -> None:
    """A gateway slow to apply (and ack) a large snapshot stays an active proxy:
    its row's last_seen keeps moving (heartbeat_interval 0.2 s here)."""
    c = SyncClient(harness.stub, fx.token, "proxy-slow", capabilities=caps(**X_CAPS))
    c.next()  # the (only) snapshot batch, deliberately not acked
    first = fx.store.proxies.get("proxy-slow").last_seen
    deadline = time.monotonic() + WAIT
    while fx.store.proxies.get("proxy-slow").last_seen <= first:
        assert time.monotonic() < deadline, "no heartbeat while the snapshot awaited its ack"
        time.sleep(0.05)
    assert fx.store.proxies.get("proxy-slow").status == "connected"
    c.close()
