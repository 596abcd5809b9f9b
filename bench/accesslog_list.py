"""Access-log list queries (``GET /api/events/proxy``) at millions of rows on PostgreSQL.

Loads ``--rows`` access-log entries (default 10,000,000: ``--accounts`` 10
accounts of 1,000,000, the per-account retention default) into the real
schema (``Store.open`` runs the migrations) with server-side
``INSERT ... SELECT ... FROM generate_series`` in chunks: timestamps rising
with the row number over 30 days (the heap in ingestion order, accounts
interleaved), 8 services, 200 users per account with a ``user_groups`` JSON
as the store writes it (20 % anonymous), ~96 % 2xx/3xx with 4xx/5xx and
auth failures, several hosts and paths.  Then VACUUM ANALYZE, and
``store.access_logs.list`` is timed for dashboard query shapes (each shape
``--runs`` times with varied parameters, after ``--warm`` untimed calls so
psycopg's prepared statements are past their generic-plan switch): p50, p95,
max wall milliseconds per shape, and for the slowest run of each shape
over ``--explain-ms`` the PostgreSQL plan (EXPLAIN (ANALYZE, BUFFERS)) of
its count and page queries, summarised.

The load is kept: ``--keep DIR`` runs the cluster in DIR (created and loaded
on first use, started again and reused afterwards when it holds ``--rows``
rows; ``--stop`` stops it at exit, ``--drop`` deletes it).  Without
``--keep``: ``NBGW_TEST_PG_DSN`` (a fresh schema, dropped at exit) or the
throwaway cluster of tests/pgcluster.py.

    .venv/bin/python bench/accesslog_list.py --keep /tmp/alist-pg
    .venv/bin/python bench/accesslog_list.py --keep /tmp/alist-pg --shapes default,failed
    .venv/bin/python bench/accesslog_list.py --rows 200000 --accounts 2   # quick

The machine's load average is printed with the figures (``os.getloadavg``).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nbgateway.management.model import AccessLogQuery, Account, Group, User
from nbgateway.management.store import Store

CLUSTER = "eu.proxy.netbird.io"
USERS = 200
GROUPS = 12
SERVICES = 8
DAYS = 30
#: the load's "now": every timestamp is within DAYS before it
NOW = datetime(2026, 12, 1, tzinfo=UTC)


# -- the cluster ------------------------------------------------------------------------------


@contextmanager
def kept_cluster(root: str, stop: bool, database: str = "bench") -> Iterator[str]:
    """A cluster living in *root*: initdb on first use, else started again."""
    from tests import pgcluster

    bindir = pgcluster._bindir()
    if bindir is None:
        raise SystemExit("no PostgreSQL server binaries (initdb/pg_ctl)")
    owner = pgcluster._run_as()
    kw: dict[str, Any] = {"capture_output": True, "text": True, "timeout": 120, "cwd": "/"}
    if owner:
        kw.update(user=owner[0], group=owner[1], extra_groups=[])
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
    data = os.path.join(root, "data")
    port_file = os.path.join(root, "port")
    pg_ctl = os.path.join(bindir, "pg_ctl")
    if not os.path.isdir(data):
        os.makedirs(root, exist_ok=True)
        os.chmod(root, 0o700)
        if owner:
            os.chown(root, *owner)
        r = subprocess.run([os.path.join(bindir, "initdb"), "-D", data, "-U", pgcluster.ROLE,
                            "-A", "trust", "-E", "UTF8", "--no-sync"], env=env, **kw)
        if r.returncode != 0:
            raise SystemExit(f"initdb failed: {r.stderr[-500:]}")
        with open(port_file, "w") as f:
            f.write(str(pgcluster._free_port()))
    with open(port_file) as f:
        port = int(f.read())
    running = subprocess.run([pg_ctl, "-D", data, "status"], env=env, **kw).returncode == 0
    if not running:
        # a dashboard-sized server: shared_buffers 1 GB, the rest PostgreSQL's defaults
        opts = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c shared_buffers=1GB "
                "-c max_wal_size=4GB -c maintenance_work_mem=512MB")
        r = subprocess.run([pg_ctl, "-D", data, "-o", opts, "-l", os.path.join(root, "log"),
                            "-w", "start"], env=env, **kw)
        if r.returncode != 0:
            raise SystemExit(f"pg_ctl start failed: {r.stderr[-500:]}")
    base = f"postgresql://{pgcluster.ROLE}@127.0.0.1:{port}"
    import psycopg

    with psycopg.connect(f"{base}/postgres", autocommit=True) as c:
        if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                         (database,)).fetchone():
            c.execute(f'CREATE DATABASE "{database}"')
    try:
        yield f"{base}/{database}"
    finally:
        if stop:
            subprocess.run([pg_ctl, "-D", data, "-m", "fast", "-w", "stop"], env=env, **kw)


@contextmanager
def throwaway_schema() -> Iterator[str]:
    import psycopg

    from tests import pgcluster

    dsn = pgcluster.dsn()
    if not dsn:
        raise SystemExit(f"no PostgreSQL: {pgcluster.unavailable_reason()}")
    schema = "nbgw_alist_" + uuid.uuid4().hex[:8]
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in dsn else "?"
    try:
        yield f"{dsn}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# -- the load ---------------------------------------------------------------------------------


def account_id(a: int) -> str:
    return f"acct{a:03d}"


def seed_directory(store: Store, accounts: int) -> None:
    """Accounts, their groups and users (the group_id and user filters read them)."""
    for a in range(accounts):
        aid = account_id(a)
        store.accounts.create(Account(id=aid, domain=f"a{a}.bench"))
        for g in range(GROUPS):
            store.groups.create(Group(id=f"{aid}-g{g}", account_id=aid, name=f"team-{g}"))
        for u in range(USERS):
            store.users.create(User(id=f"{aid}-u{u}", account_id=aid,
                                    email=f"user{u}@a{a}.example", name=f"User {u}",
                                    auto_groups=(f"{aid}-g{u % GROUPS}",)))


# One chunk: rows lo..hi-1.  h is a per-row hash in [0, 2^31); r1/r2 derived
# from it pick the values.  Row i of the load is account i % accounts, at time
# NOW - DAYS + i * (DAYS / rows) (+ jitter): rising with i, as ingested.
_LOAD_SQL = """
INSERT INTO access_log_entries (
    id, account_id, service_id, timestamp, location_connection_ip,
    location_country_code, location_city_name, location_geo_name_id, subdivision_code,
    method, host, path, duration, status_code, reason, user_id, auth_method_used,
    bytes_upload, bytes_download, protocol, metadata, agent_network, user_groups,
    upstream_target)
SELECT
    substr(md5(i::text), 1, 20),
    'acct' || lpad((i % {accounts})::text, 3, '0'),
    'acct' || lpad((i % {accounts})::text, 3, '0') || '-svc' || (h % 8),
    '{start}'::timestamp + (i * {step}) * interval '1 microsecond',
    CASE WHEN r1 < 50 THEN '10.' || (h % 4) || '.' || (h % 200) || '.' || (h % 250)
         ELSE '203.0.' || (h % 113) || '.' || (h % 251) END,
    (ARRAY['DE','US','FR','NL','GB','JP'])[1 + h % 6], 'City', 1000 + h % 50, '',
    CASE WHEN r1 < 80 THEN 'GET' WHEN r1 < 94 THEN 'POST' WHEN r1 < 98 THEN 'PUT'
         ELSE 'DELETE' END,
    'app' || (h % 8) || '.a' || (i % {accounts}) || '.example.com',
    (ARRAY['/', '/api/v1/items', '/api/v1/users', '/login', '/static/app.js',
           '/static/style.css', '/healthz', '/api/v1/orders'])[1 + (h / 8) % 8]
        || CASE WHEN r2 < 30 THEN '/' || (h % 10000) ELSE '' END,
    1000 + h % 500000,
    CASE WHEN r2 < 90 THEN 200 WHEN r2 < 93 THEN 304 WHEN r2 < 95 THEN 302
         WHEN r2 < 97 THEN 404 WHEN r2 < 98 THEN 401 WHEN r2 < 99 THEN 500 ELSE 502 END,
    CASE WHEN r2 = 97 THEN 'authentication required' ELSE '' END,
    CASE WHEN r1 < 80 THEN 'acct' || lpad((i % {accounts})::text, 3, '0') || '-u' || u
         ELSE '' END,
    CASE WHEN r1 < 80 THEN 'oidc' ELSE '' END,
    h % 4000, h % 200000, 'http', NULL, false,
    CASE WHEN r1 < 80 THEN '["All","team-' || (u % 12) || '"]' ELSE NULL END,
    '10.0.0.' || (h % 4) || ':8080'
FROM (
    SELECT i, h, h % 100 AS r1, abs(hashint8(-i - 1)) % 100 AS r2, (h / 7) % 200 AS u
    FROM (SELECT i, abs(hashint8(i)) % 2147483647 AS h
          FROM generate_series({lo}::bigint, {hi}::bigint - 1) AS i) s
) t
"""


def load(store: Store, dsn_for_psycopg: str, rows: int, accounts: int, chunk: int) -> None:
    import psycopg

    t0 = time.monotonic()
    seed_directory(store, accounts)
    start = (NOW - timedelta(days=DAYS)).replace(tzinfo=None)
    step = DAYS * 86400 * 1_000_000 // rows
    with psycopg.connect(dsn_for_psycopg, autocommit=True) as c:
        for lo in range(0, rows, chunk):
            hi = min(rows, lo + chunk)
            c.execute(_LOAD_SQL.format(accounts=int(accounts), start=start.isoformat(),
                                       step=int(step), lo=lo, hi=hi).encode())
            print(f"  loaded {hi:,} rows ({time.monotonic() - t0:.0f} s)", flush=True)
        print("  VACUUM ANALYZE ...", flush=True)
        c.execute("VACUUM ANALYZE access_log_entries")
        c.execute("CREATE TABLE IF NOT EXISTS bench_loaded (rows bigint, accounts int)")
        c.execute("DELETE FROM bench_loaded")
        c.execute("INSERT INTO bench_loaded VALUES (%s, %s)", (rows, accounts))
    print(f"  load: {rows:,} rows in {time.monotonic() - t0:.0f} s", flush=True)


def loaded(dsn: str) -> tuple[int, int] | None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        if not c.execute("SELECT to_regclass('bench_loaded')").fetchone()[0]:
            return None
        row = c.execute("SELECT rows, accounts FROM bench_loaded").fetchone()
        return (row[0], row[1]) if row else None


# -- the query shapes -------------------------------------------------------------------------


def shapes(accounts: int) -> dict[str, Callable[[random.Random], tuple[str, AccessLogQuery]]]:
    """name -> (rng -> (account id, query)); varied parameters per run."""

    def acct(rng: random.Random) -> str:
        return account_id(rng.randrange(accounts))

    def day(rng: random.Random) -> datetime:
        return NOW - timedelta(days=rng.randrange(1, DAYS - 1), minutes=rng.randrange(1440))

    Q = AccessLogQuery
    return {
        "default p1 size 10": lambda r: (acct(r), Q(page_size=10)),
        "default p1 size 50": lambda r: (acct(r), Q(page_size=50)),
        "pages 2..20 size 50": lambda r: (acct(r), Q(page=r.randrange(2, 21), page_size=50)),
        "deep page 2000 size 50": lambda r: (acct(r), Q(page=2000, page_size=50)),
        "last page asc size 50": lambda r: (acct(r), Q(page=r.randrange(1, 20), page_size=50,
                                                       sort_order="asc")),
        "sort status_code": lambda r: (acct(r), Q(sort_by="status_code")),
        "sort duration asc": lambda r: (acct(r), Q(sort_by="duration", sort_order="asc")),
        "sort duration desc p1-5": lambda r: (acct(r), Q(sort_by="duration",
                                                         page=r.randrange(1, 6))),
        "sort url": lambda r: (acct(r), Q(sort_by="url")),
        "sort url asc p1-20": lambda r: (acct(r), Q(sort_by="url", sort_order="asc",
                                                    page=r.randrange(1, 21))),
        "sort method": lambda r: (acct(r), Q(sort_by="method", sort_order=r.choice(
            ["asc", "desc"]))),
        "sort status_code asc p20": lambda r: (acct(r), Q(sort_by="status_code",
                                                          sort_order="asc", page=20)),
        "sort status_code + svc": lambda r: (a := acct(r), Q(
            sort_by="status_code", service_id=f"{a}-svc{r.randrange(8)}")),
        "status=failed": lambda r: (acct(r), Q(status="failed")),
        "status=failed p5": lambda r: (acct(r), Q(status="failed", page=5)),
        "status=success": lambda r: (acct(r), Q(status="success")),
        "status_code=500": lambda r: (acct(r), Q(status_code=r.choice([500, 502, 404]))),
        "method=DELETE": lambda r: (acct(r), Q(method=r.choice(["DELETE", "put"]))),
        "status_code=200/302": lambda r: (acct(r), Q(status_code=r.choice([200, 302]))),
        "host + failed": lambda r: (acct(r), Q(host=f"app{r.randrange(8)}.",
                                               status="failed")),
        "user_id": lambda r: (a := acct(r), Q(user_id=f"{a}-u{r.randrange(USERS)}")),
        "service_id": lambda r: (a := acct(r), Q(service_id=f"{a}-svc{r.randrange(8)}")),
        "source_ip": lambda r: (acct(r), Q(source_ip=f"203.0.{r.randrange(113)}."
                                                     f"{r.randrange(251)}")),
        # a busy address (about 1,100 entries over the 30 days)
        "source_ip 10/8 + 7 days": lambda r: (acct(r), Q(
            source_ip=f"10.{(h := r.randrange(10) * 100 + r.randrange(50)) % 4}.{h % 200}."
                      f"{h % 250}",
            start_date=NOW - timedelta(days=7))),
        "source_ip sort duration": lambda r: (acct(r), Q(
            source_ip=f"203.0.{r.randrange(113)}.{r.randrange(251)}", sort_by="duration")),
        "host substring": lambda r: (acct(r), Q(host=f"app{r.randrange(8)}.")),
        "path substring": lambda r: (acct(r), Q(path=r.choice(["login", "orders", "/42"]))),
        # one id (what a user debugging one request types), a rare or absent term
        "path id": lambda r: (acct(r), Q(path=f"/{r.randrange(10000)}")),
        "path rare": lambda r: (acct(r), Q(path=r.choice(["nomatch", "items/99", "/Login"]))),
        "search": lambda r: (acct(r), Q(search=r.choice(["orders", "203.0.7", "nomatch"]))),
        "user_email": lambda r: (acct(r), Q(user_email=f"user{r.randrange(USERS)}@")),
        "group_id": lambda r: (a := acct(r), Q(group_id=f"{a}-g{r.randrange(GROUPS)}")),
        "group_id p2-20": lambda r: (a := acct(r), Q(group_id=f"{a}-g{r.randrange(GROUPS)}",
                                                     page=r.randrange(2, 21))),
        "last hour": lambda r: (acct(r), Q(start_date=(d := day(r)) - timedelta(hours=1),
                                           end_date=d)),
        "last day": lambda r: (acct(r), Q(start_date=(d := day(r)) - timedelta(days=1),
                                          end_date=d)),
        "since 7 days": lambda r: (acct(r), Q(start_date=NOW - timedelta(days=7))),
        "failed + last day": lambda r: (acct(r), Q(status="failed",
                                                   start_date=(d := day(r)) - timedelta(days=1),
                                                   end_date=d)),
        "user + failed + 7d": lambda r: (a := acct(r), Q(
            user_id=f"{a}-u{r.randrange(USERS)}", status="failed",
            start_date=NOW - timedelta(days=7))),
        # a regular user's list (always its own user_id), other sorts, filters, pages
        "user sort duration": lambda r: (a := acct(r), Q(
            user_id=f"{a}-u{r.randrange(USERS)}", sort_by="duration",
            sort_order=r.choice(["asc", "desc"]))),
        "user sort url": lambda r: (a := acct(r), Q(
            user_id=f"{a}-u{r.randrange(USERS)}", sort_by="url")),
        "user p2-20": lambda r: (a := acct(r), Q(
            user_id=f"{a}-u{r.randrange(USERS)}", page=r.randrange(2, 21))),
        "user + service + method": lambda r: (a := acct(r), Q(
            user_id=f"{a}-u{r.randrange(USERS)}", service_id=f"{a}-svc{r.randrange(8)}",
            method=r.choice(["GET", "POST"]))),
        "user + path": lambda r: (a := acct(r), Q(
            user_id=f"{a}-u{r.randrange(USERS)}", path=r.choice(["login", "orders", "/42"]))),
        "user + status_code": lambda r: (a := acct(r), Q(
            user_id=f"{a}-u{r.randrange(USERS)}", status_code=r.choice([200, 404, 500]),
            sort_by=r.choice(["timestamp", "status_code"]))),
        "user sort method p1-5": lambda r: (a := acct(r), Q(
            user_id=f"{a}-u{r.randrange(USERS)}", sort_by="method", page=r.randrange(1, 6),
            sort_order=r.choice(["asc", "desc"]))),
        # a group with a time range or another filter
        "group + last day": lambda r: (a := acct(r), Q(
            group_id=f"{a}-g{r.randrange(GROUPS)}", start_date=(d := day(r)) - timedelta(days=1),
            end_date=d)),
        "group + 7 days": lambda r: (a := acct(r), Q(
            group_id=f"{a}-g{r.randrange(GROUPS)}", start_date=NOW - timedelta(days=7))),
        "group + service": lambda r: (a := acct(r), Q(
            group_id=f"{a}-g{r.randrange(GROUPS)}", service_id=f"{a}-svc{r.randrange(8)}")),
        "user + last day": lambda r: (a := acct(r), Q(
            user_id=f"{a}-u{r.randrange(USERS)}", start_date=(d := day(r)) - timedelta(days=1),
            end_date=d)),
        "since 30 days": lambda r: (acct(r), Q(start_date=NOW - timedelta(days=DAYS))),
        "success + 7 days": lambda r: (acct(r), Q(status="success",
                                                  start_date=NOW - timedelta(days=7))),
        "service + last day": lambda r: (a := acct(r), Q(
            service_id=f"{a}-svc{r.randrange(8)}", start_date=(d := day(r)) - timedelta(days=1),
            end_date=d)),
        "service + success": lambda r: (a := acct(r), Q(
            service_id=f"{a}-svc{r.randrange(8)}", status="success")),
        "page 200 size 50": lambda r: (acct(r), Q(page=200, page_size=50)),
        "failed page 500": lambda r: (acct(r), Q(status="failed", page=500)),
        "7 days page 1000": lambda r: (acct(r), Q(start_date=NOW - timedelta(days=7),
                                                  page=1000)),
        "service + method + code": lambda r: (a := acct(r), Q(
            service_id=f"{a}-svc{r.randrange(8)}", method="POST", status_code=200)),
    }


def explain(store: Store, account: str, query: AccessLogQuery) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the statements the list call runs, summarised."""
    captured: list[tuple[str, Any]] = []
    engine = store._engine
    import sqlalchemy as sa

    def grab(conn, cursor, statement, parameters, context, executemany):
        # the entries and the tables the triggers keep (the totals summed there)
        if statement.lstrip().upper().startswith("SELECT") and "access_log_" in statement:
            captured.append((statement, parameters))
        elif "set_config(" in statement:  # a walked page's plan settings, and their reset
            captured.append((statement, None))

    sa.event.listen(engine, "before_cursor_execute", grab)
    try:
        store.access_logs.list(account, query)
    finally:
        sa.event.remove(engine, "before_cursor_execute", grab)
    out: list[str] = []
    with engine.connect() as conn:
        for statement, parameters in captured:
            raw = conn.connection.driver_connection
            if parameters is None:
                raw.execute(statement)
                continue
            plan = raw.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters,
                               prepare=False).fetchall()
            lines = [r[0] for r in plan]
            kind = ("count" if "count(" in statement.lower() or "sum(" in statement.lower()
                    else "page")
            keep = [ln for ln in lines if re.search(
                r"Scan|Sort|Limit|Aggregate|Execution Time|Buffers: shared|Rows Removed|Join|"
                r"Gather|Index Cond|Filter", ln)]
            out.append(f"    [{kind}]")
            out.extend("      " + ln.strip()[:150] for ln in keep[:24])
    return out


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def run_shapes(store: Store, accounts: int, names: list[str] | None, runs: int, warm: int,
               explain_ms: float, seed: int) -> None:
    table = shapes(accounts)
    if names:
        unknown = [n for n in names if n not in table]
        if unknown:
            raise SystemExit(f"unknown shapes {unknown}; known: {sorted(table)}")
        table = {n: table[n] for n in names}
    rng = random.Random(seed)
    for _ in range(warm):  # past psycopg's prepare threshold for every statement shape
        for make in table.values():
            store.access_logs.list(*make(rng))
    print(f"\nload average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'shape':28} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'total':>10}")
    slow: list[tuple[str, str, AccessLogQuery, float]] = []
    for name, make in table.items():
        times: list[float] = []
        worst: tuple[float, str, AccessLogQuery] | None = None
        total = 0
        for _ in range(runs):
            account, query = make(rng)
            t0 = time.perf_counter()
            page = store.access_logs.list(account, query)
            ms = (time.perf_counter() - t0) * 1000
            times.append(ms)
            total = page.total_records
            if worst is None or ms > worst[0]:
                worst = (ms, account, query)
        p95 = percentile(times, 95)
        print(f"{name:28} {statistics.median(times):8.1f} {p95:8.1f} {max(times):8.1f} "
              f"{total:10,}", flush=True)
        if worst is not None and p95 > explain_ms:
            slow.append((name, worst[1], worst[2], worst[0]))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name, account, query, ms in slow:
        print(f"\n  {name}: {ms:.1f} ms  {account} "
              f"{ {k: v for k, v in vars(query).items() if v != getattr(AccessLogQuery(), k)} }")
        for line in explain(store, account, replace(query)):
            print(line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--accounts", type=int, default=10)
    p.add_argument("--chunk", type=int, default=500_000)
    p.add_argument("--keep", metavar="DIR", help="cluster directory, loaded once and reused")
    p.add_argument("--database", default="bench",
                   help="database of the --keep cluster (several loads side by side: "
                        "CREATE DATABASE b2 TEMPLATE bench copies one)")
    p.add_argument("--stop", action="store_true", help="stop the --keep cluster at exit")
    p.add_argument("--drop", action="store_true", help="delete the --keep cluster at exit")
    p.add_argument("--shapes", help="comma-separated shape names (default: all)")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warm", type=int, default=6)
    p.add_argument("--explain-ms", type=float, default=50.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--load-only", action="store_true")
    args = p.parse_args(argv)
    if args.keep:
        cm = kept_cluster(args.keep, stop=args.stop or args.drop, database=args.database)
    else:
        cm = throwaway_schema()
    with cm as dsn:
        store = Store.open(dsn, known_clusters=[CLUSTER])
        plain = re.sub(r"[?&]options=.*$", "", dsn)
        search_path = re.search(r"search_path%3D(\w+)", dsn)
        psy_dsn = plain if not search_path else (
            f"{plain}?options=-csearch_path%3D{search_path.group(1)}")
        try:
            have = loaded(psy_dsn)
            if have is None:
                print(f"loading {args.rows:,} rows over {args.accounts} accounts ...")
                load(store, psy_dsn, args.rows, args.accounts, args.chunk)
                have = (args.rows, args.accounts)
            elif have != (args.rows, args.accounts):
                raise SystemExit(f"{args.keep} holds {have[0]:,} rows over {have[1]} accounts; "
                                 "use those --rows/--accounts or another --keep DIR")
            else:
                print(f"reusing {have[0]:,} rows over {have[1]} accounts")
            if not args.load_only:
                names = args.shapes.split(",") if args.shapes else None
                run_shapes(store, have[1], names, args.runs, args.warm, args.explain_ms,
                           args.seed)
        finally:
            store.close()
    if args.drop and args.keep:
        import shutil

        shutil.rmtree(args.keep, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
