"""Resume by revision (issue 18) over real gRPC: a proxy reconnecting with the
``nbgw_revision`` it last applied (``nbgw_resume_revision``, field 1001 of
GetMappingUpdateRequest and SyncMappingsInit) receives only the changes since
(``nbgw_resumed``) while the management's change log covers them, else the
full snapshot."""

from __future__ import annotations

import dataclasses

from nbgateway._proto import proxy_service_pb2 as pb
from tests.management import test_grpc_support as support
from tests.management.test_grpc_streams import by_id, connect_x, public
from tests.management.test_grpc_support import (
    X_CAPS,
    Fixture,
    Harness,
    SyncClient,
    caps,
)

grpc_store, fx, harness = support.grpc_store, support.fx, support.harness


def _first_stream(h: Harness, fx: Fixture) -> int:
    """Connect, read the snapshot, disconnect; the revision it brought the proxy to."""
    x = connect_x(h, fx)
    first = x.next()
    assert first.initial_sync_complete and not first.nbgw_resumed
    assert "svc-1" in by_id(first.mapping)
    assert first.nbgw_revision > 0
    x.close()
    x.end()
    return first.nbgw_revision


def test_resume_sends_only_the_changes_since(harness: Harness, fx: Fixture) -> None:
    rev = _first_stream(harness, fx)
    # while the proxy is away: one service created, svc-1 modified, one created and deleted
    # (each broadcast on its own: the dispatcher may coalesce changes that land together)
    added = public(fx, "added")
    harness.settle()
    fx.store.services.update(dataclasses.replace(fx.s, pass_host_header=True))
    harness.settle()
    gone = public(fx, "gone")
    harness.settle()
    fx.store.services.delete(gone.account_id, gone.id)
    harness.settle()

    x = connect_x(harness, fx, resume=rev)
    first = x.next()
    assert first.nbgw_resumed and first.initial_sync_complete
    assert first.nbgw_revision > rev
    got = [(m.id, m.type) for m in first.mapping]
    assert got == [
        (added.id, pb.UPDATE_TYPE_CREATED),
        ("svc-1", pb.UPDATE_TYPE_MODIFIED),
        (gone.id, pb.UPDATE_TYPE_CREATED),
        (gone.id, pb.UPDATE_TYPE_REMOVED),
    ]
    assert by_id(first.mapping)["svc-1"].pass_host_header is True
    assert by_id(first.mapping)[added.id].auth_token  # per-proxy one-time token issued
    # later changes follow on the same stream with a newer revision
    later = public(fx, "later")
    nxt = x.next()
    assert [m.id for m in nxt.mapping] == [later.id]
    assert nxt.nbgw_revision > first.nbgw_revision and not nxt.initial_sync_complete
    x.close()


def test_resume_at_the_current_revision_is_an_empty_resumed_message(
        harness: Harness, fx: Fixture) -> None:
    rev = _first_stream(harness, fx)
    x = connect_x(harness, fx, resume=rev)
    first = x.next()
    assert first.nbgw_resumed and first.initial_sync_complete
    assert list(first.mapping) == [] and first.nbgw_revision == rev
    x.close()


def test_unknown_revision_gets_the_full_snapshot(harness: Harness, fx: Fixture) -> None:
    rev = _first_stream(harness, fx)
    # an older process's revision (below this one's start) and one from the future
    for bogus in (1, rev + 10**12):
        x = connect_x(harness, fx, resume=bogus)
        first = x.next()
        assert not first.nbgw_resumed and first.initial_sync_complete
        assert "svc-1" in by_id(first.mapping)
        x.close()
        x.end()


def test_revision_trimmed_from_the_log_gets_the_full_snapshot(
        harness: Harness, fx: Fixture) -> None:
    rev = _first_stream(harness, fx)
    harness.servicer.streams.changes.size = 2
    for i in range(3):
        public(fx, f"s{i}")
        harness.settle()  # one broadcast each
    x = connect_x(harness, fx, resume=rev)
    first = x.next()
    assert not first.nbgw_resumed
    assert {"svc-1"} | {m.id for m in first.mapping} == {m.id for m in first.mapping}
    assert len(first.mapping) == 4  # svc-1 and the three new ones, as a snapshot
    x.close()
    x.end()
    # a revision still in the (bounded) log resumes
    x = connect_x(harness, fx, resume=first.nbgw_revision - 1)
    resumed = x.next()
    assert resumed.nbgw_resumed and [m.domain for m in resumed.mapping] == [
        f"s2.{support.CLUSTER}"]
    x.close()


def test_sync_mappings_resume_is_acked_then_streams_updates(
        harness: Harness, fx: Fixture) -> None:
    c = SyncClient(harness.stub, fx.token, "proxy-s", capabilities=caps(**X_CAPS))
    c.snapshot()
    c.close()
    c.end()
    rev = harness.servicer.streams.revision
    added = public(fx, "while-away")
    harness.settle()
    init = pb.SyncMappingsInit(proxy_id="proxy-s", address=support.CLUSTER, version="t",
                               capabilities=caps(**X_CAPS), nbgw_resume_revision=rev)
    c = SyncClient(harness.stub, fx.token, "proxy-s",
                   first=pb.SyncMappingsRequest(init=init))
    resp = c.next()
    assert resp.nbgw_resumed and resp.initial_sync_complete
    assert [m.id for m in resp.mapping] == [added.id]
    c.ack()
    harness.wait_event(lambda n, f: n == "ack" and f.get("proxy_id") == "proxy-s")
    later = public(fx, "after-resume")
    assert [m.id for m in c.next().mapping] == [later.id]
    c.close()


def test_resume_is_filtered_like_a_broadcast(harness: Harness, fx: Fixture) -> None:
    """A proxy without supports_private_service never learns a private service
    from the log either."""
    x = support.SyncClient(harness.stub, fx.token, "proxy-pub", auto_ack=True)
    x.snapshot()
    rev = harness.servicer.streams.revision
    x.close()
    x.end()
    public(fx, "secret", private=True, access_groups=("grp-admins",))
    visible = public(fx, "visible")
    harness.settle()
    init = pb.SyncMappingsInit(proxy_id="proxy-pub", address=support.CLUSTER, version="t",
                               nbgw_resume_revision=rev)
    c = SyncClient(harness.stub, fx.token, "proxy-pub", auto_ack=True,
                   first=pb.SyncMappingsRequest(init=init))
    resp = c.next()
    assert resp.nbgw_resumed
    assert [m.id for m in resp.mapping] == [visible.id]
    c.close()
