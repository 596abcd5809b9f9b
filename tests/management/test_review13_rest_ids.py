"""Review 13: every id of another account, in a path or a body, over real
HTTP against ``twistd nbmanagement`` (SQLite and PostgreSQL), as two hostile
accounts.

Account B's admin knows (or guesses) the ids of account A's groups, peers,
users, personal access tokens, services, service tokens, custom domains,
proxy tokens and its BYOP cluster address.  Pinned here:

* **Paths.** Every route taking such an id answers 404 for A's (never 403,
  which would confirm the id exists), and nothing of A changes: a read, an
  update, a delete, a token mint or revocation, an assertion-key rotation,
  the mTLS client CA, a certificate status, a peer's network map or
  wg-quick configuration, a domain validation, a cluster deletion.
* **Bodies.** A create or update in B naming A's group (peer groups, a
  group's members, a user's auto-groups, a service's access or bearer
  distribution groups), A's peer (a group member, a ``peer`` target) or A's
  user (a peer's owner) is refused (422), while the same body naming B's own
  object is accepted -- so the refusal is the foreign id's.
* **Queries.** A pagination cursor naming A's row, and the access-log
  filters ``service_id``/``user_id``/``host``/``search`` naming A's objects,
  return only B's rows (none of A's entries); ``group_id`` of A's group is
  422 ``unknown group_id``, word for word the answer for a group that never
  existed (the id's existence is not confirmed).
* **Tokens.** A's personal access token and proxy token keep working after
  B's attempts on their ids.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from urllib.parse import quote

import pytest
from nacl.public import PrivateKey

from nbgateway.management.api.calls import encode_cursor
from nbgateway.management.model import AccessLogEntry, ProxyRecord

from .apiserver import BACKENDS, account_id, new_account, server_with_cluster, uniq

CLUSTER = "cl.review13.test"
SERVICES = "/api/reverse-proxies/services"


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    with server_with_cluster(tmp_path_factory, request.param, CLUSTER) as srv:
        yield srv


def wg_key() -> str:
    return base64.b64encode(bytes(PrivateKey.generate().public_key)).decode()


def service_body(*, groups: list[str] | None = None, bearer: list[str] | None = None,
                 peer: str = "") -> dict:
    target = {"target_id": CLUSTER, "target_type": "cluster", "protocol": "http",
              "host": "10.0.0.5", "port": 80, "enabled": True,
              "options": {"direct_upstream": True}}
    if peer:
        target = {"target_id": peer, "target_type": "peer", "protocol": "http",
                  "port": 80, "enabled": True}
    body: dict = {"name": uniq("svc"), "domain": f"{uniq('app')}.{CLUSTER}", "enabled": True,
                  "targets": [target]}
    if groups is not None:
        body.update(private=True, access_groups=groups)
    if bearer is not None:
        body["auth"] = {"bearer_auth": {"enabled": True, "distribution_groups": bearer}}
    return body


class Tenant:
    """One account's admin and a few objects of each kind."""

    def __init__(self, server) -> None:
        self.s = server
        self.auth = new_account(server)
        self.id = account_id(server, self.auth)
        self.group = self.ok("POST", "/api/groups", {"name": uniq("g")})["id"]
        self.user = self.ok("POST", "/api/users", {"email": f"{uniq('u')}@t.test",
                                                   "name": "u", "role": "user"})["id"]
        self.peer = self.ok("POST", "/api/peers", {"name": uniq("p"), "public_key": wg_key(),
                                                   "groups": [self.group]})["id"]
        made = self.ok("POST", f"/api/users/{self.user}/tokens",
                       {"name": "t", "expires_in": 30})
        self.pat, self.pat_id = made["plain_token"], made["personal_access_token"]["id"]
        svc = self.ok("POST", SERVICES, service_body(groups=[self.group]))
        self.service, self.service_domain = svc["id"], svc["domain"]
        tok = self.s.post(f"{SERVICES}/{self.service}/tokens", {"name": "m"}, auth=self.auth)
        assert tok.status == 201, tok
        self.service_token = tok.json["id"]
        self.domain = self.ok("POST", "/api/reverse-proxies/domains",
                              {"domain": f"{uniq('d')}.{self.id.lower()}.test",
                               "target_cluster": CLUSTER})["id"]
        proxy = self.ok("POST", "/api/reverse-proxies/proxy-tokens", {"name": "gw"})
        self.proxy_token, self.proxy_token_id = proxy["plain_token"], proxy["id"]

    def ok(self, method: str, path: str, body=None):
        resp = self.s.request(method, path, body, auth=self.auth)
        assert resp.status == 200, (method, path, resp)
        return resp.json


@pytest.fixture(scope="module")
def tenants(server):
    return Tenant(server), Tenant(server)


def test_another_accounts_ids_in_paths_are_404_and_change_nothing(server, tenants):
    a, b = tenants
    rp = "/api/reverse-proxies"
    calls = [
        ("GET", f"/api/groups/{a.group}", None),
        ("PUT", f"/api/groups/{a.group}", {"name": "mine", "peers": []}),
        ("DELETE", f"/api/groups/{a.group}", None),
        ("GET", f"/api/peers/{a.peer}", None),
        ("PUT", f"/api/peers/{a.peer}", {"name": "mine"}),
        ("DELETE", f"/api/peers/{a.peer}", None),
        ("GET", f"/api/peers/{a.peer}/network-map", None),
        ("GET", f"/api/peers/{a.peer}/wireguard-config", None),
        ("GET", f"/api/users/{a.user}", None),
        ("PUT", f"/api/users/{a.user}", {"role": "admin", "auto_groups": []}),
        ("DELETE", f"/api/users/{a.user}", None),
        ("GET", f"/api/users/{a.user}/tokens", None),
        ("POST", f"/api/users/{a.user}/tokens", {"name": "x", "expires_in": 1}),
        ("DELETE", f"/api/users/{a.user}/tokens/{a.pat_id}", None),
        ("GET", f"{SERVICES}/{a.service}", None),
        ("PUT", f"{SERVICES}/{a.service}", service_body()),
        ("DELETE", f"{SERVICES}/{a.service}", None),
        ("POST", f"{SERVICES}/{a.service}/assertion-key/rotate", None),
        ("GET", f"{SERVICES}/{a.service}/client-ca", None),
        ("DELETE", f"{SERVICES}/{a.service}/client-ca", None),
        ("GET", f"{SERVICES}/{a.service}/tokens", None),
        ("POST", f"{SERVICES}/{a.service}/tokens", {"name": "x"}),
        ("DELETE", f"{SERVICES}/{a.service}/tokens/{a.service_token}", None),
        ("GET", f"{SERVICES}/{a.service}/certificate", None),
        ("DELETE", f"{rp}/domains/{a.domain}", None),
        ("GET", f"{rp}/domains/{a.domain}/validate", None),
        ("DELETE", f"{rp}/proxy-tokens/{a.proxy_token_id}", None),
        ("GET", f"/api/accounts/{a.id}", None),
    ]
    for method, path, body in calls:
        resp = server.request(method, path, body, auth=b.auth)
        assert resp.status == 404, (method, path, resp)
    # B's own token id under B's own user, and B's service with A's token id
    b_user = server.get("/api/users", auth=b.auth).json[0]["id"]
    resp = server.delete(f"/api/users/{b_user}/tokens/{a.pat_id}", auth=b.auth)
    assert resp.status == 404, resp
    resp = server.delete(f"{SERVICES}/{b.service}/tokens/{a.service_token}", auth=b.auth)
    assert resp.status == 404, resp
    # nothing of A changed
    assert a.ok("GET", f"/api/groups/{a.group}")["name"] != "mine"
    assert a.ok("GET", f"/api/peers/{a.peer}")["name"] != "mine"
    assert a.ok("GET", f"/api/users/{a.user}")["role"] == "user"
    assert [t["id"] for t in a.ok("GET", f"/api/users/{a.user}/tokens")] == [a.pat_id]
    assert [t["id"] for t in a.ok("GET", f"{SERVICES}/{a.service}/tokens")] == [a.service_token]
    assert a.ok("GET", f"{SERVICES}/{a.service}")["domain"] == a.service_domain
    assert a.domain in [d.get("id") for d in a.ok("GET", f"{rp}/domains")]
    assert not [t for t in a.ok("GET", f"{rp}/proxy-tokens")
                if t["id"] == a.proxy_token_id and t.get("revoked")]
    # A's personal access token still works
    assert server.get("/api/users", auth=f"Token {a.pat}").status == 200


def test_another_accounts_id_reads_as_an_id_that_never_existed(server, tenants):
    """The 404 bodies are word for word those of a made-up id (the id itself
    aside): no existence oracle."""
    a, b = tenants
    ghost = "dcbnosuchid000000000"
    for template, real in (("/api/groups/{}", a.group), ("/api/peers/{}", a.peer),
                           ("/api/users/{}", a.user), (SERVICES + "/{}", a.service),
                           (SERVICES + "/{}/certificate", a.service),
                           ("/api/peers/{}/network-map", a.peer),
                           ("/api/accounts/{}", a.id)):
        theirs = server.get(template.format(real), auth=b.auth)
        nobody = server.get(template.format(ghost), auth=b.auth)
        assert theirs.status == nobody.status == 404, template
        assert theirs.data.replace(real.encode(), b"ID") == \
            nobody.data.replace(ghost.encode(), b"ID"), template


def test_an_account_admin_cannot_delete_or_list_another_account(server, tenants):
    a, b = tenants
    assert server.delete(f"/api/accounts/{a.id}", auth=b.auth).status == 403
    assert [x["id"] for x in server.get("/api/accounts", auth=b.auth).json] == [b.id]
    assert server.get(f"/api/accounts/{a.id}", auth=a.auth).status == 200


def test_another_accounts_cluster_cannot_be_deleted(server, tenants):
    a, b = tenants
    byop = f"{uniq('byop')}.review13.test"
    store = server.open_store()
    try:
        store.proxies.register(ProxyRecord(id=uniq("px"), session_id=uniq("s"),
                                           cluster_address=byop, ip_address="127.0.0.1",
                                           account_id=a.id))
    finally:
        store.close()
    rp = "/api/reverse-proxies/clusters"
    assert server.delete(f"{rp}/{quote(byop)}", auth=b.auth).status == 404
    assert server.delete(f"{rp}/{quote(CLUSTER)}", auth=b.auth).status == 404  # shared
    assert byop in [c["address"] for c in server.get(rp, auth=a.auth).json]
    assert byop not in [c["address"] for c in server.get(rp, auth=b.auth).json]
    assert server.delete(f"{rp}/{quote(byop)}", auth=a.auth).status == 200


def _refused(resp) -> None:
    assert resp.status == 422, resp


def test_bodies_naming_another_accounts_objects_are_refused(server, tenants):
    a, b = tenants
    post = lambda path, body: server.post(path, body, auth=b.auth)  # noqa: E731
    # groups: a member of A
    _refused(post("/api/groups", {"name": uniq("g"), "peers": [a.peer]}))
    assert post("/api/groups", {"name": uniq("g"), "peers": [b.peer]}).status == 200
    _refused(server.put(f"/api/groups/{b.group}", {"name": uniq("g"), "peers": [a.peer]},
                        auth=b.auth))
    # peers: in A's group, owned by A's user
    _refused(post("/api/peers", {"name": uniq("p"), "public_key": wg_key(),
                                 "groups": [a.group]}))
    _refused(post("/api/peers", {"name": uniq("p"), "public_key": wg_key(),
                                 "user_id": a.user}))
    assert post("/api/peers", {"name": uniq("p"), "public_key": wg_key(),
                               "groups": [b.group], "user_id": b.user}).status == 200
    _refused(server.put(f"/api/peers/{b.peer}", {"name": "p", "groups": [a.group]},
                        auth=b.auth))
    _refused(server.put(f"/api/peers/{b.peer}", {"name": "p", "user_id": a.user},
                        auth=b.auth))
    # users: auto-groups of A
    _refused(post("/api/users", {"email": f"{uniq('u')}@t.test", "role": "user",
                                 "auto_groups": [a.group]}))
    _refused(server.put(f"/api/users/{b.user}", {"role": "user", "auto_groups": [a.group]},
                        auth=b.auth))
    assert server.put(f"/api/users/{b.user}", {"role": "user", "auto_groups": [b.group]},
                      auth=b.auth).status == 200
    # services: access groups, bearer distribution groups, a peer target of A
    _refused(post(SERVICES, service_body(groups=[a.group])))
    _refused(post(SERVICES, service_body(bearer=[a.group])))
    _refused(post(SERVICES, service_body(peer=a.peer)))
    assert post(SERVICES, service_body(bearer=[b.group])).status == 200
    assert post(SERVICES, service_body(peer=b.peer)).status == 200
    body = {**service_body(groups=[a.group]),
            "domain": server.get(f"{SERVICES}/{b.service}", auth=b.auth).json["domain"]}
    _refused(server.put(f"{SERVICES}/{b.service}", body, auth=b.auth))
    # A's objects are as they were: no member, owner or group of B
    groups = {g["id"] for g in a.ok("GET", f"/api/peers/{a.peer}")["groups"]}
    assert a.group in groups and b.group not in groups
    members = [p["id"] for p in a.ok("GET", f"/api/groups/{a.group}")["peers"]]
    assert members == [a.peer]


def test_a_cursor_naming_another_accounts_row_pages_only_the_callers(server, tenants):
    a, b = tenants
    for path, foreign in (("/api/peers", a.peer), (SERVICES, a.service)):
        resp = server.get(f"{path}?limit=1000&cursor={encode_cursor(foreign)}", auth=b.auth)
        assert resp.status == 200, resp
        ids = {row["id"] for row in resp.json}
        assert foreign not in ids
        mine = {row["id"] for row in server.get(path, auth=b.auth).json}
        assert ids <= mine


def test_access_log_filters_naming_another_accounts_objects_find_nothing(server, tenants):
    a, b = tenants
    store = server.open_store()
    try:
        for who in (a, b):
            store.access_logs.append(AccessLogEntry(
                account_id=who.id, service_id=who.service, timestamp=datetime.now(UTC),
                source_ip="198.51.100.7", method="GET", host=who.service_domain,
                path=f"/{who.id}", status_code=200, user_id=who.user, protocol="http"))
    finally:
        store.close()
    base = "/api/events/proxy"
    everything = server.get(base, auth=b.auth).json
    assert {e["path"] for e in everything["data"]} == {f"/{b.id}"}
    # another account's group is unknown here, exactly as a group that never existed
    for gid in (a.group, "dcbnosuchgroup0000000"):
        resp = server.get(f"{base}?group_id={gid}", auth=b.auth)
        assert resp.status == 422 and resp.json["message"] == f"unknown group_id '{gid}'", resp
    for query in (f"service_id={a.service}", f"user_id={a.user}",
                  f"host={a.service_domain}", f"search={a.id}"):
        resp = server.get(f"{base}?{query}", auth=b.auth)
        assert resp.status == 200, (query, resp)
        assert resp.json["data"] == [] and resp.json["total_records"] == 0, (query, resp)
    # A's own filter finds A's entry: the filters work
    found = server.get(f"{base}?service_id={a.service}", auth=a.auth).json
    assert [e["path"] for e in found["data"]] == [f"/{a.id}"]
