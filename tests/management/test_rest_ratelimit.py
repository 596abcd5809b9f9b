"""Per-account REST rate limits (nbgateway/management/ratelimit.py, api.limit_routes).

The sans-IO buckets with an explicit clock; the REST site in-process with a
``task.Clock`` (429 + Retry-After, one account's flood leaves another alone,
reads on their own budget); the dashboard's in-process calls share the
account's budget; the flags and their environment variables.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from twisted.internet import task
from twisted.python import usage
from twisted.web.test.requesthelper import DummyRequest

from nbgateway.management.api import build_site, limit_routes
from nbgateway.management.api.framework import Identity
from nbgateway.management.api.routes import Handlers, build_routes
from nbgateway.management.api.schemas import COMPONENTS
from nbgateway.management.ratelimit import (
    DEFAULT_READ_RATE,
    DEFAULT_WRITE_RATE,
    AccountRateLimit,
    KeyedBuckets,
    parse_rate,
    retry_after,
)
from nbgateway.management.service import ManagementService
from nbgateway.management.store import Store
from nbgateway.management.tap import Options
from nbgateway.management.ui.bridge import ApiBridge

# --- the buckets ----------------------------------------------------------------------------


def test_bucket_burst_refill_and_wait() -> None:
    b = KeyedBuckets(rate=2.0, burst=3)
    assert [b.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take("a", 0.0) == pytest.approx(0.5)  # one token in 1/rate seconds
    assert b.take("a", 0.25) == pytest.approx(0.25)  # a refusal takes nothing
    assert b.take("a", 0.5) == 0.0
    assert b.take("b", 0.5) == 0.0  # another key: its own burst
    assert b.take("a", 100.0) == 0.0  # refilled, capped at the burst
    assert [b.take("a", 100.0) for _ in range(3)][-1] > 0


def test_bucket_bounded_lru_eviction() -> None:
    b = KeyedBuckets(rate=1.0, burst=1, max_keys=3)
    for k in ("a", "b", "c"):
        assert b.take(k, 0.0) == 0.0
    assert b.take("a", 0.0) > 0  # a used again: most recent
    assert b.take("d", 0.0) == 0.0  # over the bound: b (least recently used) dropped
    assert len(b) == 3
    assert b.take("a", 0.0) > 0  # a's state kept (still empty)
    assert b.take("c", 0.0) > 0  # c kept too
    assert b.take("b", 0.0) == 0.0  # b was dropped: a fresh, full bucket


def test_parse_rate() -> None:
    assert parse_rate("20/100") == (20.0, 100)
    assert parse_rate("0.5/2") == (0.5, 2)
    assert parse_rate("4") == (4.0, 20)
    assert parse_rate("0") is None and parse_rate("0/10") is None
    for bad in ("x", "-1/5", "1/0", "1/x", "nan", "inf/3", ""):
        with pytest.raises(ValueError):
            parse_rate(bad)
    assert parse_rate(DEFAULT_WRITE_RATE) == (20.0, 100)
    assert parse_rate(DEFAULT_READ_RATE) == (100.0, 500)
    assert retry_after(0.01) == "1" and retry_after(1.2) == "2"


def test_account_limit_reads_and_writes_apart() -> None:
    clock = task.Clock()
    lim = AccountRateLimit((1.0, 2), (1.0, 1), clock.seconds)
    assert lim.admit("a", "POST") == 0 and lim.admit("a", "delete") == 0
    assert lim.admit("a", "PUT") == pytest.approx(1.0)
    assert lim.admit("a", "GET") == 0  # reads: their own bucket
    assert lim.admit("a", "GET") > 0
    assert lim.admit("b", "POST") == 0  # another account
    assert lim.refused == [1, 1]
    clock.advance(1.0)
    assert lim.admit("a", "PATCH") == 0
    off = AccountRateLimit(None, None, clock.seconds)
    assert all(off.admit("a", "POST") == 0 for _ in range(1000))
    assert AccountRateLimit.from_settings("0", "0", clock.seconds) is None


# --- the REST site, in-process ------------------------------------------------------------------


class _Reactor(task.Clock):
    def callFromThread(self, f: Any, *a: Any, **kw: Any) -> None:
        f(*a, **kw)


class _Pool:
    def callInThreadWithCallback(self, on_result: Any, f: Any, *a: Any, **kw: Any) -> None:
        try:
            on_result(True, f(*a, **kw))
        except Exception as exc:
            from twisted.python.failure import Failure

            on_result(False, Failure(exc))


def call(site: Any, method: str, path: str, token: str, body: Any = None
         ) -> tuple[int, dict[str, str], Any]:
    req = DummyRequest([p.encode() for p in path.strip("/").split("/")])
    req.method = method.encode()
    req.path = path.encode()
    req.uri = path.encode()
    req._disconnected = False
    req.content = io.BytesIO(b"" if body is None else json.dumps(body).encode())
    req.requestHeaders.setRawHeaders(b"authorization", [f"Token {token}".encode()])
    if body is not None:
        req.requestHeaders.setRawHeaders(b"content-type", [b"application/json"])
    resource = site.getResourceFor(req)
    out = resource.render(req)
    if isinstance(out, bytes):
        req.write(out)
    data = b"".join(req.written)
    headers = {k.decode().lower(): v[-1].decode()
               for k, v in req.responseHeaders.getAllRawHeaders()}
    return req.responseCode or 200, headers, json.loads(data) if data else None


@pytest.fixture
def sqlite_store(tmp_path) -> Any:
    s = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    yield s
    s.close()


def _tenant(store: Store, name: str) -> str:
    return store.accounts.create_with_admin(name).admin_token


def test_rest_429_retry_after_per_account(sqlite_store: Store) -> None:
    reactor = _Reactor()
    limit = AccountRateLimit((1.0, 3), (2.0, 4), reactor.seconds)
    site = build_site(sqlite_store, _Pool(), reactor, rate_limit=limit)
    a, b = _tenant(sqlite_store, "a"), _tenant(sqlite_store, "b")
    for i in range(3):
        status, _, _ = call(site, "POST", "/api/groups", a, {"name": f"g{i}"})
        assert status == 200
    status, headers, body = call(site, "POST", "/api/groups", a, {"name": "g3"})
    assert status == 429
    assert headers["retry-after"] == "1"
    assert body == {"message": "too many requests for this account, retry later", "code": 429}
    account_a = sqlite_store.users.authenticate_token(a)[0].account_id
    assert "g3" not in {g.name for g in sqlite_store.groups.list(account_a)}
    # the flood of account a leaves account b's budget alone
    for i in range(3):
        assert call(site, "POST", "/api/groups", b, {"name": f"b{i}"})[0] == 200
    # reads have their own (looser) budget
    assert call(site, "GET", "/api/groups", a)[0] == 200
    # a second later: one more token for a
    reactor.advance(1.0)
    assert call(site, "POST", "/api/groups", a, {"name": "g3"})[0] == 200
    assert call(site, "DELETE", "/api/groups/nope", a)[0] == 429
    # reads: 2/s, bursts of 4 (one GET at t=0, refilled to 4 at t=1)
    assert [call(site, "GET", "/api/groups", a)[0] for _ in range(4)] == [200] * 4
    status, headers, _ = call(site, "GET", "/api/groups", a)
    assert status == 429 and headers["retry-after"] == "1"
    # unauthenticated calls are not charged to anyone (401 before the limit)
    assert call(site, "POST", "/api/groups", "nbp_wrong", {"name": "x"})[0] == 401
    assert limit.refused == [2, 1]


def test_rest_no_limit_when_off(sqlite_store: Store) -> None:
    reactor = _Reactor()
    site = build_site(sqlite_store, _Pool(), reactor, rate_limit=None)
    a = _tenant(sqlite_store, "a")
    assert all(call(site, "POST", "/api/groups", a, {"name": f"g{i}"})[0] == 200
               for i in range(30))


def test_dashboard_calls_share_the_account_budget(sqlite_store: Store) -> None:
    reactor = _Reactor()
    limit = AccountRateLimit((1.0, 2), None, reactor.seconds)
    handlers = Handlers(sqlite_store)
    routes = limit_routes(build_routes(handlers), limit)
    bridge = ApiBridge(routes, COMPONENTS, handlers.authenticate)
    token = _tenant(sqlite_store, "a")
    who: Identity = bridge.identity(token)  # type: ignore[assignment]
    assert bridge.call(who, "createGroup", body={"name": "x"}).status == 200
    site = build_site(sqlite_store, _Pool(), reactor, rate_limit=limit)
    assert call(site, "POST", "/api/groups", token, {"name": "y"})[0] == 200
    out = bridge.call(who, "createGroup", body={"name": "z"})
    assert out.status == 429 and "too many requests" in out.message
    assert bridge.call(who, "listGroups").ok  # reads unlimited here


# --- flags and environment ----------------------------------------------------------------------


def test_flags_and_environment() -> None:
    def parse(argv: list[str], env: dict[str, str] | None = None) -> Options:
        o = Options(environ=env or {})
        o.parseOptions(argv)
        return o

    o = parse([])
    assert o["api-write-rate"] == DEFAULT_WRITE_RATE and o["api-read-rate"] == DEFAULT_READ_RATE
    o = parse(["--api-write-rate", "5/10"], {"NB_MANAGEMENT_API_WRITE_RATE": "7/7",
                                             "NB_MANAGEMENT_API_READ_RATE": "0"})
    assert o["api-write-rate"] == "5/10" and o["api-read-rate"] == "0"  # flag > env
    with pytest.raises(usage.UsageError, match="--api-write-rate"):
        parse(["--api-write-rate", "fast"])
    with pytest.raises(usage.UsageError, match="--api-read-rate"):
        parse([], {"NB_MANAGEMENT_API_READ_RATE": "-2"})
    o = parse(["--quota-peers", "9"], {"NB_MANAGEMENT_QUOTA_PEERS": "3",
                                      "NB_MANAGEMENT_QUOTA_GROUPS": "4"})
    assert o.quotas.limit("peers") == 9 and o.quotas.limit("groups") == 4
    with pytest.raises(usage.UsageError, match="--quota-domains"):
        parse(["--quota-domains", "lots"])
    usage_text = parse([]).getUsage()
    assert "NB_MANAGEMENT_QUOTA_SERVICES" in usage_text and "--api-write-rate" in usage_text


def test_service_reads_environment_when_not_given(tmp_path, monkeypatch) -> None:
    """The embedded management (twistd nbgateway) builds ManagementService
    without these arguments: it reads the same NB_MANAGEMENT_* variables."""
    monkeypatch.setenv("NB_MANAGEMENT_QUOTA_PEERS", "11")
    monkeypatch.setenv("NB_MANAGEMENT_API_WRITE_RATE", "0")
    monkeypatch.setenv("NB_MANAGEMENT_API_READ_RATE", "0")
    svc = ManagementService(datadir=str(tmp_path / "d"), reactor=_Reactor())
    assert svc.quotas.limit("peers") == 11 and svc.rate_limit is None
    monkeypatch.delenv("NB_MANAGEMENT_API_WRITE_RATE")
    svc = ManagementService(datadir=str(tmp_path / "d"), reactor=_Reactor())
    assert svc.rate_limit is not None
    assert svc.rate_limit.admit("x", "GET") == 0  # reads off
