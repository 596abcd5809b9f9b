"""Concurrent writers lose nothing (SQLite and PostgreSQL), counts and contents checked."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from nbgateway.management.model import Group, Peer, Service, Target, TargetOptions

WRITERS = 50


def _service(account_id: str, i: int, group_id: str) -> Service:
    return Service(
        account_id=account_id,
        name=f"svc-{i}",
        domain=f"svc-{i}.eu.proxy.netbird.io",
        private=True,
        access_groups=(group_id,),
        targets=(
            Target(
                target_type="cluster",
                target_id="eu.proxy.netbird.io",
                host=f"backend-{i}.lan",
                port=8000 + i,
                options=TargetOptions(direct_upstream=True),
            ),
        ),
    )


def test_50_concurrent_writers_create_groups_and_services(store_factory, account):
    # two Store instances (two connection pools) share the load, as two processes would
    stores = [store_factory(), store_factory()]

    def work(i: int) -> tuple[str, str]:
        s = stores[i % 2]
        g = s.groups.create(Group(account_id=account.id, name=f"group-{i}"))
        svc = s.services.create(_service(account.id, i, g.id))
        return g.id, svc.id

    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        results = list(pool.map(work, range(WRITERS)))

    store = stores[0]
    groups = {g.name: g for g in store.groups.list(account.id)}
    services = {s.name: s for s in store.services.list(account.id)}
    assert len(groups) == WRITERS + 1  # plus "All"
    assert len(services) == WRITERS
    for i, (gid, sid) in enumerate(results):
        assert groups[f"group-{i}"].id == gid
        svc = services[f"svc-{i}"]
        assert svc.id == sid
        assert svc.access_groups == (gid,)
        assert svc.domain == f"svc-{i}.eu.proxy.netbird.io"
        assert [(t.host, t.port) for t in svc.targets] == [(f"backend-{i}.lan", 8000 + i)]


def test_concurrent_read_modify_write_loses_no_update(store_factory, account):
    stores = [store_factory(), store_factory()]
    shared = stores[0].groups.create(Group(account_id=account.id, name="shared"))
    peers = [
        stores[0].peers.create(Peer(account_id=account.id, name=f"p{i}", key=f"key-{i}"))
        for i in range(WRITERS)
    ]

    def add(i: int) -> None:
        stores[i % 2].groups.add_peers(account.id, shared.id, [peers[i].id])

    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        list(pool.map(add, range(WRITERS)))

    members = stores[1].groups.get(account.id, shared.id).peers
    assert sorted(members) == sorted(p.id for p in peers)
    assert len(members) == WRITERS


def test_concurrent_peer_creation_allocates_unique_addresses(store_factory, account):
    stores = [store_factory(), store_factory()]

    def create(i: int) -> Peer:
        return stores[i % 2].peers.create(Peer(account_id=account.id, name=f"p{i}", key=f"k{i}"))

    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        created = list(pool.map(create, range(WRITERS)))

    ips = [p.ip for p in created]
    assert len(set(ips)) == WRITERS
    assert len({p.ipv6 for p in created}) == WRITERS
    assert sorted(ips, key=lambda a: tuple(map(int, a.split(".")))) == [
        f"100.64.0.{i}" for i in range(1, WRITERS + 1)
    ]
    assert len(stores[0].peers.list(account.id)) == WRITERS


def test_concurrent_duplicate_domain_only_one_wins(store_factory, account):
    stores = [store_factory(), store_factory()]
    g = stores[0].groups.create(Group(account_id=account.id, name="g"))
    from nbgateway.management.errors import Conflict

    def attempt(i: int) -> str:
        svc = _service(account.id, 0, g.id)
        try:
            stores[i % 2].services.create(svc)
        except Conflict as exc:
            return exc.message
        return "created"

    with ThreadPoolExecutor(max_workers=20) as pool:
        outcomes = list(pool.map(attempt, range(20)))
    assert outcomes.count("created") == 1
    assert set(outcomes) == {"created", "domain already taken"}
    assert len(stores[1].services.list(account.id)) == 1


def test_concurrent_duplicate_domain_across_accounts(store_factory):
    """Different accounts do not share a lock: the unique index decides, the loser
    is retried and gets the typed Conflict, nothing half-stored."""
    from nbgateway.management.errors import Conflict
    from nbgateway.management.model import Account

    stores = [store_factory(), store_factory()]
    accounts = [stores[0].accounts.create(Account(id=f"acct-{i}")) for i in range(12)]
    gids = [stores[0].groups.create(Group(account_id=a.id, name="g")).id for a in accounts]

    def attempt(i: int) -> str:
        try:
            stores[i % 2].services.create(_service(accounts[i].id, 0, gids[i]))
        except Conflict as exc:
            return exc.message
        return "created"

    with ThreadPoolExecutor(max_workers=12) as pool:
        outcomes = list(pool.map(attempt, range(12)))
    assert outcomes.count("created") == 1
    assert set(outcomes) == {"created", "domain already taken"}
    assert len(stores[1].services.list_all()) == 1


def _process_writer(dsn: str, account_id: str, prefix: str, count: int) -> None:
    from nbgateway.management.store import Store

    store = Store.open(dsn)
    try:
        for i in range(count):
            store.groups.create(Group(account_id=account_id, name=f"{prefix}-{i}"))
            store.peers.create(
                Peer(account_id=account_id, name=f"{prefix}-{i}", key=f"{prefix}-{i}")
            )
    finally:
        store.close()


def test_sqlite_two_processes_write_the_same_file(tmp_path):
    """Cross-process writers (no shared in-process lock): BEGIN IMMEDIATE plus the
    busy timeout serialise them; nothing is lost and addresses stay unique."""
    import multiprocessing

    from nbgateway.management.model import Account
    from nbgateway.management.store import Store

    dsn = f"sqlite:///{tmp_path / 'shared.db'}"
    store = Store.open(dsn)
    try:
        acct = store.accounts.create(Account(id="acct-mp"))
        ctx = multiprocessing.get_context("spawn")
        procs = [
            ctx.Process(target=_process_writer, args=(dsn, acct.id, f"w{n}", 15)) for n in range(2)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0, 0]
        names = {g.name for g in store.groups.list(acct.id)}
        assert names == {"All"} | {f"w{n}-{i}" for n in range(2) for i in range(15)}
        peers = store.peers.list(acct.id)
        assert len(peers) == 30 and len({p.ip for p in peers}) == 30
    finally:
        store.close()


def test_concurrent_bootstrap_hands_out_one_admin_token(store_factory):
    stores = [store_factory(), store_factory()]

    def boot(i: int) -> str | None:
        return stores[i % 2].accounts.ensure_default().admin_token

    with ThreadPoolExecutor(max_workers=10) as pool:
        tokens = list(pool.map(boot, range(10)))
    issued = [t for t in tokens if t is not None]
    assert len(issued) == 1
    user, _ = stores[1].users.authenticate_token(issued[0])
    assert user.role == "owner"
    assert len(stores[0].accounts.list()) == 1
    assert len(stores[0].users.list("default")) == 1
