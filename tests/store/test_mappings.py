"""MappingStore semantics: CREATED/MODIFIED/REMOVED, initial sync and
reconciliation, plus hardening over upstream."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.interfaces import IMappingStore
from nbgateway.store.mappings import MappingObserver, MappingStore

C, M, R = pb.UPDATE_TYPE_CREATED, pb.UPDATE_TYPE_MODIFIED, pb.UPDATE_TYPE_REMOVED


def mp(sid: str, domain: str = "", kind: int = C, account: str = "acc1", **kw) -> pb.ProxyMapping:
    return pb.ProxyMapping(
        type=kind,
        id=sid,
        account_id=account,
        domain=domain or f"{sid}.example",
        auth_token=kw.pop("token", f"t-{sid}"),
        **kw,
    )


class Log(MappingObserver):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def account_added(self, account_id):
        self.events.append(("account+", account_id))

    def account_removed(self, account_id):
        self.events.append(("account-", account_id))

    def mapping_added(self, mapping):
        self.events.append(("add", mapping.id))

    def mapping_changed(self, old, new):
        self.events.append(("change", old.id, old.domain, new.domain))

    def mapping_refreshed(self, mapping):
        self.events.append(("refresh", mapping.id, mapping.auth_token))

    def mapping_removed(self, mapping):
        self.events.append(("remove", mapping.id))

    def snapshot_reconciled(self, removed_ids):
        self.events.append(("reconciled", removed_ids))


def make() -> tuple[MappingStore, Log]:
    store, log = MappingStore(), Log()
    store.add_observer(log)
    store.stream_started()
    return store, log


def test_provides_interface() -> None:
    assert IMappingStore.providedBy(MappingStore())


def test_created_adds_mapping_account_and_domain() -> None:
    store, log = make()
    assert store.apply_batch([mp("s1", "App.Example")], False) is None
    assert store.get("s1").domain == "App.Example"
    assert store.lookup_domain("app.example.").id == "s1"
    assert store.accounts() == frozenset({"acc1"})
    assert log.events == [("account+", "acc1"), ("add", "s1")]


def test_created_redelivery_with_same_content_only_refreshes_token() -> None:
    store, log = make()
    store.apply_batch([mp("s1")], False)
    log.events.clear()
    store.apply_batch([mp("s1", token="fresh")], False)
    assert log.events == [("refresh", "s1", "fresh")]
    assert store.get("s1").auth_token == "fresh"


def test_created_for_known_id_with_new_domain_is_a_modification() -> None:
    # Hardening: upstream leaves the old domain routable.
    store, log = make()
    store.apply_batch([mp("s1", "old.example")], False)
    log.events.clear()
    store.apply_batch([mp("s1", "new.example")], False)
    assert log.events == [("change", "s1", "old.example", "new.example")]
    assert store.lookup_domain("old.example") is None
    assert store.lookup_domain("new.example").id == "s1"


def test_modified_replaces_the_full_mapping() -> None:
    store, log = make()
    store.apply_batch([mp("s1", private=True, pass_host_header=True)], False)
    store.apply_batch([mp("s1", kind=M, private=False)], False)
    stored = store.get("s1")
    assert not stored.private
    assert not stored.pass_host_header  # full mapping, not a delta
    assert log.events[-1][0] == "change"


def test_modified_for_unknown_id_is_added() -> None:
    store, log = make()
    store.apply_batch([mp("s9", kind=M)], False)
    assert store.get("s9") is not None
    assert log.events == [("account+", "acc1"), ("add", "s9")]


def test_removed_deletes_and_last_mapping_of_account_removes_account() -> None:
    store, log = make()
    store.apply_batch([mp("s1"), mp("s2"), mp("s3", account="acc2")], False)
    log.events.clear()
    store.apply_batch([mp("s1", kind=R)], False)
    assert log.events == [("remove", "s1")]
    assert store.accounts() == frozenset({"acc1", "acc2"})
    store.apply_batch([mp("s2", kind=R)], False)
    assert log.events[-2:] == [("remove", "s2"), ("account-", "acc1")]
    assert store.accounts() == frozenset({"acc2"})
    assert store.lookup_domain("s1.example") is None
    assert store.mappings_for_account("acc1") == []


def test_removed_for_unknown_id_is_ignored_and_counted() -> None:
    store, log = make()
    store.apply_batch([mp("ghost", kind=R)], False)
    assert log.events == []
    assert store.unknown_removals == 1


def test_batch_is_applied_in_order() -> None:
    store, log = make()
    store.apply_batch([mp("s1"), mp("s1", kind=R), mp("s1", "again.example")], False)
    assert [e[0] for e in log.events] == [
        "account+",
        "add",
        "remove",
        "account-",
        "account+",
        "add",
    ]
    assert store.get("s1").domain == "again.example"


def test_initial_sync_complete_removes_mappings_absent_from_snapshot() -> None:
    store, log = make()
    store.apply_batch([mp("s1"), mp("s2"), mp("s3")], True)
    store.stream_ended()
    store.stream_started()  # reconnect: fresh snapshot
    log.events.clear()
    store.apply_batch([mp("s2")], False)
    assert store.get("s1") is not None  # not reconciled before the flag
    store.apply_batch([mp("s3")], True)
    assert store.get("s1") is None
    assert {m.id for m in store.all()} == {"s2", "s3"}
    assert ("remove", "s1") in log.events
    assert log.events[-1] == ("reconciled", frozenset({"s1"}))
    assert store.snapshots_completed == 2


def test_stream_ending_before_snapshot_complete_reconciles_nothing() -> None:
    store, _ = make()
    store.apply_batch([mp("s1"), mp("s2")], True)
    store.stream_ended()
    store.stream_started()
    store.apply_batch([mp("s2")], False)
    store.stream_ended()  # dropped mid-snapshot
    assert {m.id for m in store.all()} == {"s1", "s2"}
    store.stream_started()
    store.apply_batch([mp("s1")], True)  # the new stream's snapshot is s1 only
    assert {m.id for m in store.all()} == {"s1"}


def test_messages_after_snapshot_complete_never_reconcile() -> None:
    store, _ = make()
    store.apply_batch([mp("s1")], True)
    store.apply_batch([mp("s2")], False)
    store.apply_batch([mp("s3")], True)  # a stray flag after the snapshot
    assert {m.id for m in store.all()} == {"s1", "s2", "s3"}
    assert store.snapshots_completed == 1


def test_empty_snapshot_removes_everything() -> None:
    store, log = make()
    store.apply_batch([mp("s1"), mp("s2", account="acc2")], True)
    store.stream_ended()
    store.stream_started()
    store.apply_batch([], True)
    assert len(store) == 0
    assert store.accounts() == frozenset()
    assert ("account-", "acc2") in log.events
    assert store.initial_sync_complete


def test_initial_sync_complete_flag_set_only_by_a_complete_snapshot() -> None:
    store, _ = make()
    store.apply_batch([mp("s1")], False)
    assert not store.initial_sync_complete
    store.apply_batch([], True)
    assert store.initial_sync_complete


def test_malformed_mappings_are_dropped_and_counted() -> None:
    store, _ = make()
    store.apply_batch([pb.ProxyMapping(type=C, id=""), mp("s1"), mp("s2", kind=7)], False)
    assert [m.id for m in store.all()] == ["s1"]
    assert store.dropped == 2


def test_table_bound_drops_new_mappings_but_keeps_existing() -> None:
    store = MappingStore(max_mappings=2)
    store.stream_started()
    store.apply_batch([mp("s1"), mp("s2"), mp("s3")], False)
    assert len(store) == 2 and store.dropped == 1
    store.apply_batch([mp("s1", "changed.example", kind=M)], False)
    assert store.get("s1").domain == "changed.example"


def test_stored_mapping_is_a_copy() -> None:
    store, _ = make()
    m = mp("s1", "a.example")
    store.apply_batch([m], False)
    m.domain = "mutated.example"
    assert store.get("s1").domain == "a.example"


def test_moving_a_service_between_accounts_is_remove_then_add() -> None:
    store, log = make()
    store.apply_batch([mp("s1", account="a")], False)
    log.events.clear()
    store.apply_batch([mp("s1", account="b", kind=M)], False)
    assert log.events == [("remove", "s1"), ("account-", "a"), ("account+", "b"), ("add", "s1")]


def test_same_domain_on_two_ids_keeps_lookup_consistent() -> None:
    store, _ = make()
    store.apply_batch([mp("s1", "x.example"), mp("s2", "x.example")], False)
    assert store.lookup_domain("x.example").id == "s2"
    store.apply_batch([mp("s2", kind=R)], False)
    assert store.lookup_domain("x.example").id == "s1"


def test_observer_deferreds_delay_batch_completion_and_failures_are_contained() -> None:
    store = MappingStore()
    held: list[Deferred[None]] = []

    class Slow(MappingObserver):
        def account_added(self, account_id):
            d: Deferred[None] = Deferred()
            held.append(d)
            return d

        def mapping_added(self, mapping):
            raise RuntimeError("observer bug")

    store.add_observer(Slow())
    store.stream_started()
    done = store.apply_batch([mp("s1")], False)
    assert done is not None and not done.called
    assert store.get("s1") is not None  # state applied regardless
    held[0].errback(RuntimeError("create peer failed"))
    assert done.called
    results: list[object] = []
    done.addBoth(results.append)
    assert results == [None]  # never fails


def test_removed_observer_hears_nothing() -> None:
    store, log = make()
    store.remove_observer(log)
    store.apply_batch([mp("s1")], False)
    assert log.events == []


ops = st.lists(
    st.tuples(
        st.sampled_from([C, M, R]),
        st.sampled_from(["s1", "s2", "s3", "s4"]),
        st.sampled_from(["a", "b"]),
        st.sampled_from(["x", "y", "z"]),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(ops=ops)
def test_store_matches_a_dict_model_and_indexes_stay_consistent(ops) -> None:
    store = MappingStore()
    store.stream_started()
    model: dict[str, tuple[str, str]] = {}
    for kind, sid, account, dom in ops:
        store.apply_batch([mp(sid, f"{dom}.example", kind=kind, account=account)], False)
        if kind == R:
            model.pop(sid, None)
        else:
            model[sid] = (account, f"{dom}.example")
    assert {m.id: (m.account_id, m.domain) for m in store.all()} == model
    assert store.accounts() == frozenset(a for a, _ in model.values())
    for account in store.accounts():
        assert {m.id for m in store.mappings_for_account(account)} == {
            s for s, (a, _) in model.items() if a == account
        }
    for _, domain in model.values():
        assert store.lookup_domain(domain).domain == domain
    for dom in ("x", "y", "z"):
        if all(d != f"{dom}.example" for _, d in model.values()):
            assert store.lookup_domain(f"{dom}.example") is None


def test_debug_log_of_applied_mapping_is_redacted() -> None:
    from twisted.logger import formatEvent, globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        store, _ = make()
        store.apply_batch([mp("s1", token="one-time-secret")], False)
    finally:
        globalLogPublisher.removeObserver(events.append)
    text = " ".join(formatEvent(e) for e in events)
    assert "s1.example" in text
    assert "one-time-secret" not in text
    assert "[REDACTED]" in text


def test_kept_serialized_and_read_as_fresh_copies():
    """Memory: the store holds each mapping as bytes, not a parsed message
    (a upb arena each); reads parse a copy equal to what was applied."""
    store = MappingStore()
    m = mp("s1", path=[pb.PathMapping(path="/", target="http://10.0.0.1:80/")])
    store.apply_batch([m], False)
    assert all(type(v) is bytes for v in store._by_id.values())
    got = store.get("s1")
    assert got == m and got is not store.get("s1")
    got.domain = "changed.example"  # a caller's copy cannot change the store
    assert store.get("s1").domain == "s1.example"
    assert store.lookup_domain("S1.example.") == m
    assert store.mappings_for_account("acc1") == [m] and store.all() == [m]
    # a redelivery with only a new token is still a refresh, a change a change
    log = Log()
    store.add_observer(log)
    store.apply_batch([mp("s1", token="fresh", path=list(m.path))], False)
    store.apply_batch([mp("s1", domain="other.example", kind=M)], False)
    assert [e[0] for e in log.events] == ["refresh", "change"]
    assert store.lookup_domain("other.example").id == "s1"
    assert store.lookup_domain("s1.example") is None


def test_one_account_cannot_fill_the_table_for_the_others() -> None:
    """Account "big" at its bound: its next new mapping is dropped (counted
    per account), another account's new mapping is still stored; changes to
    big's stored mappings still apply.  Before, the only bound was the
    table's, so one tenant's services could fill it and every other
    account's new service was dropped."""
    store = MappingStore(max_mappings=10, max_per_account=3)
    store.stream_started()
    store.apply_batch([mp(f"b{i}", account="big") for i in range(5)], False)
    assert len(store.mappings_for_account("big")) == 3
    assert store.dropped == 2 and store.dropped_by_account == {"big": 2}
    store.apply_batch([mp("o1", account="other")], False)
    assert store.get("o1") is not None
    store.apply_batch([mp("b0", "moved.example", account="big", kind=M)], False)
    assert store.get("b0").domain == "moved.example"
    # a service moving into a full account is removed from its old one and dropped
    store.apply_batch([mp("o1", account="big", kind=M)], False)
    assert store.get("o1") is None and store.dropped_by_account == {"big": 3}
    # room again after a removal
    store.apply_batch([mp("b1", kind=R, account="big"), mp("b9", account="big")], False)
    assert store.get("b9") is not None
